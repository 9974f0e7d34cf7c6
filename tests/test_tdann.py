import json

import numpy as np
import pytest

from topotorch.cli import main


@pytest.mark.slow
def test_tdann_cnn_is_smoother_than_control_at_equal_accuracy(tdann_run):
    tmp_path, m = tdann_run
    assert abs(m["accuracy_topo"] - m["accuracy_control"]) <= 0.03
    assert m["smoothness_topo"] >= m["smoothness_control"] + 0.15
    assert m["smoothness_per_layer_topo"]["conv2"] > 0.4
    for arm in ("topo", "control"):
        cd = m[f"corr_vs_distance_{arm}"]["conv2"]
        assert len(cd["distance"]) == len(cd["correlation"]) > 3
    for f in ("corr_distance.png", "maps.png", "topo.safetensors", "control.safetensors"):
        assert (tmp_path / f).stat().st_size > 0
    from topotorch.experiments.tdann import CLAIM  # the reproduce row on this run: its figures and verdict
    assert CLAIM.holds(m) and "category-map Moran's I" in CLAIM.measured(m)
    assert set(CLAIM.figures(m)) >= {"category Moran's I topo", "orientation smoothness control"}


@pytest.mark.slow
def test_mnist_sized_sheets_with_a_stride_two_stem_and_the_data_row():
    import pytest
    import torch
    from conftest import SHARED
    from topotorch.experiments.tdann import TopoCNN
    from topotorch.hooks import record
    m = TopoCNN(1, 28, (16, 32), 10, stride=2)
    with record({"conv1": m.conv1, "conv2": m.conv2}, "locations") as got:
        out = m(torch.zeros(2, 1, 28, 28))
    assert out.shape == (2, 10)
    assert got["conv1"][0].shape == (2, 16 * 14 * 14) and got["conv2"][0].shape == (2, 32 * 7 * 7)
    assert TopoCNN(1, 8, (16, 32), 10).fc.in_features == 32 * 4 * 4      # digits: unchanged
    if not (SHARED / "data" / "mnist-t10k").is_dir():
        pytest.skip("needs ../shared/data")
    from topotorch.report import data_claims
    rows = {c.run_as: c for c in data_claims(SHARED / "data")}
    assert rows["tdann-cnn-mnist"].overrides["stride"] == 2 and rows["tdann-cnn-mnist"].data.startswith("MNIST")


def test_a_second_arm_reuses_the_swap_search_only_from_the_same_start():
    import torch

    from topotorch import attach
    from topotorch.experiments.common import optimize_once
    from topotorch.experiments.tdann import TopoCNN
    x = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(0))

    def arm(memo, seed):
        torch.manual_seed(seed)
        m = TopoCNN(1, 8, (4, 8), 10)
        topo = attach(m, ["conv1", "conv2"], units="locations", example_input=x[:2], alpha=0.0, seed=0)
        calls = []
        info = optimize_once(memo, topo, lambda: calls.append(1) or topo.optimize_positions(x, windows=5, swaps=5))
        return {n: topo.positions(n).coords for n in ("conv1", "conv2")}, info, len(calls)

    fresh, info, n = arm({}, 0)
    memo = {}
    arm(memo, 0)
    same, info2, n2 = arm(memo, 0)
    drop = lambda i: {k: {kk: vv for kk, vv in v.items() if kk != "seconds"} for k, v in i.items()}
    assert (n, n2) == (1, 0) and drop(info2) == drop(info) and info["conv1"]["accepted"] > 0
    assert all(torch.equal(fresh[k], same[k]) for k in fresh)   # the copied positions are the search's own
    other, _, n3 = arm(memo, 1)                                  # other initial weights: searched again
    assert n3 == 1 and all(torch.equal(other[k], arm({}, 1)[0][k]) for k in other)


# (the tdann_run fixture's tests share this file, so that a parallel run trains it once)
@pytest.mark.slow
def test_tdann_cnn_reports_orientation_and_category_maps_for_both_arms(tdann_run, tmp_path):
    run, m = tdann_run
    for arm in ("topo", "control"):
        for key in ("orientation_smoothness", "orientation_local", "osi", "pinwheel_density", "category_morans_i",
                    "category_patches", "wiring_ratio"):
            assert np.isfinite(m[f"{key}_{arm}"]), (key, arm)
    assert m["category_morans_i_topo"] > m["category_morans_i_control"]  # held on 5/5 seeds (README)
    for f in ("orientation_maps.png", "category_maps.png", "probe.json"):
        assert (run / f).stat().st_size > 0
    # the run directory is probe-able as it is, with the same figures
    assert main(["probe", str(run), "--gratings", "--permutations", "49", "--out", str(tmp_path / "p")]) == 0
    doc = json.loads((tmp_path / "p" / "probe.json").read_text())
    assert doc["models"] == ["topo", "control"]
    for arm in ("topo", "control"):
        assert doc["results"][arm]["gratings"]["orientation_smoothness"] == pytest.approx(m[f"orientation_smoothness_{arm}"])
