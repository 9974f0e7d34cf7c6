"""A locally connected layer (All-TNN's building block): a convolution without weight sharing — every output
location has its own kernel — whose units lie on one 2D sheet, channels tiled as hypercolumns.

PyTorch has no such layer and Keras 3 dropped its ``LocallyConnected2D``; here it is an unfold and one batched
product over locations.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

from .layout import set_positions

__all__ = ["LocallyConnected2d", "hypercolumn_positions"]


def hypercolumn_positions(channels: int, height: int, width: int) -> torch.Tensor:
    """All-TNN's sheet: the ``channels`` units of every location tiled as an ``r × c`` hypercolumn (r the largest
    divisor of ``channels`` ≤ its square root), locations side by side: unit ``(o, y, x)`` (channel-major, as
    ``output.flatten(1)``) sits on cell ``(x·c + o mod c, y·r + o div c)``. ``(channels·height·width, 2)`` float,
    one unit per cell of a ``(height·r) × (width·c)`` grid."""
    r = math.isqrt(channels)
    while channels % r:
        r -= 1
    c = channels // r
    o, y, x = torch.meshgrid(torch.arange(channels), torch.arange(height), torch.arange(width), indexing="ij")
    return torch.stack([x * c + o % c, y * r + o // c], -1).reshape(-1, 2).float()


class LocallyConnected2d(nn.Module):
    """``y[n, o, i, j] = Σ_{c, u, v} W[i·W_out + j, o, (c, u, v)] · x[n, c, i·s + u − p, j·s + v − p] + b[o, i, j]``.

    Args:
        in_channels, out_channels: channels of the input and output maps.
        input_size: ``(H, W)`` of the input map (fixed: every location has its own kernel).
        kernel_size, stride, padding: as ``nn.Conv2d`` (zero padding).
        bias: one bias per output unit (channel × location), as All-TNN.

    Shapes: input ``(N, in_channels, H, W)``, output ``(N, out_channels, H_out, W_out)``; ``weight`` is
    ``(H_out·W_out, out_channels, in_channels·k_h·k_w)``. The units carry All-TNN's hypercolumn positions in the
    ``topo_positions`` buffer (channel-major, like every sheet of ``units="locations"``)."""

    def __init__(self, in_channels: int, out_channels: int, input_size, kernel_size, stride=1, padding=0,
                 bias: bool = True):
        super().__init__()
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.input_size, self.kernel_size = _pair(input_size), _pair(kernel_size)
        self.stride, self.padding = _pair(stride), _pair(padding)
        if min(self.in_channels, self.out_channels, *self.input_size, *self.kernel_size, *self.stride) < 1 \
                or min(self.padding) < 0:
            raise ValueError(f"channels, input size, kernel size and stride must be ≥ 1 and padding ≥ 0; got "
                             f"{in_channels}, {out_channels}, {input_size}, {kernel_size}, {stride}, {padding}")
        (H, W), (kh, kw), (sh, sw), (ph, pw) = self.input_size, self.kernel_size, self.stride, self.padding
        if kh > H + 2 * ph or kw > W + 2 * pw:
            raise ValueError(f"kernel {kh}×{kw} is larger than the padded input {H + 2 * ph}×{W + 2 * pw}")
        self.output_size = ((H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1)
        L, K = self.output_size[0] * self.output_size[1], self.in_channels * kh * kw
        self.weight = nn.Parameter(torch.empty(L, self.out_channels, K))
        self.bias = nn.Parameter(torch.empty(self.out_channels, *self.output_size)) if bias else None
        bound = 1 / math.sqrt(K)  # nn.Conv2d's default initialisation, per kernel
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)
        set_positions(self, hypercolumn_positions(self.out_channels, *self.output_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels or tuple(x.shape[-2:]) != self.input_size:
            raise ValueError(f"LocallyConnected2d expects input (N, {self.in_channels}, {self.input_size[0]}, "
                             f"{self.input_size[1]}), got {tuple(x.shape)}: its kernels are tied to locations")
        patches = F.unfold(x, self.kernel_size, padding=self.padding, stride=self.stride)  # (N, K, L)
        # one product per location, all in one bmm; contiguous (L, N, K) patches take BLAS's fast path (1.5× here)
        y = torch.bmm(patches.permute(2, 0, 1).contiguous(), self.weight.transpose(1, 2))  # (L, N, O)
        y = y.permute(1, 2, 0).reshape(x.shape[0], self.out_channels, *self.output_size)
        return y + self.bias if self.bias is not None else y

    def unit_kernels(self) -> torch.Tensor:
        """Every unit's incoming weights (and bias) as a row, ``(out_channels·H_out·W_out, K[+1])``, channel-major."""
        w = self.weight.permute(1, 0, 2).reshape(-1, self.weight.shape[-1])  # (O·L, K): unit o·L + l
        return torch.cat([w, self.bias.reshape(-1, 1)], 1) if self.bias is not None else w

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, input_size={self.input_size}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None}")
