"""The library's shape: no library module imports experiments/, a small top level; --set parsing; fit's gradient
accumulation and NaN stop."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import topotorch as tt
from topotorch import layout as L
from topotorch.config import parse_sets
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


def _graph(m: MyMLP, perm: bool = False) -> NeuronGraph:
    g = NeuronGraph()
    a = g.add_layer("in", L.line(4), [Port(m, "in_perm", perm=True)] if perm else [])
    b = g.add_layer("h1", L.line(12))
    c = g.add_layer("h2", L.line(10))
    d = g.add_layer("out", L.line(3), [Port(m, "out_perm", perm=True)] if perm else [])
    g.connect(m.fc1, a, b)
    g.connect(m.fc2, b, c)
    g.connect(m.fc3, c, d)
    return g


def _same(a, b) -> bool:
    """Equal to float32 rounding: within 1e-6 of the outputs' scale."""
    return bool((a - b).abs().max() <= 1e-6 * max(1.0, b.abs().max().item()))


def _scramble(m: nn.Module) -> None:
    """Weights that make relocation move units: strong long connections."""
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn_like(p) * torch.rand(p.shape[0], 1) * 3)


def test_set_reads_exponent_floats():
    assert parse_sets(["lam=1e-3", "x=2.5e+4", "y=[1e-3, 2]", "z=abc"]) == {"lam": 1e-3, "x": 2.5e4, "y": [1e-3, 2],
                                                                            "z": "abc"}


def test_library_modules_never_import_experiments():
    import pathlib
    import re
    root = pathlib.Path(tt.__file__).parent
    # the recipe loader alone imports the recipe modules; cli.py, report.py and sweep.py reach them through it
    lib = [p for p in root.rglob("*.py") if "experiments" not in p.parts and p.name != "registry.py"]
    assert len(lib) >= 15
    for p in lib:
        assert not re.search(r"^\s*(from|import)\s+(\.+|topotorch\.)experiments", p.read_text(), re.M), p
    assert len(tt.__all__) <= 16  # a small top level: embed/attach, the costs, relocate, probe, a few models


def test_fit_accumulates_gradients_like_one_big_batch_and_stops_on_nan(tmp_path):
    from topotorch.train import TrainingDiverged, fit
    x, y = torch.randn(8, 4), torch.randn(8, 2)
    models = []
    for accum in (1, 4):
        torch.manual_seed(0)
        m = nn.Linear(4, 2)
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        chunk = 8 // accum
        fit(m, opt, lambda step, micro: F.mse_loss(m(x[micro * chunk:(micro + 1) * chunk]), y[micro * chunk:(micro + 1) * chunk]),
            3, grad_accum=accum, progress=False)
        models.append(m)
    assert torch.allclose(models[0].weight, models[1].weight, atol=1e-6)
    m = nn.Linear(4, 2)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    with pytest.raises(TrainingDiverged, match="step 2"):
        fit(m, opt, lambda step, micro: F.mse_loss(m(x), y) * (float("nan") if step == 2 else 1.0), 5,
            out=tmp_path, checkpoint_every=1, progress=False)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir())[-1] == "step-00000002"
