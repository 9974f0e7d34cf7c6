"""The claims of seeds 001 and 002 at the recipes' full default settings (~10 s and ~20 s here)."""
import pytest

from topotorch.recipes import run_recipe

pytestmark = pytest.mark.slow  # a reproduction test: runs whole recipes


def test_locality_prior_lowers_spatial_variance_at_equal_accuracy(tmp_path):
    m = run_recipe("locality-prior", tmp_path, progress=False)
    assert abs(m["accuracy_local"] - m["accuracy_control"]) <= 0.02
    assert m["accuracy_local"] > 0.95
    assert m["variance_local"] < m["variance_control"] and m["p_value"] < 0.01 and m["t_statistic"] < 0
    assert m["n_pairs"] == 359
    for f in ("maps.png", "variance.png", "local.safetensors", "control.safetensors", "config.json"):
        assert (tmp_path / f).stat().st_size > 0


def test_spatial_two_task_separates_tasks_and_splits_cleanly(tmp_path):
    m = run_recipe("spatial-two-task", tmp_path, progress=False)
    sep = m["task_separation"]
    assert sep["spatial"] >= 0.3 and sep["spatial"] > sep["control"]
    for t in range(2):
        assert m["split_accuracy"]["spatial"][t] >= 0.9 * m["accuracy"][t]
        assert m["split_accuracy"]["spatial"][t] > m["split_accuracy"]["control"][t]
    for arm in ("spatial", "control"):
        for f in ("model.safetensors", "record.safetensors", "positions.png", "specificity.png", "scores.json",
                  "split/task0.safetensors", "split/task1.safetensors"):
            assert (tmp_path / arm / f).stat().st_size > 0
