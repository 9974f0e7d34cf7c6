import pytest


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
