"""TopoLM / TDANN's spatial correlation loss, attached to any module's output by forward hooks.

For a sheet of ``n`` units with activations ``X (samples × n)`` (for sequences every token is a sample),
``r`` is the Pearson correlation between units and ``D = 1/(1 + distance)``. Over the unit pairs i < j:

- relative loss ``½ (1 − corr(r, D))`` ∈ [0, 1] (TDANN's SL_Rel, TopoLM's loss);
- absolute loss ``mean |r − D|`` (TDANN's SL_Abs).

``exact`` mode uses the whole sheet: ``r = ZᵀZ/N`` and the correlation between the lower triangles needs only
Σr, Σr², ΣD, ΣD², ΣrD (D's sums are constants), so no pair list is ever built. ``sampled`` mode averages the
loss over ``k`` square neighbourhoods (sup-norm windows of a radius), batched when the sheet is a grid.
Units with zero variance get correlation 0 (their standardised activity is 0), never NaN. Correlations and the
loss are computed in float32 with autocast off. On CPU the activations are cast to float32 first; on an
accelerator (:class:`_GroupCovariance`) the needed columns are copied in the activations' own dtype (bf16 under
autocast) and multiplied with float32 accumulation, which keeps the loss within about 1e-5 of the float64
definition (4e-5 for the absolute kind).
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from ..hooks import UNITS, _dynamo_used, _reset_dynamo, as_units, resolve_modules, unwrap_compiled
from ..layout import Layout, proximity
from ..windows import Windows, gather_windows
from .kernels import (EPS, _GroupCovariance, _WindowCovariance, _corr_from_cov, _exact_one_hot,  # noqa: F401
                      correlation_matrix, covariance)

__all__ = ["correlation_matrix", "covariance", "pair_loss", "centred_distance", "SpatialCorrelationLoss", "inverse_distance",
           "check_alpha"]


def inverse_distance(layout: Layout) -> torch.Tensor:
    """``D = 1/(1 + d)`` between every two units (Euclidean distance, layout units), float32. Distances are
    computed in float64 by ``cdist`` without the matrix-product shortcut (exact differences), in blocks of rows for
    large sheets, so no (n, n, dim) difference tensor is ever held; ``1/(1 + d)`` in float32 (float64
    elementwise work costs 5-10× more on CPU)."""
    return _inverse_distance(layout.unit_coords)


def _inverse_distance(c: torch.Tensor) -> torch.Tensor:
    rows = max(1, 2 ** 24 // max(1, len(c)))
    return torch.cat([proximity(torch.cdist(c[i:i + rows], c, compute_mode="donot_use_mm_for_euclid_dist").float())
                      for i in range(0, len(c), rows)])


def check_alpha(alpha, names: list[str], hint: str = "") -> float | dict[str, float]:
    """``alpha`` validated against the sheet ``names``: a non-negative number, or a mapping naming every sheet
    (0 turns one off). Returns it as a float or a ``{name: float}``; raises naming the problem."""
    if isinstance(alpha, Mapping):
        unknown = sorted(set(alpha) - set(names))
        if unknown:
            raise ValueError(f"alpha names {unknown} are not sheets; the sheets are {names}{hint}")
        missing = [n for n in names if n not in alpha]
        if missing:
            raise ValueError(f"alpha has no weight for sheet(s) {missing}; give every sheet a weight (0 turns one off)")
        out = {k: float(v) for k, v in alpha.items()}
        if any(not v >= 0 for v in out.values()):
            raise ValueError("alpha weights must be non-negative")
        return out
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not alpha >= 0:
        raise ValueError(f"alpha must be a non-negative number or a dict module path → weight, got {alpha!r}")
    return float(alpha)


def centred_distance(D: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``D`` minus its mean over pairs, with a zero diagonal, and Σ over pairs of its square."""
    m = D.shape[-1]
    eye = torch.eye(m, dtype=torch.bool, device=D.device)
    P = m * (m - 1) / 2
    mean = D.masked_fill(eye, 0).sum((-2, -1), keepdim=True) / (2 * P)
    Dc = (D - mean).masked_fill(eye, 0)
    return Dc, Dc.pow(2).sum((-2, -1)) / 2


def _relative(r: torch.Tensor, Dc: torch.Tensor, sdd: torch.Tensor) -> torch.Tensor:
    """½(1 − corr) over pairs from ``r`` and the centred ``Dc``: Σ r·Dc is the covariance (Σ Dc = 0)."""
    m = r.shape[-1]
    P = m * (m - 1) / 2
    diag = r.diagonal(dim1=-2, dim2=-1)
    sr = (r.sum((-2, -1)) - diag.sum(-1)) / 2
    sr2 = (r.pow(2).sum((-2, -1)) - diag.pow(2).sum(-1)) / 2
    cov = (r * Dc).sum((-2, -1)) / 2
    var_r = (sr2 - sr * sr / P).clamp_min(EPS)
    return 0.5 * (1.0 - cov / torch.sqrt(var_r * sdd.clamp_min(EPS)))


def _absolute(r: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    m = r.shape[-1]
    diff = (r - D).abs()
    return (diff.sum((-2, -1)) - diff.diagonal(dim1=-2, dim2=-1).sum(-1)) / (m * (m - 1))


def pair_loss(r: torch.Tensor, D: torch.Tensor, kind: str = "relative") -> torch.Tensor:
    """Loss between ``r`` and ``D`` (``(..., m, m)``, symmetric) over the pairs i < j; batched over ``...``."""
    if kind == "absolute":
        return _absolute(r, D)
    if kind != "relative":
        raise ValueError(f"kind must be 'relative' or 'absolute', got {kind!r}")
    return _relative(r, *centred_distance(D))


MAX_EXACT_UNITS = 8192  # the exact loss holds a few (n, n) float32 matrices per sheet: about 2 GB at this size


class _Sheet:
    """One hooked module: its name, layout, weight, units kind, and its constants: the whole sheet's distances
    (exact mode) or its window index (sampled mode; memory O(n), distances computed per window)."""

    def __init__(self, name: str, module: nn.Module, layout: Layout, alpha: float, radius: float, units="features",
                 mode: str = "exact", max_exact: int = MAX_EXACT_UNITS):
        self.name, self.module, self.layout, self.alpha, self.radius = name, module, layout, alpha, radius
        self.units = units  # a kind of :func:`topotorch.hooks.as_units`, or callable(output) -> (samples, units)
        self.mode, self.max_exact = mode, max_exact
        self.acts: torch.Tensor | None = None
        self.refresh()

    def to_units(self, out) -> torch.Tensor:
        return self.units(out) if callable(self.units) else as_units(out, self.units)

    def refresh(self) -> None:
        """Recompute distances and neighbourhoods (after the positions changed)."""
        n = self.layout.n
        self.index = Windows(self.layout.unit_coords, self.radius)  # O(n): kept in both modes for inspection
        self.D, self.window_key = None, None
        if self.mode == "exact":
            if n > self.max_exact:
                raise ValueError(
                    f"sheet {self.name}: the exact spatial loss over all {n:,} units needs (n × n) matrices "
                    f"({4 * n * n / 2 ** 30:.1f} GB each); use mode='sampled' (windows of a few hundred units, as "
                    f"TDANN), or raise max_exact_units if the memory is there")
            self.D = inverse_distance(self.layout)
            self.Dc, self.sdd = centred_distance(self.D)
            return
        if self.index.regular:
            # Sheets with equal window geometry share Dw and are sampled in one batch.
            w0 = self.index.table(torch.zeros(1, dtype=torch.long))[0]
            self.Dw = _inverse_distance(self.index.coords[w0])
            self.Dcw, self.sddw = centred_distance(self.Dw)
            self.window_key = (n, self.index.count, self.index.m, tuple(self.index.shape),
                               tuple(torch.round(self.Dw * 1e5).flatten().tolist()))

    @property
    def windows(self) -> torch.Tensor:
        """``(windows, m)`` members of every full window of a lattice sheet (for inspection and tests)."""
        return self.index.table(torch.arange(self.index.count))

    def sample(self, k: int, generator: torch.Generator | None) -> list[torch.Tensor] | torch.Tensor:
        """``k`` windows around random centres: ``(k, m)`` full windows on a lattice, else a list of unit ids
        (ascending) around random units."""
        if self.window_key is not None:
            return self.index.table(torch.randint(self.index.count, (k,), generator=generator))
        centres = torch.randint(self.layout.n, (k,), generator=generator)
        return [self.index.members(c) for c in centres.tolist()]


class _Group:
    """Sheets computed in one batch: equal unit counts (exact) or equal window geometry (sampled).

    Holds the stacked constants on the activations' device: distances, per-sheet weights, and for sampled
    mode each sheet's window index (window starts, the unit in each lattice cell, the centres), O(n) per sheet.
    """

    def __init__(self, sheets: list[_Sheet], mode: str, device: torch.device):
        self.sheets = sheets
        self.n = sheets[0].layout.n
        self.names = [s.name for s in sheets]
        self.alpha = torch.tensor([s.alpha for s in sheets], dtype=torch.float32, device=device)
        if mode == "exact":
            self.D = torch.stack([s.D for s in sheets]).to(device)
            self.Dc = torch.stack([s.Dc for s in sheets]).to(device)
            self.sdd = torch.stack([s.sdd for s in sheets]).to(device)
        else:
            s0 = sheets[0]
            self.D, self.Dc, self.sdd = s0.Dw.to(device), s0.Dcw.to(device), s0.sddw.to(device)
            self.count, self.shape = s0.index.count, s0.index.shape
            self.parts = {}
            for dev in {torch.device("cpu"), torch.device(device)}:
                self.parts[dev] = (torch.stack([s.index.start for s in sheets]).to(dev),
                                   torch.stack([s.index.cell_unit for s in sheets]).to(dev),
                                   torch.stack([s.index.centres for s in sheets]).to(dev),
                                   s0.index.offsets.to(dev))
        self.sheet_index = torch.arange(len(sheets), device=device)

    def table(self, pick: torch.Tensor) -> torch.Tensor:
        """Members ``(S, k, m)`` of window ``pick (S, k)`` of every sheet, on ``pick``'s device."""
        start, cell_unit, centres, offsets = self.parts[pick.device]
        return gather_windows(start, cell_unit, centres, offsets, self.shape, pick)


class SpatialCorrelationLoss:
    """The spatial correlation loss over several hooked sheets; ``total = Σ α_s · loss_s``.

    Two lines, as topoloss::

        sl = SpatialCorrelationLoss({"blocks.0.mlp": layout.grid(16, 16, spacing=1), ...}, alpha=2.5, model=model)
        loss = task_loss + sl()        # from the activations of the last forward pass

    A sheet is named by its module's path in ``model.named_modules()`` (``"blocks.0.mlp"``) when ``model`` is
    given; per-sheet weights are keyed by those names, and a name that is not a sheet (or a sheet without a
    weight) raises. Exactly one forward pass with autograd on may run between two loss calls: a second one
    raises (for gradient accumulation compute the loss and call ``backward`` per micro-batch); :meth:`clear`
    drops the activations of an abandoned pass.

    Args:
        sheets: module (or, with ``model``, its name) → :class:`Layout` of its output units, or a list of
            ``(name, module, layout)`` or ``(name, module, layout, units)`` with ``units`` a kind of
            :func:`topotorch.hooks.as_units` (default ``"features"``: the last dimension) or a callable
            ``output -> (samples, units)``.
        alpha: one weight for all sheets, or a mapping name → weight naming every sheet.
        mode: ``"exact"`` (whole sheet; refused above ``max_exact_units`` units) or ``"sampled"``
            (``neighbourhoods`` windows of sup-norm ``radius`` per sheet per call, as TopoLM and TDANN; memory
            O(units + windows)).
        radius: one sup-norm radius (layout units) for all sheets, or a mapping name → radius naming every sheet.
        max_exact_units: the largest sheet the exact loss accepts (its (n, n) matrices take 4n² bytes each).
        kind: ``"relative"`` or ``"absolute"``.
        generator: the window sampler's generator (checkpoint :attr:`generator` to resume exactly). A CPU
            generator (the default) draws the same windows on every device; one on the activations' device
            draws there.
        capture: when forward passes are recorded: ``"grad"`` (only with autograd on, the default, so that
            evaluation under ``no_grad`` costs nothing) or ``"always"``.
        model: the model the sheets belong to; names sheets by path. A compiled model
            (``torch.compile``) is unwrapped and TorchDynamo's caches are reset so that compiled code is
            retraced with the hooks (hooks added after compiling are otherwise skipped).
    """

    def __init__(self, sheets, alpha: float | Mapping[str, float] = 1.0, mode: str = "exact",
                 kind: str = "relative", neighbourhoods: int = 5, radius: float | Mapping[str, float] = 5.0,
                 generator: torch.Generator | None = None, capture: str = "grad", model: nn.Module | None = None,
                 max_exact_units: int = MAX_EXACT_UNITS):
        if mode not in ("exact", "sampled"):
            raise ValueError(f"mode must be 'exact' or 'sampled', got {mode!r}")
        if kind not in ("relative", "absolute"):
            raise ValueError(f"kind must be 'relative' or 'absolute', got {kind!r}")
        if capture not in ("grad", "always"):
            raise ValueError(f"capture must be 'grad' or 'always', got {capture!r}")
        radii = radius.values() if isinstance(radius, Mapping) else [radius]
        if not isinstance(neighbourhoods, int) or neighbourhoods < 1 or not all(
                isinstance(r, (int, float)) and r > 0 for r in radii):
            raise ValueError(f"neighbourhoods must be an integer ≥ 1 and radius positive, got {neighbourhoods!r}, "
                             f"{radius!r}")
        base = unwrap_compiled(model) if model is not None else None
        if isinstance(sheets, Mapping):
            if base is not None:
                names = resolve_modules(base, list(sheets))
                items = [(n, m, sheets[k]) for (n, m), k in zip(names.items(), sheets)]
            else:
                if any(isinstance(k, str) for k in sheets):
                    raise ValueError("sheets given by name need model= to find the modules")
                items = [(f"sheet{i}", m, lay) for i, (m, lay) in enumerate(sheets.items())]
        else:
            items = [tuple(it) for it in sheets]
        if not items:
            raise ValueError("no sheets given")
        names = [it[0] for it in items]
        if len(set(names)) != len(names):
            raise ValueError(f"sheet names must be unique, got {names}")
        alpha = check_alpha(alpha, names, "" if base is not None else " (pass model= to name sheets by their module path)")
        if isinstance(radius, Mapping) and set(radius) != set(names):
            raise ValueError(f"radius names {sorted(radius)}; it must name exactly the sheets {names}")
        self.sheets: list[_Sheet] = []
        for item in items:
            if len(item) not in (3, 4):
                raise ValueError(f"a sheet is (name, module, layout[, units]), got {len(item)} items")
            name, module, lay = item[:3]
            units = item[3] if len(item) == 4 and item[3] is not None else "features"
            if not isinstance(module, nn.Module):
                raise TypeError(f"sheet {name}: expected an nn.Module, got {type(module).__name__}")
            if not isinstance(lay, Layout):
                raise TypeError(f"sheet {name}: expected a Layout, got {type(lay).__name__}")
            if not callable(units) and units not in UNITS:
                raise ValueError(f"sheet {name}: units must be one of {UNITS} or a callable, got {units!r}")
            a = float(alpha[name]) if isinstance(alpha, Mapping) else float(alpha)
            rad = float(radius[name]) if isinstance(radius, Mapping) else float(radius)
            self.sheets.append(_Sheet(name, module, lay, a, rad, units, mode, max_exact_units))
        self.mode, self.kind, self.k, self.capture = mode, kind, neighbourhoods, capture
        self.enabled = True  # False: forward passes are not recorded (e.g. to compare against no loss)
        self._batched = False  # True: the accelerator path on CPU too (tests compare the two paths)
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self._hooks = [s.module.register_forward_hook(self._make_hook(s)) for s in self.sheets]
        if model is not None and base is not model or _dynamo_used():
            _reset_dynamo()
        self._cache: dict = {}
        self.last_values: list = []

    def _make_hook(self, sheet: _Sheet):
        def hook(module, args, out):
            if self.enabled and (self.capture == "always" or torch.is_grad_enabled()):
                if sheet.acts is not None:
                    sheet.acts = None
                    raise RuntimeError(
                        f"sheet {sheet.name}: a second forward pass ran before the spatial loss of the first was "
                        "computed; compute the loss (and backward) after every forward pass — for gradient "
                        "accumulation, per micro-batch — run evaluation under torch.no_grad(), or call .clear() to "
                        "drop an abandoned pass")
                X = sheet.to_units(out)
                if X.shape[-1] != sheet.layout.n:
                    raise ValueError(f"sheet {sheet.name}: output has {X.shape[-1]} units, layout has "
                                     f"{sheet.layout.n}")
                sheet.acts = X
        return hook

    def clear(self) -> None:
        """Forget the captured activations (of a forward pass whose loss will not be computed)."""
        for s in self.sheets:
            s.acts = None

    def _draw(self, high: int, shape: tuple, device: torch.device) -> torch.Tensor:
        """Window picks from :attr:`generator`, on ``device`` without waiting for it: drawn there when the
        generator lives there, else drawn on the host (the same numbers on every device) and copied from
        pinned memory asynchronously."""
        gen = self.generator
        if gen.device.type == device.type and (device.type == "cpu" or gen.device.index == device.index):
            return torch.randint(high, shape, generator=gen, device=device)
        pick = torch.randint(high, shape, generator=gen)
        if device.type == "cuda":
            return pick.pin_memory().to(device, non_blocking=True)
        return pick.to(device)

    def _group_loss(self, g: _Group) -> torch.Tensor:
        """Losses ``(S,)`` of one group: all its correlations in one batched product, the loss in one batch.

        On an accelerator (or with :attr:`_batched`) the windows' columns (or the whole sheets) are gathered in the
        activations' own dtype and multiplied with float32 accumulation, with no host synchronisation
        (:class:`_GroupCovariance`); on CPU the activations are cast to float32 and the windows' covariances come
        from :class:`_WindowCovariance`."""
        dev = g.sheets[0].acts.device
        accel = dev.type != "cpu" or self._batched
        acts = [s.acts if accel else s.acts.float() for s in g.sheets]
        S, n = len(acts), g.n

        def whole():  # (S, n, n)
            if accel:
                return _corr_from_cov(_GroupCovariance.apply(None, *acts))
            return torch.stack([correlation_matrix(X) for X in acts])

        if self.mode == "exact":
            r = whole()
        else:
            pick = self._draw(g.count, (S, self.k), g.sheet_index.device if accel else torch.device("cpu"))
            idx = g.table(pick)                                                 # (S, k, m) unit indices
            k, m = idx.shape[1:]
            if k * m * m >= n * n:  # the windows cover more pairs than the sheet: index its full matrix
                r = whole()
                idx = idx.to(r.device)
                r = r[torch.arange(S, device=r.device)[:, None, None, None], idx[..., :, None], idx[..., None, :]]
            elif accel:
                r = _corr_from_cov(_GroupCovariance.apply(idx, *acts))         # (S, k, m, m)
            else:
                r = _corr_from_cov(_WindowCovariance.apply(idx, *acts)).view(S, k, m, m)
        loss = _relative(r, g.Dc, g.sdd) if self.kind == "relative" else _absolute(r, g.D)
        return loss if self.mode == "exact" else loss.mean(-1)

    def _irregular_loss(self, sheet: _Sheet) -> torch.Tensor:
        """Sampled loss of a sheet whose windows differ in size (not a grid): one window at a time."""
        X = sheet.acts.float()
        coords = sheet.index.coords
        losses = [pair_loss(correlation_matrix(X[:, w.to(X.device)]), _inverse_distance(coords[w]).to(X.device),
                            self.kind)
                  for w in sheet.sample(self.k, self.generator) if len(w) > 1]
        if not losses:
            raise ValueError(f"sheet {sheet.name}: no sampled window holds two units; increase radius "
                             f"(now {sheet.radius})")
        return torch.stack(losses).mean()

    def _groups(self, device: torch.device) -> list:
        """Sheets batched together (cached per device): a :class:`_Group` or a lone irregular sheet."""
        if device not in self._cache:
            keys: dict = {}
            for s in self.sheets:
                if self.mode == "exact":
                    key = ("exact", s.layout.n)
                else:
                    key = ("windows", s.window_key) if s.window_key is not None else ("single", id(s))
                keys.setdefault(key, []).append(s)
            self._cache[device] = [_Group(g, self.mode, device) if k[0] != "single" else g[0]
                                   for k, g in keys.items()]
        return self._cache[device]

    def __call__(self) -> torch.Tensor:
        """Σ α·loss over sheets from the last captured forward pass; clears the captured activations.

        Sheets whose activations share a shape (all sheets of a transformer) are computed together in one
        batch; the per-sheet values are kept, detached, in :attr:`last_values`.
        """
        if not self._hooks:
            raise RuntimeError("this loss was removed (its hooks are gone); build a new one")
        missing = [s.name for s in self.sheets if s.acts is None]
        if missing:
            raise RuntimeError(f"sheet(s) {missing} have no activations: run a forward pass with grad enabled "
                               "(or capture='always') before computing the loss. If the model was compiled "
                               "(torch.compile) before the hooks were added, pass model= (or call "
                               "torch._dynamo.reset()) so that the compiled code is retraced with them")
        device = self.sheets[0].acts.device
        if any(s.acts.device != device for s in self.sheets):
            raise ValueError("all sheets' activations must be on one device")
        values, total = [], None
        with torch.autocast(device_type=device.type, enabled=False):
            for g in self._groups(device):
                if isinstance(g, _Group):
                    loss = self._group_loss(g)
                    part, names = (g.alpha * loss).sum(), g.names
                else:
                    loss = self._irregular_loss(g).reshape(1)
                    part, names = g.alpha * loss[0], [g.name]
                total = part if total is None else total + part
                values.append((names, loss.detach()))
        for s in self.sheets:
            s.acts = None
        self.last_values = values
        return total

    @property
    def last(self) -> dict[str, float]:
        """Per-sheet loss values of the last call (converted lazily: no device sync during training)."""
        return {name: float(v) for names, vals in self.last_values
                for name, v in zip(names, vals.tolist())}

    def refresh(self) -> None:
        for s in self.sheets:
            s.refresh()
        self._cache.clear()

    def remove(self) -> None:
        """Remove the forward hooks (the loss cannot be called afterwards)."""
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        self.clear()
