"""TopoLM / TDANN's spatial correlation loss, attached to any module's output by forward hooks.

For a sheet of ``n`` units with activations ``X (samples × n)`` (for sequences every token is a sample),
``r`` is the Pearson correlation between units and ``D = 1/(1 + distance)``. Over the unit pairs i < j:

- relative loss ``½ (1 − corr(r, D))`` ∈ [0, 1] (TDANN's SL_Rel, TopoLM's loss);
- absolute loss ``mean |r − D|`` (TDANN's SL_Abs).

``exact`` mode uses the whole sheet: ``r = ZᵀZ/N`` and the correlation between the lower triangles needs only
Σr, Σr², ΣD, ΣD², ΣrD (D's sums are constants), so no pair list is ever built. ``sampled`` mode averages the
loss over ``k`` square neighbourhoods (sup-norm windows of a radius), batched when the sheet is a grid.
Units with zero variance get correlation 0 (their standardised activity is 0), never NaN. Everything is
computed in float32 with autocast off.
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from ..layout import Layout, distance

__all__ = ["correlation_matrix", "pair_loss", "SpatialCorrelationLoss", "inverse_distance"]

EPS = 1e-12


def inverse_distance(layout: Layout) -> torch.Tensor:
    """``D = 1/(1 + d)`` between every two units (Euclidean distance, layout units), float32."""
    return (1.0 / (1.0 + distance(layout, layout, p=2))).float()


def correlation_matrix(X: torch.Tensor) -> torch.Tensor:
    """Pearson correlations between the columns of ``X (..., N, n)`` → ``(..., n, n)``; zero-variance → 0."""
    X = X.float()
    Z = X - X.mean(-2, keepdim=True)
    var = Z.pow(2).mean(-2, keepdim=True)
    # sqrt only of positive variances: sqrt'(0) is infinite and would poison the gradient with NaN.
    Z = Z / torch.where(var > 0, var, torch.ones_like(var)).sqrt()
    return Z.transpose(-1, -2) @ Z / X.shape[-2]


def pair_loss(r: torch.Tensor, D: torch.Tensor, kind: str = "relative", d_sums=None) -> torch.Tensor:
    """Loss between ``r`` and ``D`` (``(..., m, m)``, symmetric) over the pairs i < j; batched over ``...``."""
    m = r.shape[-1]
    P = m * (m - 1) / 2
    rd, Dd = torch.diagonal(r, dim1=-2, dim2=-1), torch.diagonal(D, dim1=-2, dim2=-1)
    if kind == "absolute":
        return (((r - D).abs().sum((-2, -1)) - (rd - Dd).abs().sum(-1)) / 2) / P
    if kind != "relative":
        raise ValueError(f"kind must be 'relative' or 'absolute', got {kind!r}")
    if d_sums is None:
        sD = (D.sum((-2, -1)) - Dd.sum(-1)) / 2
        sD2 = (D.pow(2).sum((-2, -1)) - Dd.pow(2).sum(-1)) / 2
    else:
        sD, sD2 = d_sums
    sr = (r.sum((-2, -1)) - rd.sum(-1)) / 2
    sr2 = (r.pow(2).sum((-2, -1)) - rd.pow(2).sum(-1)) / 2
    srD = ((r * D).sum((-2, -1)) - (rd * Dd).sum(-1)) / 2
    cov = srD / P - (sr / P) * (sD / P)
    var_r = (sr2 / P - (sr / P) ** 2).clamp_min(EPS)
    var_D = (sD2 / P - (sD / P) ** 2).clamp_min(EPS)
    return 0.5 * (1.0 - cov / torch.sqrt(var_r * var_D))


class _Sheet:
    """One hooked module: its layout, weight, and precomputed distances / neighbourhoods."""

    def __init__(self, name: str, module: nn.Module, layout: Layout, alpha: float, radius: float):
        self.name, self.module, self.layout, self.alpha, self.radius = name, module, layout, alpha, radius
        self.acts: torch.Tensor | None = None
        self.refresh()

    def refresh(self) -> None:
        """Recompute distances and neighbourhoods (after the positions changed)."""
        self.D = inverse_distance(self.layout)
        n = self.D.shape[0]
        P = n * (n - 1) / 2
        Dd = self.D.diagonal()
        self.d_sums = ((self.D.sum() - Dd.sum()) / 2, (self.D.pow(2).sum() - Dd.pow(2).sum()) / 2)
        self.P = P
        # Sup-norm windows around every unit: the units within ``radius`` of it.
        c = self.layout.unit_coords
        inside = (c[:, None, :] - c[None, :, :]).abs().amax(-1) <= self.radius + 1e-9
        sizes = inside.sum(1)
        full = sizes == sizes.max()
        # Windows of the maximal size all have the same shape on a grid: stack them (units sorted by
        # their offset from the centre) so that all sampled neighbourhoods are computed in one batch.
        self.windows = None
        if full.any():
            centres = torch.nonzero(full).flatten()
            rows = []
            for ci in centres.tolist():
                idx = torch.nonzero(inside[ci]).flatten()
                off = c[idx] - c[ci]
                order = torch.argsort(off[:, 0] * 1e6 + off[:, 1] if c.shape[1] > 1 else off[:, 0])
                rows.append(idx[order])
            W = torch.stack(rows)
            Dw = self.D[W[:, :, None], W[:, None, :]]
            if torch.allclose(Dw, Dw[:1].expand_as(Dw), atol=1e-6):  # translation-invariant (a grid)
                self.windows, self.Dw = W, Dw[0]
        self.inside = inside

    def sample(self, k: int, generator: torch.Generator | None) -> list[torch.Tensor] | torch.Tensor:
        if self.windows is not None:
            pick = torch.randint(len(self.windows), (k,), generator=generator)
            return self.windows[pick]
        centres = torch.randint(self.inside.shape[0], (k,), generator=generator)
        return [torch.nonzero(self.inside[c]).flatten() for c in centres.tolist()]


class SpatialCorrelationLoss:
    """The spatial correlation loss over several hooked sheets; ``total = Σ α_s · loss_s``.

    Two lines, as topoloss::

        sl = SpatialCorrelationLoss({model.blocks[0].mlp: layout.grid(16, 16, spacing=1), ...}, alpha=2.5)
        loss = task_loss + sl()        # from the activations of the last forward pass

    Args:
        sheets: module → :class:`Layout` of its output units (last dimension of the output), or a
            ``(name, module, layout)`` list.
        alpha: one weight for all sheets, or a mapping name → weight.
        mode: ``"exact"`` (whole sheet) or ``"sampled"`` (``neighbourhoods`` windows of sup-norm ``radius``
            per sheet per call, as TopoLM).
        kind: ``"relative"`` or ``"absolute"``.
        capture: when forward passes are recorded: ``"grad"`` (only with autograd on, the default, so that
            evaluation under ``no_grad`` costs nothing) or ``"always"``.
    """

    def __init__(self, sheets, alpha: float | Mapping[str, float] = 1.0, mode: str = "exact",
                 kind: str = "relative", neighbourhoods: int = 5, radius: float = 5.0,
                 generator: torch.Generator | None = None, capture: str = "grad"):
        if mode not in ("exact", "sampled"):
            raise ValueError(f"mode must be 'exact' or 'sampled', got {mode!r}")
        if kind not in ("relative", "absolute"):
            raise ValueError(f"kind must be 'relative' or 'absolute', got {kind!r}")
        if capture not in ("grad", "always"):
            raise ValueError(f"capture must be 'grad' or 'always', got {capture!r}")
        if neighbourhoods < 1 or radius <= 0:
            raise ValueError("neighbourhoods must be ≥ 1 and radius positive")
        items = list(sheets.items()) if isinstance(sheets, Mapping) else list(sheets)
        if not items:
            raise ValueError("no sheets given")
        self.sheets: list[_Sheet] = []
        for i, item in enumerate(items):
            name, module, lay = (f"sheet{i}", *item) if len(item) == 2 else item
            a = alpha.get(name, 0.0) if isinstance(alpha, Mapping) else float(alpha)
            self.sheets.append(_Sheet(name, module, lay, a, radius))
        self.mode, self.kind, self.k, self.generator, self.capture = mode, kind, neighbourhoods, generator, capture
        self._hooks = [s.module.register_forward_hook(self._make_hook(s)) for s in self.sheets]
        self.last: dict[str, float] = {}

    def _make_hook(self, sheet: _Sheet):
        def hook(module, args, out):
            if self.capture == "always" or torch.is_grad_enabled():
                out = out[0] if isinstance(out, tuple) else out
                if out.shape[-1] != sheet.layout.n:
                    raise ValueError(f"sheet {sheet.name}: output has {out.shape[-1]} units, layout has "
                                     f"{sheet.layout.n}")
                sheet.acts = out.reshape(-1, out.shape[-1])
        return hook

    def sheet_loss(self, sheet: _Sheet, X: torch.Tensor) -> torch.Tensor:
        """Loss of one sheet for activations ``X (N, n)``."""
        with torch.autocast(device_type=X.device.type, enabled=False):
            X = X.float()
            if self.mode == "exact":
                D = sheet.D.to(X.device)
                sums = tuple(s.to(X.device) for s in sheet.d_sums)
                return pair_loss(correlation_matrix(X), D, self.kind, sums)
            win = sheet.sample(self.k, self.generator)
            if isinstance(win, torch.Tensor):
                Xw = X[:, win.to(X.device)].permute(1, 0, 2)         # (k, N, m)
                return pair_loss(correlation_matrix(Xw), sheet.Dw.to(X.device), self.kind).mean()
            losses = [pair_loss(correlation_matrix(X[:, w.to(X.device)]), sheet.D[w][:, w].to(X.device), self.kind)
                      for w in win if len(w) > 1]
            return torch.stack(losses).mean()

    def __call__(self) -> torch.Tensor:
        """Σ α·loss over sheets from the last captured forward pass; clears the captured activations."""
        total, self.last = None, {}
        for s in self.sheets:
            if s.acts is None:
                raise RuntimeError(f"sheet {s.name} has no activations: run a forward pass with grad enabled "
                                   "(or capture='always') before computing the loss")
            l = self.sheet_loss(s, s.acts)
            self.last[s.name] = float(l.detach())
            s.acts = None
            if s.alpha:
                total = s.alpha * l if total is None else total + s.alpha * l
        if total is None:
            total = torch.zeros((), device=self.sheets[0].D.device)
        return total

    def refresh(self) -> None:
        for s in self.sheets:
            s.refresh()

    def set_layout(self, name: str, lay: Layout) -> None:
        for s in self.sheets:
            if s.name == name:
                if lay.n != s.layout.n:
                    raise ValueError(f"new layout has {lay.n} units, sheet {name} has {s.layout.n}")
                s.layout = lay
                s.refresh()
                return
        raise KeyError(name)

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
