"""All-TNN's smoothness loss: neighbouring units on a sheet should have similar incoming weights.

Every unit's incoming weights (kernel, and bias when ``bias=True``) form a vector; with ``s`` the mean cosine
similarity between the vectors of sheet neighbours — the right and lower neighbour of every cell (4-neighbourhood,
each pair once), or also the two diagonals (``neighbours=8``), each direction averaged on its own and the
directions averaged, as All-TNN — the loss is ``(1 − s) / 2`` ∈ [0, 1]. ``circular=True`` wraps the sheet (a
torus). TopoNets' TopoLoss (:mod:`.smoothness`) is its relative: ``1 − cos(w, blur(w))`` compares each unit
with a blurred neighbourhood instead of each neighbour; both are 0 on a constant sheet, and their gradients push
a unit's weights toward its neighbours' direction (scale-free: cosine).
"""
from __future__ import annotations

from ..layout import positions_of

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["unit_vectors", "cosine_smoothness", "CosineSmoothness"]


def unit_vectors(module: nn.Module, bias: bool = True) -> torch.Tensor:
    """Incoming weights of every unit of ``module`` as rows ``(units, K)``: a locally connected layer's per-unit
    kernels (channel-major), a conv's channel kernels, a linear layer's rows; the bias appended when asked."""
    if hasattr(module, "unit_kernels"):
        v = module.unit_kernels()
        return v if bias or module.bias is None else v[:, :-1]
    w = getattr(module, "weight", None)
    if not isinstance(w, torch.Tensor) or w.dim() < 2:
        raise ValueError(f"{type(module).__name__} has no weight whose rows are units (Linear, Conv, LocallyConnected2d)")
    v = w.reshape(w.shape[0], -1)
    b = getattr(module, "bias", None)
    return torch.cat([v, b.reshape(-1, 1)], 1) if bias and isinstance(b, torch.Tensor) else v


def _grid_of(coords: torch.Tensor) -> torch.Tensor:
    """``(rows, cols)`` unit index of each cell of a full grid of integer positions (one unit per cell)."""
    c = torch.round(coords).long()
    if not torch.allclose(coords.double(), c.double(), atol=1e-6) or c.shape[1] != 2:
        raise ValueError("All-TNN's smoothness needs units on a 2D grid of integer cells")
    c = c - c.min(0).values
    h, w = int(c[:, 1].max()) + 1, int(c[:, 0].max()) + 1
    if h * w != len(c):
        raise ValueError(f"the units' positions do not fill a {h}×{w} grid one unit per cell ({len(c)} units)")
    grid = torch.full((h, w), -1, dtype=torch.long)
    grid[c[:, 1], c[:, 0]] = torch.arange(len(c))
    if (grid < 0).any():
        raise ValueError("two units share a cell of the sheet")
    return grid


def cosine_smoothness(vectors: torch.Tensor, grid: torch.Tensor, neighbours: int = 4, circular: bool = False) -> torch.Tensor:
    """``(1 − mean neighbour cosine similarity) / 2`` of unit ``vectors (n, K)`` placed by ``grid (rows, cols)``."""
    if neighbours not in (4, 8):
        raise ValueError(f"neighbours must be 4 or 8, got {neighbours}")
    x = F.normalize(vectors, dim=1, eps=1e-12)[grid]                # (rows, cols, K)
    pairs = [(1, 0), (0, 1)] + ([(1, 1), (1, -1)] if neighbours == 8 else [])
    sims = []
    for dy, dx in pairs:
        b = torch.roll(x, shifts=(-dy, -dx), dims=(0, 1))           # b[i, j] = x[i + dy, j + dx] (wrapped)
        s = (x * b).sum(-1)
        if not circular:  # drop the pairs that wrapped around an edge
            rows = slice(0, s.shape[0] - dy) if dy > 0 else slice(None)
            cols = slice(0, s.shape[1] - dx) if dx > 0 else (slice(-dx, None) if dx < 0 else slice(None))
            s = s[rows, cols]
        if s.numel() == 0:
            raise ValueError(f"the {grid.shape[0]}×{grid.shape[1]} sheet has no neighbour pairs in direction {(dy, dx)}")
        sims.append(s.mean())
    return (1 - torch.stack(sims).mean()) / 2


class CosineSmoothness:
    """All-TNN's loss over several layers: ``Σ_l alpha_l · cosine_smoothness(layer l)``.

    Args:
        layers: modules (LocallyConnected2d, Conv, Linear) or ``(module, alpha)`` pairs. A module's sheet is its
            ``topo_positions`` buffer when it carries one (an integer grid), else the most square grid of its units.
        alpha: the weight of modules given alone.
        neighbours: 4 (All-TNN's default) or 8; ``circular``: wrap the sheet; ``bias``: include the bias.
    """

    def __init__(self, layers: Sequence, alpha: float = 1.0, neighbours: int = 4, circular: bool = False,
                 bias: bool = True):
        from .smoothness import sheet_shape
        if neighbours not in (4, 8):
            raise ValueError(f"neighbours must be 4 or 8, got {neighbours}")
        self.items = []
        for item in layers:
            mod, a = (item, alpha) if isinstance(item, nn.Module) else item
            if not float(a) >= 0:
                raise ValueError(f"alpha must be non-negative, got {a}")
            n = unit_vectors(mod, bias).shape[0]
            pos = positions_of(mod)
            if pos is not None:
                if len(pos) != n:
                    raise ValueError(f"{type(mod).__name__} has {len(pos)} positions for {n} units")
                grid = _grid_of(pos.detach().cpu())
            else:
                h, w = sheet_shape(n)
                grid = torch.arange(n).view(h, w)
            self.items.append((mod, float(a), grid))
        if not self.items:
            raise ValueError("no layers given")
        self.neighbours, self.circular, self.bias = neighbours, circular, bias
        self.last: list[float] = []

    def __call__(self) -> torch.Tensor:
        vals = [cosine_smoothness(unit_vectors(m, self.bias), g.to(next(m.parameters()).device), self.neighbours,
                                  self.circular) for m, _, g in self.items]
        self.last = [float(v.detach()) for v in vals]
        return sum(a * v for (_, a, _), v in zip(self.items, vals))
