"""The tdann recipe (ResNet-18 shape, retinotopic sheets on four stages): its data, its augmentation, and one short
run whose maps must differ from the control's the way TDANN's do."""
import json

import numpy as np
import pytest
import torch

from topotorch.experiments.tdann_resnet import SHEETS, TDANNResNetConfig, augment, image_split
from topotorch.recipes import run_recipe


def test_split_is_disjoint_balanced_and_seeded():
    cfg = TDANNResNetConfig(per_category=20, size=32)
    xtr, ytr, xte, yte, xall, yall, names = image_split(cfg)
    assert names == ["face", "non-face", "character", "scene"]
    assert len(xtr) + len(xte) == len(xall) == 80 and xall.shape[1:] == (1, 32, 32)
    assert torch.bincount(yte).tolist() == [4, 4, 4, 4] and torch.bincount(ytr).tolist() == [16] * 4
    rows = {tuple(r) for r in xall.flatten(1)[:, ::97].tolist()}
    assert len(rows) == 80  # no image twice
    tr = {tuple(r) for r in xtr.flatten(1)[:, ::97].tolist()}
    assert not tr & {tuple(r) for r in xte.flatten(1)[:, ::97].tolist()}
    again = image_split(cfg)
    assert torch.equal(again[0], xtr) and torch.equal(again[3], yte)


def test_augment_is_a_crop_or_flip_of_the_image_and_depends_only_on_seed_and_step():
    x = torch.rand(6, 1, 32, 32)
    a, b = augment(x, 5, 0), augment(x, 5, 0)
    assert torch.equal(a, b) and a.shape == x.shape and not torch.equal(augment(x, 6, 0), a)
    pad = torch.nn.functional.pad(x, (8, 8, 8, 8), mode="reflect")
    for i in range(6):  # every output is some 32×32 window of the padded image, flipped or not
        found = any(torch.equal(a[i], w) or torch.equal(a[i], w.flip(2))
                    for oy in range(17) for ox in range(17) for w in [pad[i, :, oy:oy + 32, ox:ox + 32]])
        assert found


@pytest.mark.slow
def test_tdann_run_has_maps_and_its_reproduce_row(tmp_path):
    m = run_recipe("tdann", tmp_path, {"steps": 150, "per_category": 40, "permutations": 19, "preopt_windows": 10,
                                       "preopt_swaps": 20}, progress=False)
    assert m["sheet_units"] == {"layer1.1": 4096, "layer2.1": 2048, "layer3.1": 1024, "layer4.1": 512}
    for arm in ("topo", "control"):
        for k in ("orientation_smoothness", "pinwheel_density", "face_morans_i", "face_patches", "accuracy"):
            assert np.isfinite(m[f"{k}_{arm}"]), (k, arm)
        assert set(m[f"per_sheet_{arm}"]) == set(SHEETS)
    # what TDANN reports, at this small scale: smoother orientation maps early, clustered face units late
    assert m["orientation_smoothness_topo"] > m["orientation_smoothness_control"] + 0.1
    assert m["face_morans_i_topo"] > m["face_morans_i_control"] + 0.2
    assert m["preopt_topo"] == m["preopt_control"]  # both arms start from the same positions
    for f in ("orientation_maps.png", "face_maps.png", "topo.safetensors", "control.safetensors", "probe.json"):
        assert (tmp_path / f).stat().st_size > 0
    from topotorch.registry import CLAIMS, load
    load()
    row = next(c for c in CLAIMS if c.recipe == "tdann")
    assert row.holds(m) and "face-map Moran's I" in row.measured(m)
    assert {"face_morans_i topo", "pinwheel_density control"} <= set(row.figures(m))
    # the run directory opens in the probe (positions read back from the saved state)
    from topotorch.probe.load import load_subjects
    subs = load_subjects(str(tmp_path))
    assert [s.name for s in subs] == ["topo", "control"] and [s.name for s in subs[0].sheets] == list(SHEETS)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["face_morans_i_topo"] == pytest.approx(m["face_morans_i_topo"])
