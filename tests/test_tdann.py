from topotorch.recipes import run_recipe


def test_tdann_cnn_is_smoother_than_control_at_equal_accuracy(tmp_path):
    m = run_recipe("tdann-cnn", tmp_path, progress=False)
    assert abs(m["accuracy_topo"] - m["accuracy_control"]) <= 0.03
    assert m["smoothness_topo"] >= m["smoothness_control"] + 0.15
    assert m["smoothness_per_layer_topo"]["conv2"] > 0.4
    for arm in ("topo", "control"):
        cd = m[f"corr_vs_distance_{arm}"]["conv2"]
        assert len(cd["distance"]) == len(cd["correlation"]) > 3
    for f in ("corr_distance.png", "maps.png", "topo.safetensors", "control.safetensors"):
        assert (tmp_path / f).stat().st_size > 0
