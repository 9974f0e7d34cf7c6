import json

import pytest

import topotorch.sweep as S
from topotorch.cli import main

FIXED = ["--set", "steps=300", "--set", "procedure=seed", "--set", "swap_interval=50", "--set", "log_interval=50",
         "--set", "checkpoint_interval=100"]


def test_parse_grid_keeps_bracketed_values_whole():
    grid, fixed = S.parse_grid(["alpha=0,0.5,2.5", "arms=[topo]", "lam_schedule=[[0.25, 1.0]],[[0.5, 2.0]]", "x=1e-3"])
    assert grid == {"alpha": [0, 0.5, 2.5], "lam_schedule": [[[0.25, 1.0]], [[0.5, 2.0]]]}
    assert fixed == {"arms": ["topo"], "x": 1e-3}


@pytest.mark.slow
def test_sweep_writes_the_front_and_an_interrupted_sweep_continues(tmp_path, monkeypatch, capsys):
    args = ["sweep", "independence", "--set", "lam=0,0.001", "--seeds", "2", "--out", str(tmp_path / "a"), "--quiet", *FIXED]
    assert main(args) == 0
    a = json.loads((tmp_path / "a" / "sweep.json").read_text())
    assert len(a["runs"]) == 4 and [s["control"] for s in a["settings"]] == [True, False]
    assert a["task"] == "test MSE" and a["topography"].startswith("Newman")
    for s in a["settings"]:
        vals = [r["task"] for r in a["runs"] if r["lam"] == s["lam"]]
        assert s["task_mean"] == pytest.approx(sum(vals) / 2)
    for r in a["runs"]:  # each point is its run's own metrics
        m = json.loads((tmp_path / "a" / r["run"] / "metrics.json").read_text())
        assert m["test_loss"] == r["task"] and m["modularity_q"] == r["topography"] and m["seed"] == r["seed"]
    assert (tmp_path / "a" / "sweep.csv").read_text().count("\n") == 5 and (tmp_path / "a" / "sweep.png").stat().st_size > 0

    # interrupted after two cells, then the same command again: finished cells are read, the rest run
    real, calls = S.run_recipe, []

    def dying(*a_, **k):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(a_[1])
        return real(*a_, **k)
    monkeypatch.setattr(S, "run_recipe", dying)
    b_args = [x if x != str(tmp_path / "a") else str(tmp_path / "b") for x in args]
    with pytest.raises(KeyboardInterrupt):
        main(b_args)
    monkeypatch.setattr(S, "run_recipe", real)
    capsys.readouterr()
    assert main(b_args) == 0
    assert capsys.readouterr().out.count("done before") == 2
    b = json.loads((tmp_path / "b" / "sweep.json").read_text())
    assert b["runs"] == a["runs"] and b["settings"] == a["settings"]


def test_strength_zero_is_a_valid_setting_in_every_two_arm_recipe(tmp_path):
    from topotorch.recipes import run_recipe
    m = run_recipe("tdann-cnn", tmp_path / "t", {"alpha": 0.0, "steps": 3, "channels": [4, 8], "preopt_windows": 1,
                                                  "preopt_swaps": 2}, progress=False)
    assert m["accuracy_topo"] == m["accuracy_control"]  # same weights, data and positions, no loss: the same run
    m = run_recipe("topolm", tmp_path / "l", {"quick": True, "steps": 3, "alpha": 0.0}, progress=False)
    assert m["val_loss_topo"] == m["val_loss_control"]


def test_every_recipe_kind_has_sweep_figures():
    from topotorch import registry
    from topotorch.sweep import FIGURES
    registry.load()
    assert len(registry.KINDS) >= 9 and set(registry.KINDS) <= set(FIGURES)


def test_sweep_with_two_jobs_writes_the_same_sweep_json_as_a_serial_sweep(tmp_path):
    """Cells in two worker processes: every cell the same run (a one-thread recipe), so the same sweep.json."""
    import json
    from topotorch.sweep import sweep
    grid, fixed = {"tau": [0.0, 10.0]}, {"steps": 5}
    serial = sweep("toponets-mlp", grid, fixed, seeds=1, out=tmp_path / "serial", progress=False)
    parallel = sweep("toponets-mlp", grid, fixed, seeds=1, out=tmp_path / "parallel", progress=False, jobs=2)
    assert serial == parallel
    a = json.loads((tmp_path / "serial" / "sweep.json").read_text())
    b = json.loads((tmp_path / "parallel" / "sweep.json").read_text())
    assert a == b and len(a["runs"]) == 2
