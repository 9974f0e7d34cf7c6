"""TopoNets' TopoLoss as a recipe: topographic maps on the hidden sheet where the control has none."""
import numpy as np
import pytest
import torch

from topotorch import metrics as M
from topotorch.costs import weight_smoothness
from topotorch.data import digits
from topotorch.io import load_model
from topotorch.recipes import run_recipe


def test_topoloss_arm_is_topographic_where_the_control_is_not(tmp_path):
    m = run_recipe("toponets-mlp", tmp_path, {"epochs": 15}, progress=False)
    assert m["sheet"] == [16, 16]
    assert m["morans_i_topo"] >= max(m["morans_i_null_topo"], m["morans_i_control"]) + 0.2
    assert abs(m["accuracy_topo"] - m["accuracy_control"]) <= 0.03
    assert m["weight_smoothness_topo"] > m["weight_smoothness_control"]
    # the reported figures recomputed from the saved topographic model
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
    load_model(model, tmp_path / "topo.safetensors")
    assert m["weight_smoothness_topo"] == pytest.approx(1 - float(weight_smoothness(model[0].weight.detach(), 2.0)), abs=1e-6)
    data = digits(0, flat=True)
    with torch.no_grad():
        r = torch.relu(model[0](data.x_test)).numpy()
    tuning = np.stack([r[data.y_test.numpy() == c].mean(0) for c in range(10)], 1)
    yy, xx = np.divmod(np.arange(256), 16)              # row-major 16 × 16 sheet, TopoLoss's order
    coords = np.stack([xx, yy], 1).astype(float)
    live = [c for c in range(10) if tuning[:, c].std() > 0]
    assert m["morans_i_topo"] == pytest.approx(np.mean([M.morans_i(tuning[:, c], coords) for c in live]), abs=1e-9)
    assert (tmp_path / "maps.png").stat().st_size > 0


def test_toponets_config_errors():
    from topotorch.experiments.toponets import TopoNetsConfig
    with pytest.raises(ValueError, match="sheet"):
        TopoNetsConfig(hidden=7).validate()
    with pytest.raises(ValueError, match="tau"):
        TopoNetsConfig(tau=-1).validate()
