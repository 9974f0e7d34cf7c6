"""All-TNN's shape: locally connected layers (or convolutions of the same kernel size) with ReLU and pooling."""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ..layout import Layout
from ..locally_connected import LocallyConnected2d, hypercolumn_positions

__all__ = ["TNN"]


class TNN(nn.Module):
    """All-TNN's shape: ``len(channels)`` layers, each locally connected (``local=True``) or a convolution with the
    same kernel size, then ReLU and 2×2 max-pooling; a linear read-out. Layer ``k``'s units are its output map,
    on the sheet :func:`~topotorch.locally_connected.hypercolumn_positions` lays out (for the CNN too)."""

    def __init__(self, in_channels: int, size: int, channels, kernels, classes: int, local: bool = True):
        super().__init__()
        self.names = []
        c, s = in_channels, size
        for k, (co, kk) in enumerate(zip(channels, kernels)):
            layer = (LocallyConnected2d(c, co, (s, s), kk, padding=kk // 2) if local
                     else nn.Conv2d(c, co, kk, padding=kk // 2))
            setattr(self, f"layer{k + 1}", layer)
            self.names.append(f"layer{k + 1}")
            c, s = co, s // 2
        self.fc = nn.Linear(c * s * s, classes)
        self.map_sizes = [size // 2 ** k for k in range(len(channels))]

    def forward(self, x):
        for name in self.names:
            x = F.max_pool2d(F.relu(getattr(self, name)(x)), 2)
        return self.fc(x.flatten(1))

    def sheets(self) -> list:
        """Every layer's units (channel × location) on its hypercolumn sheet (:class:`topotorch.probe.Sheet`)."""
        from ..probe.sheets import Sheet  # the probe reads models; a model needs it only here
        out = []
        for name, s in zip(self.names, self.map_sizes):
            mod = getattr(self, name)
            pos = hypercolumn_positions(mod.out_channels, s, s)
            out.append(Sheet(name, mod, Layout(pos.double(), kind="grid"), "locations"))
        return out
