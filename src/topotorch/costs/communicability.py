"""seRNN's wiring cost (Achterberg, Akarca et al., Nature Machine Intelligence 2023) on a recurrent weight matrix.

For recurrent weights ``W (n, n)`` (``W[i, j]``: from unit i to unit j, as Keras' recurrent kernel and
``h @ W``), ``s_i = Σ_j |W_ij|`` and the weighted communicability (Crofts & Higham 2009)
``C = expm(S^{-1/2} |W| S^{-1/2})`` with ``S = diag(s)``, its diagonal set to 0. The cost is
``Σ_ij |W_ij| · C_ij^γ · D_ij`` with ``D`` the Euclidean distance between the units' positions (a 5×5×4 grid in
the paper) and γ seRNN's ``comms_factor`` (1). The gradient flows through the matrix exponential (as in seRNN's
TensorFlow regulariser). Batched: ``W (k, n, n)`` gives ``k`` costs, one per network.
"""
from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable

__all__ = ["communicability", "communicability_cost", "grid3d"]


def grid3d(shape=(5, 5, 4)) -> torch.Tensor:
    """``(x·y·z, 3)`` unit positions on seRNN's grid, unit order as seRNN's ``meshgrid(nx, ny, nz)`` ravelled."""
    nx, ny, nz = (torch.arange(s, dtype=torch.float64) for s in shape)
    x, y, z = torch.meshgrid(nx, ny, nz, indexing="xy")
    return torch.stack([x.flatten(), y.flatten(), z.flatten()], 1)


def _check(W: torch.Tensor) -> None:
    if W.dim() not in (2, 3) or W.shape[-1] != W.shape[-2]:
        raise ValueError(f"a recurrent weight matrix must be square (n, n) or a batch (k, n, n), got {tuple(W.shape)}")


def _taylor_expm(A: torch.Tensor) -> torch.Tensor:
    """``expm(A)`` by scaling and squaring a Taylor polynomial, in differentiable tensor ops: ``A / 2^s`` with
    1-norm ≤ ½, degree 12 (float32; truncation < 1e-14) or 18 (float64; < 1e-22), then ``s`` squarings."""
    norm = torch.linalg.matrix_norm(A, 1).max().item() if A.numel() else 0.0
    if not math.isfinite(norm):  # non-finite weights: let NaN/inf propagate (the training loop names them)
        return torch.linalg.matrix_exp(A)
    s = max(0, math.ceil(math.log2(norm / 0.5))) if norm > 0.5 else 0
    m = 18 if A.dtype == torch.float64 else 12
    X = A / 2 ** s
    eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
    P = eye + X / m
    for k in range(m - 1, 0, -1):
        P = eye + (X @ P) / k
    for _ in range(s):
        P = P @ P
    return P


class _MatrixExp(torch.autograd.Function):
    """``torch.linalg.matrix_exp`` (the same values) whose gradient is the adjoint Fréchet derivative of
    :func:`_taylor_expm`, by autograd, where torch's own backward takes a 2n×2n block exponential: on seRNN's 12
    networks of 100 units the cost's value and gradient take 22 ms instead of 40 (1 thread), and the float32
    gradient is 10× closer to float64's (largest error 4e-7 vs 5e-6 of the largest entry;
    ``benchmarks/communicability.py``)."""

    @staticmethod
    def forward(ctx, A):
        ctx.save_for_backward(A)
        return torch.linalg.matrix_exp(A)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (A,) = ctx.saved_tensors
        with torch.enable_grad():
            X = A.detach().requires_grad_(True)
            return torch.autograd.grad(_taylor_expm(X), X, grad)[0]


def communicability(W: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Weighted communicability ``expm(S^{-1/2}|W|S^{-1/2})`` with a zero diagonal; ``(…, n, n)``. A unit without
    outgoing weight (s = 0) gets s = ``eps`` instead of a division by zero."""
    _check(W)
    A = W.abs()
    r = A.sum(-1).clamp_min(eps).rsqrt()
    C = _MatrixExp.apply(r[..., :, None] * A * r[..., None, :])
    return C * (1 - torch.eye(W.shape[-1], dtype=C.dtype, device=C.device))


def communicability_cost(W: torch.Tensor, positions: torch.Tensor, comms_factor: float = 1.0) -> torch.Tensor:
    """``Σ |W| ⊙ C^γ ⊙ D`` per network: a scalar for ``W (n, n)``, ``(k,)`` for ``W (k, n, n)``. ``positions
    (n, dim)``: the units' places (e.g. :func:`grid3d`); a grid that does not hold the units raises."""
    _check(W)
    P = torch.as_tensor(positions, dtype=W.dtype, device=W.device)
    if P.dim() != 2 or P.shape[0] != W.shape[-1]:
        raise ValueError(f"positions {tuple(P.shape)} do not hold the {W.shape[-1]} recurrent units")
    D = torch.cdist(P, P)
    C = communicability(W)
    return (W.abs() * C.pow(comms_factor) * D).sum((-2, -1))
