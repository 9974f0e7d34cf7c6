"""The covariance kernels behind the spatial correlation loss: autograd functions that give the covariance (and
so the correlation) of a whole sheet, of windows of a sheet, and of every sheet of a group at once on an
accelerator (columns gathered in the activations' dtype, float32 accumulation). The loss itself is
:mod:`topotorch.costs.correlation`."""
from __future__ import annotations

import torch

__all__ = ["covariance", "correlation_matrix", "EPS"]

EPS = 1e-12


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
