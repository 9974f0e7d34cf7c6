"""Vision probes on a model that is not ours: a ResNet-18-shaped CNN with retinotopic sheets attached, probed from
the command line as ``file.py:function`` (the ``tdann-cnn`` recipe's own analyses are tested in test_tdann.py)."""
import json

import numpy as np
import pytest
import torch

import topotorch as tt
from topotorch.cli import main
from topotorch.models import ResNet18
from topotorch.probe import find_sheets
from topotorch.probe import vision as V

BUILD = '''
import torch, topotorch as tt
from topotorch.models import ResNet18

def build():
    torch.manual_seed(0)
    model = ResNet18(classes=10, width=8)
    model.train()
    topo = tt.attach(model, ["layer1.1", "layer4.1"], units="locations", alpha=0.0,
                     example_input=torch.zeros(2, 3, 64, 64))
    return model, topo, {"input_shape": (3, 64, 64)}
'''


def test_resnet18_shape_with_retinotopic_sheets_gives_orientation_maps_and_a_finite_pinwheel_density(tmp_path, capsys):
    (tmp_path / "mynet.py").write_text(BUILD)
    out = tmp_path / "probe"
    assert main(["probe", f"{tmp_path / 'mynet.py'}:build", "--gratings", "--categories", "lfw", "--per-category", "40",
                 "--permutations", "49", "--out", str(out)]) == 0
    doc = json.loads((out / "probe.json").read_text())
    assert doc["sheets"] == ["layer1.1", "layer4.1"]
    g = doc["results"]["model"]["gratings"]["sheets"]["layer1.1"]
    assert len(g["preferred"]) == 8 * 16 * 16  # every channel × location of the 16×16 map
    assert np.isfinite(g["pinwheel_density"]) and g["pinwheels"] > 0 and 0 < g["osi"] <= 1
    cats = doc["results"]["model"]["categories"]
    assert cats["names"] == ["face", "non-face"] and cats["n_images"] == 80
    for key in ("morans_i", "morans_i_null", "p_value", "patches"):
        assert key in cats["by_category"]["face"]
    for f in ("orientation_maps.png", "category_face.png", "correlation_vs_distance.png", "probe.html"):
        assert (out / f).stat().st_size > 0, f


def test_probing_restores_the_mode_and_changes_nothing():
    torch.manual_seed(0)
    model = ResNet18(classes=10, width=4)
    topo = tt.attach(model, ["layer1.1", "layer2.1.conv2"], units="locations", alpha=0.0,
                     example_input=torch.zeros(2, 3, 32, 32))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sheets = find_sheets(model, topo)
    assert [s.units for s in sheets] == ["locations", "locations"]
    resp = V.sheet_responses(model, sheets, V.gratings(32, 3).images[:10])
    assert model.training and resp["layer1.1"].shape == (10, 4 * 8 * 8)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # batch-norm statistics untouched too
    # the positions a model carries are found again without the Topography (a block's map needs a forward pass)
    again = find_sheets(model, example_input=torch.zeros(1, 3, 32, 32))
    assert [(s.name, s.units, s.layout.n) for s in again] == [(s.name, s.units, s.layout.n) for s in sheets]
    with pytest.raises(ValueError, match="example_input"):
        find_sheets(model)
    with pytest.raises(ValueError, match="at least two categories"):
        V.category_images((torch.rand(3, 1, 8, 8), np.array([0, 0, 0]), ["a"]), 8, 1)


def test_image_set_errors_are_named(tmp_path, capsys):
    (tmp_path / "mynet.py").write_text(BUILD)
    (tmp_path / "cats" / "only").mkdir(parents=True)
    from PIL import Image
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "cats" / "only" / "a.png")
    for src, msg in ((str(tmp_path / "cats"), "at least two sub-folders"), (str(tmp_path / "none"), "no such image folder")):
        assert main(["probe", f"{tmp_path / 'mynet.py'}:build", "--categories", src, "--out", str(tmp_path / "o")]) == 2
        assert msg in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
