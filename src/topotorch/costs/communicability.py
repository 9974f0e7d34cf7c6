"""seRNN's wiring cost (Achterberg, Akarca et al., Nature Machine Intelligence 2023) on a recurrent weight matrix.

For recurrent weights ``W (n, n)`` (``W[i, j]``: from unit i to unit j, as Keras' recurrent kernel and
``h @ W``), ``s_i = Σ_j |W_ij|`` and the weighted communicability (Crofts & Higham 2009)
``C = expm(S^{-1/2} |W| S^{-1/2})`` with ``S = diag(s)``, its diagonal set to 0. The cost is
``Σ_ij |W_ij| · C_ij^γ · D_ij`` with ``D`` the Euclidean distance between the units' positions (a 5×5×4 grid in
the paper) and γ seRNN's ``comms_factor`` (1). The gradient flows through the matrix exponential (as in seRNN's
TensorFlow regulariser). Batched: ``W (k, n, n)`` gives ``k`` costs, one per network.
"""
from __future__ import annotations

import torch

__all__ = ["communicability", "communicability_cost", "grid3d"]


def grid3d(shape=(5, 5, 4)) -> torch.Tensor:
    """``(x·y·z, 3)`` unit positions on seRNN's grid, unit order as seRNN's ``meshgrid(nx, ny, nz)`` ravelled."""
    nx, ny, nz = (torch.arange(s, dtype=torch.float64) for s in shape)
    x, y, z = torch.meshgrid(nx, ny, nz, indexing="xy")
    return torch.stack([x.flatten(), y.flatten(), z.flatten()], 1)


def _check(W: torch.Tensor) -> None:
    if W.dim() not in (2, 3) or W.shape[-1] != W.shape[-2]:
        raise ValueError(f"a recurrent weight matrix must be square (n, n) or a batch (k, n, n), got {tuple(W.shape)}")


def communicability(W: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Weighted communicability ``expm(S^{-1/2}|W|S^{-1/2})`` with a zero diagonal; ``(…, n, n)``. A unit without
    outgoing weight (s = 0) gets s = ``eps`` instead of a division by zero."""
    _check(W)
    A = W.abs()
    r = A.sum(-1).clamp_min(eps).rsqrt()
    C = torch.linalg.matrix_exp(r[..., :, None] * A * r[..., None, :])
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
