import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import topotorch as tt
from topotorch.io import load_model, save_model
from topotorch.gpt import GPT, GPTConfig
from topotorch.topography import retinotopic

ROOT = Path(__file__).resolve().parents[1]


def _cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 9, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(9 * 6 * 6, 16), nn.ReLU(), nn.Linear(16, 3))


def test_linear_and_conv_channels_and_locations_give_finite_losses_and_gradients():
    x = torch.randn(12, 1, 6, 6)
    for units, names, n in (("channels", ["0", "2", "5"], [8, 9, 16]), ("locations", ["0", "2"], [8 * 36, 9 * 36])):
        m = _cnn()
        topo = tt.attach(m, names, units=units, example_input=x[:2], alpha=1.0, smoothness=0.5 if units == "channels" else 0)
        assert [topo.positions(k).n for k in names] == n
        loss = m(x).sum() * 0 + topo()
        loss.backward()
        assert torch.isfinite(loss) and m[0].weight.grad.abs().sum() > 0
        assert set(topo.last) == set(names)


def test_retinotopic_positions_follow_locations():
    lay = retinotopic(4, 3, 5, seed=1)
    c = lay.unit_coords.numpy().reshape(4, 3, 5, 2)
    s = 2.0  # √C
    assert np.all(np.abs(c[..., 0] - (np.arange(5) + 0.5) * s) < s)  # each unit near its location's anchor
    assert np.all(np.abs(c[..., 1] - ((np.arange(3) + 0.5) * s)[:, None]) < s)


def test_transformer_projections_and_attention_outputs():
    torch.manual_seed(0)
    g = GPT(GPTConfig(block_size=8, vocab_size=20, n_layer=2, n_head=2, n_embd=16))
    topo = tt.attach(g, ["blocks.0.attn", "blocks.1.mlp", "blocks.0.mlp.c_fc"], example_input=torch.zeros(1, 8, dtype=torch.long))
    idx = torch.randint(0, 20, (4, 8))
    loss = g(idx, idx)[1] + topo()
    loss.backward()
    assert topo.positions("blocks.0.mlp.c_fc").n == 64 and torch.isfinite(loss)


def test_save_and_load_restore_positions(tmp_path):
    x = torch.randn(16, 1, 6, 6)
    m = _cnn()
    topo = tt.attach(m, ["2"], units="locations", example_input=x[:2])
    info = topo.optimize_positions(x, windows=10, swaps=30)
    assert info["2"]["loss_after"] <= info["2"]["loss_before"]
    save_model(m, tmp_path / "m.safetensors")
    m2 = _cnn()
    topo2 = tt.attach(m2, ["2"], units="locations", example_input=x[:2])
    load_model(m2, tmp_path / "m.safetensors")
    assert torch.equal(m2[2].topo_positions, m[2].topo_positions)
    assert torch.allclose(topo2.positions("2").coords, topo.positions("2").coords)
    assert torch.equal(topo2.correlation.sheets[0].layout.coords, topo.positions("2").coords)  # refreshed on load


def test_attach_errors():
    m = _cnn()
    with pytest.raises(ValueError, match="no submodule"):
        tt.attach(m, ["nope"])
    with pytest.raises(ValueError, match="example_input"):
        tt.attach(m, ["0"], units="locations")
    with pytest.raises(ValueError, match="units"):
        tt.attach(m, ["0"], units="pixels")
    tt.attach(m, ["0"])
    with pytest.raises(ValueError, match="already attached"):
        tt.attach(m, ["0"])
    with pytest.raises(ValueError, match="has 9 units, the module has 16"):
        tt.attach(_cnn(), {"5": tt.layout.square(9)})


def test_example_makes_a_cnn_topographic_in_at_most_ten_lines(tmp_path):
    src = (ROOT / "examples" / "topographic_cnn.py").read_text()
    added = [l for l in src.splitlines() if "# topotorch" in l]
    assert 0 < len(added) <= 10
    spec = importlib.util.spec_from_file_location("example", ROOT / "examples" / "topographic_cnn.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    acc, same = mod.main(epochs=2, out=str(tmp_path / "cnn.safetensors"))
    assert same and acc > 0.5
