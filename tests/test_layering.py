"""The library's shape: no library module imports experiments/, a small top level; --set parsing; fit's gradient
accumulation and NaN stop."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import topotorch as tt
from topotorch.config import parse_sets


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
