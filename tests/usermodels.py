"""A user's own model for the core tests: a non-Sequential MLP, its hand-declared neuron graph, and helpers."""
import torch
import torch.nn.functional as F
from torch import nn

from topotorch import layout as L
from topotorch.graph import NeuronGraph, Port


class MyMLP(nn.Module):
    """A user's non-Sequential MLP."""

    def __init__(self, perm: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2, self.fc3 = nn.Linear(4, 12), nn.Linear(12, 10), nn.Linear(10, 3)
        if perm:
            self.register_buffer("in_perm", torch.arange(4))
            self.register_buffer("out_perm", torch.arange(3))

    def forward(self, x):
        if hasattr(self, "in_perm"):
            x = x[..., self.in_perm]
        y = self.fc3(F.silu(self.fc2(F.silu(self.fc1(x)))))
        return y[..., torch.argsort(self.out_perm)] if hasattr(self, "out_perm") else y


def graph_of(m: MyMLP, perm: bool = False) -> NeuronGraph:
    g = NeuronGraph()
    a = g.add_layer("in", L.line(4), [Port(m, "in_perm", perm=True)] if perm else [])
    b = g.add_layer("h1", L.line(12))
    c = g.add_layer("h2", L.line(10))
    d = g.add_layer("out", L.line(3), [Port(m, "out_perm", perm=True)] if perm else [])
    g.connect(m.fc1, a, b)
    g.connect(m.fc2, b, c)
    g.connect(m.fc3, c, d)
    return g


def same(a, b) -> bool:
    """Equal to float32 rounding: within 1e-6 of the outputs' scale."""
    return bool((a - b).abs().max() <= 1e-6 * max(1.0, b.abs().max().item()))


def scramble(m: nn.Module) -> None:
    """Weights that make relocation move units: strong long connections."""
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn_like(p) * torch.rand(p.shape[0], 1) * 3)
