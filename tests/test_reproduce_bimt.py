"""The seed-003 claims, at the notebooks' full settings (20k steps each, ~10 s per recipe here)."""
import pytest

from topotorch.metrics import extents_overlap
from topotorch.recipes import run_recipe

pytestmark = pytest.mark.slow  # a reproduction test: runs whole recipes


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("bimt")
    return {name: run_recipe(name, root / name, progress=False)
            for name in ("independence", "feature-sharing", "compositionality")}


def test_independence_splits_into_two_spatial_modules(runs):
    m = runs["independence"]
    assert m["test_loss"] <= 1e-2
    assert m["dependencies"] == [[0, 2], [1, 3]]
    assert m["modules"] == [{"inputs": [0, 2], "outputs": [0]}, {"inputs": [1, 3], "outputs": [1]}]
    assert not extents_overlap(m["module_extents"])
    assert m["params_kept"] < 0.1 * m["params_total"]


def test_feature_sharing_is_nested(runs):
    m = runs["feature-sharing"]
    assert m["dependencies"] == [[0], [0, 1], [0, 1, 2]]
    # Published 8.5e-5; ours 1.9e-4 at the notebook's seed, 0.8–3.8e-4 over seeds 0–6 (see the issue note).
    assert m["test_loss"] <= 3e-4


def test_compositionality_fits(runs):
    m = runs["compositionality"]
    assert m["test_loss"] <= 3e-3
    assert m["dependencies"] == [[0, 1, 2, 3]]


def test_ablation_without_penalty_is_entangled(tmp_path):
    m = run_recipe("independence", tmp_path, {"variant": "none", "steps": 5000}, progress=False)
    assert m["params_kept"] > 0.8 * m["params_total"]
    assert len(m["modules"]) == 1 and m["modules"][0]["inputs"] == [0, 1, 2, 3]


def test_two_moon_is_accurate_and_sparse_where_its_control_stays_dense(tmp_path):
    m = run_recipe("two-moon", tmp_path / "full", progress=False)
    assert m["test_accuracy_pruned"] >= 0.97 and m["params_kept"] <= 0.1 * m["params_total"]
    c = run_recipe("two-moon", tmp_path / "none", {"variant": "none", "steps": 3000}, progress=False)
    assert c["params_kept"] > 0.5 * c["params_total"] and c["test_accuracy"] >= 0.95
    assert (tmp_path / "full" / "network.png").stat().st_size > 0


def test_mnist_bimt_hidden_sheets_group_by_digit(tmp_path):
    m = run_recipe("mnist-bimt", tmp_path, {"steps": 5000}, progress=False)
    assert m["test_accuracy_pruned"] >= 0.9 and m["params_kept"] <= 0.05 * m["params_total"]
    assert m["modularity_q"] >= 0.4
    last = list(m["digit_sheets"].values())[-1]  # every digit keeps its own units on the last 10×10 sheet
    assert len(last) == 10 and all(c > 0 for c in last)
    assert (tmp_path / "sheets.png").stat().st_size > 0
