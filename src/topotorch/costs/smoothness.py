"""Weight smoothness compatible with TopoNets' TopoLoss (``pip install topoloss``).

The weights of a layer's output units are laid out as an ``H × W`` sheet (H = the largest divisor of the
number of units not above its square root), each unit carrying its flattened incoming weights; the sheet is
blurred by bilinear down-sampling by ``factor`` and up-sampling back, and the loss is
``1 − mean cosine similarity`` between the sheet and its blur. Same value and gradient as ``topoloss``.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["sheet_shape", "weight_smoothness", "WeightSmoothness"]


def sheet_shape(n: int) -> tuple[int, int]:
    """``(H, W)`` with ``H·W = n``, H the largest divisor of n with H ≤ √n (topoloss's cortical sheet)."""
    if n < 1:
        raise ValueError(f"a sheet needs at least one unit, got {n}")
    h = math.isqrt(n)
    while n % h:
        h -= 1
    return h, n // h


def weight_smoothness(weight: torch.Tensor, factor_h: float, factor_w: float | None = None,
                      interpolation: str = "bilinear") -> torch.Tensor:
    """TopoLoss of one weight ``(n_out, ...)`` (Linear or Conv): 1 − mean cos(sheet, blurred sheet)."""
    factor_w = factor_h if factor_w is None else factor_w
    h, w = sheet_shape(weight.shape[0])
    if not (0 < factor_h <= h and 0 < factor_w <= w):
        raise ValueError(f"blur factors ({factor_h}, {factor_w}) must be positive and at most the sheet size ({h}, {w})")
    grid = weight.reshape(h, w, -1).permute(2, 0, 1).unsqueeze(0)             # (1, e, h, w)
    down = F.interpolate(grid, scale_factor=(1 / factor_h, 1 / factor_w), mode=interpolation)
    up = F.interpolate(down, size=(h, w), mode=interpolation)
    a = grid.squeeze(0).flatten(1).T                                           # (h·w, e)
    b = up.squeeze(0).flatten(1).T
    return 1 - F.cosine_similarity(a, b, dim=-1).mean()


class WeightSmoothness:
    """TopoLoss over several layers: the mean of ``scale · loss`` (as ``TopoLoss.compute(model)``).

    Args:
        layers: modules with a ``weight`` (Linear, Conv2d), or ``(module, factor_h, factor_w, scale)`` tuples.
        factor: the blur factor for modules given alone.
    """

    def __init__(self, layers: Sequence, factor: float = 2.0):
        self.items = []
        for item in layers:
            if isinstance(item, nn.Module):
                item = (item, factor, factor, 1.0)
            mod, fh, fw, scale = item
            if not isinstance(getattr(mod, "weight", None), torch.Tensor):
                raise ValueError(f"{type(mod).__name__} has no weight tensor")
            sheet_h, sheet_w = sheet_shape(mod.weight.shape[0])
            if fh > sheet_h or fw > sheet_w:
                raise ValueError(f"blur factor ({fh}, {fw}) exceeds the {sheet_h}×{sheet_w} sheet of {type(mod).__name__}")
            self.items.append((mod, float(fh), float(fw), float(scale)))
        if not self.items:
            raise ValueError("no layers given")

    def __call__(self) -> torch.Tensor:
        losses = [s * weight_smoothness(m.weight, fh, fw) for m, fh, fw, s in self.items]
        return sum(losses) / len(losses)
