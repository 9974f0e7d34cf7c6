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

from ..hooks import UNITS, as_units, resolve_modules
from ..layout import Layout, distance

__all__ = ["correlation_matrix", "covariance", "pair_loss", "centred_distance", "SpatialCorrelationLoss", "inverse_distance",
           "unwrap_compiled"]

EPS = 1e-12


def inverse_distance(layout: Layout) -> torch.Tensor:
    """``D = 1/(1 + d)`` between every two units (Euclidean distance, layout units), float32."""
    return (1.0 / (1.0 + distance(layout, layout, p=2))).float()


def _corr_from_cov(C: torch.Tensor) -> torch.Tensor:
    """Correlations from covariances ``(..., n, n)``; units with (numerically) zero variance get 0."""
    var = C.diagonal(dim1=-2, dim2=-1)
    alive = var > 1e-12 * var.amax(-1, keepdim=True).clamp_min(1e-30)
    # rsqrt only of positive variances: its derivative at 0 is infinite and would poison gradients with NaN.
    inv = torch.where(alive, var, torch.ones_like(var)).rsqrt() * alive
    return C * inv[..., :, None] * inv[..., None, :]


class _Covariance(torch.autograd.Function):
    """``C = XcᵀXc / N`` with ``Xc = X − mean``, and a one-product backward.

    ``dX = Xc (G + Gᵀ) / N``: the centring's Jacobian drops out because the columns of ``Xc`` sum to zero.
    On CPU, where passes over the (tokens × units) activations cost as much as the product, no centred
    copy is made: ``C = XᵀX/N − μμᵀ`` and ``dX = X·Sym − 1(μᵀSym)``, each one ``addmm``. That form loses
    precision when a unit's mean dwarfs its spread, so such inputs (|μ| > 8σ for some unit, which includes
    constant non-zero units) are recomputed centred.
    """

    @staticmethod
    def forward(ctx, X):
        N = X.shape[-2]
        mu = X.mean(-2)
        if X.dim() == 2 and X.device.type == "cpu":
            C = torch.addmm(torch.outer(mu, mu), X.t(), X, beta=-1, alpha=1.0 / N)
            if not bool((mu * mu > 64 * C.diagonal()).any()):
                ctx.save_for_backward(X, mu)
                return C
        Xc = X - mu.unsqueeze(-2)
        ctx.save_for_backward(Xc, None)
        return Xc.transpose(-1, -2) @ Xc / N

    @staticmethod
    def backward(ctx, G):
        X, mu = ctx.saved_tensors
        Sym = (G + G.transpose(-1, -2)) / X.shape[-2]
        if mu is None:  # X is centred
            return X @ Sym
        return torch.addmm((mu @ Sym).neg_().unsqueeze(0), X, Sym)


class _WindowCovariance(torch.autograd.Function):
    """Covariances within windows of several sheets of one shape: ``idx (S, k, m)``, ``Xs`` S × ``(N, n)``
    → ``(S·k, m, m)``.

    The needed columns are gathered into one buffer (a row-wise pass over the activations) and centred in
    place; no autograd graph over that copy, which would add a centring pass, a scatter and their
    allocations. Then, per sheet, whichever costs less: the covariance of the union of its windows' units,
    one product from which the windows are indexed (windows overlap heavily on small sheets), or one
    batched product over the windows (the windows are strided views of the buffer). Small sheets are
    concatenated and done together (fewer ops). The backward is one product and one ``index_copy`` or
    ``index_add`` per plan.
    """

    @staticmethod
    def forward(ctx, idx, *Xs):
        S, k, m = idx.shape
        N, n = Xs[0].shape
        idx = idx.cpu()  # plans are made on the host: no device synchronisation
        plans = []  # (sheets, gathered columns, window positions within them or None)
        if S * N * n <= 2 ** 20:
            offsets = n * torch.arange(S, device=idx.device)[:, None, None]
            plans.append((list(range(S)), (idx + offsets).flatten(), None))
        else:
            for s in range(S):
                cols, pos = torch.unique(idx[s], return_inverse=True)
                if len(cols) ** 2 <= 1.6 * k * m * m:  # a single wider product runs faster than k narrow ones
                    plans.append(([s], cols, pos))
                else:
                    plans.append(([s], idx[s].flatten(), None))
        dev = Xs[0].device
        plans = [(sh, cols.to(dev), None if pos is None else pos.to(dev)) for sh, cols, pos in plans]
        As, Cs = [], []
        for sheets, cols, pos in plans:
            src = Xs[sheets[0]] if len(sheets) == 1 else torch.cat([Xs[s] for s in sheets], 1)
            A = torch.index_select(src, 1, cols)
            A.sub_(A.mean(0, keepdim=True))
            As.append(A)
            if pos is None:
                W = A.view(N, len(sheets) * k, m).transpose(0, 1)       # (c·k, N, m)
                Cs.append(torch.bmm(W.transpose(1, 2), W).div_(N))
            else:
                CU = (A.t() @ A).div_(N)
                Cs.append(CU[pos[:, :, None], pos[:, None, :]])
        ctx.save_for_backward(*As)
        ctx.n, ctx.k, ctx.plans = n, k, plans
        return torch.cat(Cs) if len(Cs) > 1 else Cs[0]

    @staticmethod
    def backward(ctx, G):
        As = ctx.saved_tensors
        k, n = ctx.k, ctx.n
        N = As[0].shape[0]
        grads, row = [], 0
        for (sheets, cols, pos), A in zip(ctx.plans, As):
            Gc = G[row:row + len(sheets) * k]
            row += len(sheets) * k
            if pos is not None:
                u = A.shape[1]
                GU = torch.zeros(u, u, dtype=G.dtype, device=G.device)
                GU.index_put_((pos[:, :, None].expand_as(Gc), pos[:, None, :].expand_as(Gc)), Gc, accumulate=True)
                dA = torch.mm(A, (GU + GU.t()).div_(N))
                dX = torch.zeros(N, n, dtype=A.dtype, device=A.device)
                grads.append(dX.index_copy_(1, cols, dA))
                continue
            # dW is written in the gathered layout (N, c·k·m) so that one index_add scatters every window.
            c = len(sheets)
            W = A.view(N, c * k, -1).transpose(0, 1)
            dA = torch.empty_like(A)
            torch.bmm(W, (Gc + Gc.transpose(1, 2)).div_(N), out=dA.view(N, c * k, -1).transpose(0, 1))
            dX = torch.zeros(N, c * n, dtype=A.dtype, device=A.device).index_add_(1, cols, dA)
            grads += [dX] if c == 1 else [dX[:, i * n:(i + 1) * n] for i in range(c)]
        return (None, *grads)


_OUT_DTYPE: dict = {}  # device type -> whether bmm takes out_dtype (float32 results from bf16/fp16 operands)


def _bmm_f32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` batched, at least float32 result. bf16/fp16 operands multiply exactly and accumulate in float32
    (cuBLAS's ``out_dtype`` path); where that is unavailable (CPU) the operands are upcast, which computes
    the same products."""
    if a.dtype in (torch.bfloat16, torch.float16):
        if _OUT_DTYPE.get(a.device.type, a.device.type == "cuda"):
            try:
                return torch.bmm(a, b, out_dtype=torch.float32)
            except (RuntimeError, TypeError, NotImplementedError):
                _OUT_DTYPE[a.device.type] = False
        return torch.bmm(a.float(), b.float())
    return torch.bmm(a, b)


def _exact_one_hot(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether a product with a one-hot matrix reproduces its operand exactly (not under TF32)."""
    return dtype != torch.float32 or device.type != "cuda" or torch.get_float32_matmul_precision() == "highest"


class _GroupCovariance(torch.autograd.Function):
    """Covariances of several sheets, whole or in windows, in one batched product (the accelerator path).

    ``Xs``: S activations ``(N, n)`` of one group. ``idx``: ``None`` (each sheet whole → ``(S, n, n)``) or
    ``(S, k, m)`` unit indices of ``k`` windows per sheet, on the activations' device (→ ``(S, k, m, m)``).
    Returns covariances in float32 (float64 for float64 inputs).

    One copy ``A (S, N, w)`` holds the needed columns in the activations' own dtype (bf16 under autocast),
    shifted by a cheap estimate of their mean (the mean of 64 samples), then zero padding to a multiple of
    8 columns (tensor-core alignment) and a last column of ones. For windows the copy is one product with
    a one-hot selection matrix whose bias is the shift: gather and centring in one kernel, exact in bf16.
    Then one product ``AᵀA/N`` with float32 accumulation holds every covariance of the shifted columns and,
    against the ones, their means ``δ`` — the remainder of the shift, corrected for exactly
    (``C = AᵀA/N − δδᵀ``), so units whose mean dwarfs their spread lose nothing. The windows' covariances are
    blocks of it. The backward is one product of ``A`` with the gradient, the selection matrix and the
    rank-one correction folded in (the ones column carries it); overlapping windows' gradients are summed
    in float32, deterministically. No index is built on the host and nothing waits for the device.
    """

    @staticmethod
    def forward(ctx, idx, *Xs):
        S, N, n = len(Xs), *Xs[0].shape
        dt = Xs[0].dtype if Xs[0].is_floating_point() else torch.float32
        Xs = [X if X.dtype == dt else X.to(dt) for X in Xs]
        acc = torch.float64 if dt == torch.float64 else torch.float32
        dev = Xs[0].device
        step = max(N // 64, 1)
        shift = torch.stack([X[::step][:64] for X in Xs]).mean(1, dtype=acc).to(dt)   # (S, n)
        u = n if idx is None else idx.shape[1] * idx.shape[2]
        w = (u // 8 + 1) * 8                                                          # ≥ one spare column
        A = torch.empty(S, N, w, dtype=dt, device=dev)
        P = None
        if idx is None:
            for s, X in enumerate(Xs):  # copied and shifted in one pass per sheet
                torch.sub(X, shift[s], out=A[s, :, :n])
            A[:, :, n:].zero_()
        else:
            cols = idx.reshape(S, u)
            shift = torch.cat([shift.gather(1, cols), shift.new_zeros(S, w - u)], 1)    # (S, w)
            P = torch.zeros(S, w, n, dtype=dt, device=dev)
            P[:, :u].scatter_(2, cols[:, :, None], 1.0)                                   # (S, w, n) one-hot
            if _exact_one_hot(dt, dev):
                for s, X in enumerate(Xs):
                    torch.addmm(shift[s].neg(), X, P[s].t(), out=A[s])
            else:  # float32 under TF32: a one-hot product would round the activations; gather instead
                for s, X in enumerate(Xs):
                    torch.index_select(X, 1, cols[s], out=A[s, :, :u])
                A[:, :, u:].zero_()
                A.sub_(shift[:, None, :])
        A[:, :, -1] = 1.0
        CA = _bmm_f32(A.transpose(1, 2), A).div_(N)                                   # (S, w, w)
        delta = CA[:, -1:, :u]                                                        # (S, 1, u) means
        C = CA[:, :u, :u] - delta.transpose(1, 2) * delta
        ctx.save_for_backward(A, delta, P)
        ctx.u = u
        if idx is None:
            return C
        k, m = idx.shape[1:]
        blocks = C.unflatten(1, (k, m)).unflatten(3, (k, m)).diagonal(dim1=1, dim2=3)  # (S, m, m, k)
        return blocks.permute(0, 3, 1, 2).contiguous()

    @staticmethod
    def backward(ctx, G):
        A, delta, P = ctx.saved_tensors
        u = ctx.u
        S, N, w = A.shape
        Sym = (G + G.transpose(-1, -2)).div_(N)
        M = torch.zeros(S, w, u, dtype=Sym.dtype, device=Sym.device)   # gradient w.r.t. A's columns ...
        if P is None:
            M[:, :u] = Sym
        else:  # the windows' blocks on the diagonal
            k, m = Sym.shape[1:3]
            M[:, :u].unflatten(1, (k, m)).unflatten(3, (k, m)).diagonal(dim1=1, dim2=3).copy_(Sym.permute(0, 2, 3, 1))
        M[:, -1:] = -torch.bmm(delta, M[:, :u])                             # ... and the centring, on the ones
        if P is not None:
            M = torch.bmm(M, P[:, :u].to(M.dtype))                          # ... through the selection: (S, w, n)
        return (None, *torch.bmm(A, M.to(A.dtype)).unbind(0))


def covariance(X: torch.Tensor) -> torch.Tensor:
    """Covariances between the columns of ``X (..., N, n)`` (population, float32) → ``(..., n, n)``."""
    return _Covariance.apply(X.float())


def correlation_matrix(X: torch.Tensor) -> torch.Tensor:
    """Pearson correlations between the columns of ``X (..., N, n)`` → ``(..., n, n)``; zero-variance → 0.

    One matrix product over ``X`` (plus a centring pass off CPU); everything else is on ``n × n``.
    """
    return _corr_from_cov(covariance(X))


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


class _Sheet:
    """One hooked module: its name, layout, weight, units kind, and precomputed distances / neighbourhoods."""

    def __init__(self, name: str, module: nn.Module, layout: Layout, alpha: float, radius: float, units="features"):
        self.name, self.module, self.layout, self.alpha, self.radius = name, module, layout, alpha, radius
        self.units = units  # a kind of :func:`topotorch.hooks.as_units`, or callable(output) -> (samples, units)
        self.acts: torch.Tensor | None = None
        self.refresh()

    def to_units(self, out) -> torch.Tensor:
        return self.units(out) if callable(self.units) else as_units(out, self.units)

    def refresh(self) -> None:
        """Recompute distances and neighbourhoods (after the positions changed)."""
        self.D = inverse_distance(self.layout)
        self.Dc, self.sdd = centred_distance(self.D)
        # Sup-norm windows around every unit: the units within ``radius`` of it.
        c = self.layout.unit_coords
        inside = (c[:, None, :] - c[None, :, :]).abs().amax(-1) <= self.radius + 1e-9
        sizes = inside.sum(1)
        full = sizes == sizes.max()
        # Windows of the maximal size all have the same shape on a grid: stack them (units sorted by
        # their offset from the centre) so that all sampled neighbourhoods are computed in one batch.
        self.windows, self.window_key = None, None
        if full.any():
            centres = torch.nonzero(full).flatten()
            idx = torch.nonzero(inside[centres])[:, 1].view(len(centres), -1)  # (windows, m), row-major
            off = c[idx] - c[centres][:, None]
            order = torch.argsort(off[..., 0] * 1e6 + off[..., 1] if c.shape[1] > 1 else off[..., 0], dim=1)
            W = idx.gather(1, order)
            Dw = self.D[W[:, :, None], W[:, None, :]]
            if torch.allclose(Dw, Dw[:1].expand_as(Dw), atol=1e-6):  # translation-invariant (a grid)
                self.windows, self.Dw = W, Dw[0]
                self.Dcw, self.sddw = centred_distance(self.Dw)
                # Sheets with equal window geometry share Dw and are sampled in one batch.
                self.window_key = (self.layout.n, *W.shape, tuple(torch.round(self.Dw * 1e5).flatten().tolist()))
        self.inside = inside

    def sample(self, k: int, generator: torch.Generator | None) -> list[torch.Tensor] | torch.Tensor:
        """``k`` windows around random centres: ``(k, m)`` on a grid, else a list of index tensors."""
        if self.windows is not None:
            return self.windows[torch.randint(len(self.windows), (k,), generator=generator)]
        centres = torch.randint(self.inside.shape[0], (k,), generator=generator)
        return [torch.nonzero(self.inside[c]).flatten() for c in centres.tolist()]


class _Group:
    """Sheets computed in one batch: equal unit counts (exact) or equal window geometry (sampled).

    Holds the stacked constants on the activations' device: distances, per-sheet weights, and for sampled
    mode the window table ``(S, windows, m)`` of unit indices.
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
            self.table = torch.stack([s.windows for s in sheets])  # (S, windows, m), CPU
            self.device_table = self.table.to(device)               # the accelerator path's copy
        self.sheet_index = torch.arange(len(sheets), device=device)


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
        mode: ``"exact"`` (whole sheet) or ``"sampled"`` (``neighbourhoods`` windows of sup-norm ``radius``
            per sheet per call, as TopoLM).
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
                 kind: str = "relative", neighbourhoods: int = 5, radius: float = 5.0,
                 generator: torch.Generator | None = None, capture: str = "grad", model: nn.Module | None = None):
        if mode not in ("exact", "sampled"):
            raise ValueError(f"mode must be 'exact' or 'sampled', got {mode!r}")
        if kind not in ("relative", "absolute"):
            raise ValueError(f"kind must be 'relative' or 'absolute', got {kind!r}")
        if capture not in ("grad", "always"):
            raise ValueError(f"capture must be 'grad' or 'always', got {capture!r}")
        if neighbourhoods < 1 or radius <= 0:
            raise ValueError("neighbourhoods must be ≥ 1 and radius positive")
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
        if isinstance(alpha, Mapping):
            unknown = sorted(set(alpha) - set(names))
            if unknown:
                hint = "" if base is not None else " (pass model= to name sheets by their module path)"
                raise ValueError(f"alpha names {unknown} are not sheets; the sheets are {names}{hint}")
            missing = [n for n in names if n not in alpha]
            if missing:
                raise ValueError(f"alpha has no weight for sheet(s) {missing}; give every sheet a weight (0 turns one off)")
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
            self.sheets.append(_Sheet(name, module, lay, a, radius, units))
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

    def _device_group_loss(self, g: _Group) -> torch.Tensor:
        """:meth:`_group_loss` on an accelerator: one gather of the windows' columns (or one concatenation of
        the whole sheets) in the activations' dtype, one batched product, no host synchronisation."""
        acts = [s.acts for s in g.sheets]
        S, n = len(acts), g.n
        if self.mode == "exact":
            r = _corr_from_cov(_GroupCovariance.apply(None, *acts))          # (S, n, n)
        else:
            table = g.device_table
            pick = self._draw(table.shape[1], (S, self.k), table.device)
            idx = table[g.sheet_index[:, None], pick]                           # (S, k, m)
            k, m = idx.shape[1:]
            if k * m * m >= n * n:  # the windows cover more pairs than the sheet: index its full matrix
                r = _corr_from_cov(_GroupCovariance.apply(None, *acts))
                r = r[g.sheet_index[:, None, None, None], idx[..., :, None], idx[..., None, :]]
            else:
                r = _corr_from_cov(_GroupCovariance.apply(idx, *acts))                 # (S, k, m, m)
        loss = _relative(r, g.Dc, g.sdd) if self.kind == "relative" else _absolute(r, g.D)
        return loss if self.mode == "exact" else loss.mean(-1)

    def _group_loss(self, g: _Group) -> torch.Tensor:
        """Losses ``(S,)`` of one group: all its correlations in one batched product, the loss in one batch."""
        if g.sheets[0].acts.device.type != "cpu" or self._batched:
            return self._device_group_loss(g)
        acts = [s.acts.float() for s in g.sheets]
        S, n = len(acts), g.n
        if self.mode == "exact":
            r = torch.stack([correlation_matrix(X) for X in acts])      # (S, n, n)
        else:
            pick = torch.randint(g.table.shape[1], (S, self.k), generator=self.generator)
            idx = g.table[torch.arange(S)[:, None], pick]               # (S, k, m) unit indices, CPU
            k, m = idx.shape[1:]
            if k * m * m >= n * n:  # the windows cover more pairs than the sheet: index its full matrix
                r = torch.stack([correlation_matrix(X) for X in acts])
                idx = idx.to(r.device)
                r = r[torch.arange(S, device=r.device)[:, None, None, None], idx[..., :, None], idx[..., None, :]]
            else:
                r = _corr_from_cov(_WindowCovariance.apply(idx, *acts)).view(S, k, m, m)
        loss = _relative(r, g.Dc, g.sdd) if self.kind == "relative" else _absolute(r, g.D)
        return loss if self.mode == "exact" else loss.mean(-1)

    def _irregular_loss(self, sheet: _Sheet) -> torch.Tensor:
        """Sampled loss of a sheet whose windows differ in size (not a grid): one window at a time."""
        X = sheet.acts.float()
        losses = [pair_loss(correlation_matrix(X[:, w.to(X.device)]), sheet.D[w][:, w].to(X.device), self.kind)
                  for w in sheet.sample(self.k, self.generator) if len(w) > 1]
        return torch.stack(losses).mean()

    def _groups(self, device: torch.device) -> list:
        """Sheets batched together (cached per device): a :class:`_Group` or a lone irregular sheet."""
        if device not in self._cache:
            keys: dict = {}
            for s in self.sheets:
                if self.mode == "exact":
                    key = ("exact", s.layout.n)
                else:
                    key = ("windows", s.window_key) if s.windows is not None else ("single", id(s))
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


def unwrap_compiled(model: nn.Module) -> nn.Module:
    """The module a wrapper stands for: ``torch.compile``'s ``OptimizedModule``, ``DistributedDataParallel``
    or ``DataParallel`` (nested too); other modules unchanged."""
    while True:
        if isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            return model


def _dynamo_used() -> bool:
    """Whether TorchDynamo has compiled anything in this process (hooks added now would be skipped by it)."""
    import sys
    dyn = sys.modules.get("torch._dynamo.eval_frame")
    if dyn is None:
        return False
    try:
        from torch._dynamo.utils import counters
        return bool(counters["stats"].get("unique_graphs", 0)) or bool(counters["frames"].get("ok", 0))
    except Exception:  # private API: when unsure, treat compiled code as possibly present
        return True


def _reset_dynamo() -> None:
    import torch._dynamo
    torch._dynamo.reset()
