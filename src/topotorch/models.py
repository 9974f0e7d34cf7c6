"""Models that read top to bottom. Spatial behaviour is attached with :func:`topotorch.embed`."""
from __future__ import annotations

from typing import Sequence

from torch import nn

__all__ = ["MLP", "ACTIVATIONS"]

ACTIVATIONS = {"silu": nn.SiLU, "relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


class MLP(nn.Sequential):
    """BIMT's BioMLP as a plain ``nn.Sequential``: Linear, act, Linear, act, …, Linear.

    Args:
        shape: units per neuron layer, e.g. ``[4, 20, 20, 2]`` (input first).
        activation: a name in :data:`ACTIVATIONS` (BIMT uses SiLU).
    """

    def __init__(self, shape: Sequence[int], activation: str = "silu"):
        shape = [int(s) for s in shape]
        if len(shape) < 2 or any(s < 1 for s in shape):
            raise ValueError(f"MLP shape needs ≥ 2 positive sizes, got {shape}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose from {sorted(ACTIVATIONS)}")
        mods: list[nn.Module] = []
        for i in range(len(shape) - 1):
            mods.append(nn.Linear(shape[i], shape[i + 1]))
            if i < len(shape) - 2:
                mods.append(ACTIVATIONS[activation]())
        super().__init__(*mods)
        self.shape = shape
