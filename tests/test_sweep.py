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
    args = ["sweep", "independence", "--set", "lam=0,0.001", "--seeds", "2", "--out", str(tmp_path / "a"), "--quiet",
            "--one-by-one", *FIXED]
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
    import topotorch.recipes as R  # every run, here or in a worker, goes through recipes.run_recipe
    real, calls = R.run_recipe, []

    def dying(*a_, **k):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(a_[1])
        return real(*a_, **k)
    monkeypatch.setattr(R, "run_recipe", dying)
    b_args = [x if x != str(tmp_path / "a") else str(tmp_path / "b") for x in args]
    with pytest.raises(KeyboardInterrupt):
        main(b_args)
    monkeypatch.setattr(R, "run_recipe", real)
    capsys.readouterr()
    assert main(b_args) == 0
    assert capsys.readouterr().out.count("done before") == 2
    b = json.loads((tmp_path / "b" / "sweep.json").read_text())
    assert b["runs"] == a["runs"] and b["settings"] == a["settings"]

    # batched (the default): each setting's two seeds as one program of replicas, equal to the one-by-one cells to
    # floating-point tolerance; run again, every cell is read back
    c_args = [x if x != str(tmp_path / "a") else str(tmp_path / "c") for x in args if x != "--one-by-one"]
    capsys.readouterr()
    assert main(c_args) == 0
    assert capsys.readouterr().out.count("ran as a batch of replicas") == 4
    c = json.loads((tmp_path / "c" / "sweep.json").read_text())
    for ra, rc in zip(a["runs"], c["runs"]):
        assert (ra["lam"], ra["seed"], ra["run"]) == (rc["lam"], rc["seed"], rc["run"])
        assert rc["task"] == pytest.approx(ra["task"], rel=1e-3) and rc["topography"] == pytest.approx(ra["topography"], abs=0.02)
    assert main(c_args) == 0 and capsys.readouterr().out.count("done before") == 4


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


def test_sweep_with_two_jobs_or_the_launcher_writes_the_same_sweep_json_as_a_serial_sweep(tmp_path):
    """Cells in two worker processes, or as submitit jobs (its local executor: the --launcher slurm path on this
    machine): every cell the same run (a one-thread recipe), so the same sweep.json."""
    import json
    from topotorch.sweep import sweep
    grid, fixed = {"tau": [0.0, 10.0]}, {"steps": 5}
    serial = sweep("toponets-mlp", grid, fixed, seeds=1, out=tmp_path / "serial", progress=False)
    parallel = sweep("toponets-mlp", grid, fixed, seeds=1, out=tmp_path / "parallel", progress=False, jobs=2)
    jobs = sweep("toponets-mlp", grid, fixed, seeds=1, out=tmp_path / "jobs", progress=False, jobs=2,
                 launcher="submitit-local", slurm={"timeout_min": 10})
    assert serial == parallel == jobs
    a = json.loads((tmp_path / "serial" / "sweep.json").read_text())
    for other in ("parallel", "jobs"):
        assert json.loads((tmp_path / other / "sweep.json").read_text()) == a
    assert len(a["runs"]) == 2
    assert len(list((tmp_path / "jobs" / "jobs").glob("*_result.pkl"))) == 2  # each cell went through submitit


def test_launcher_settings_are_checked_before_anything_runs(tmp_path):
    from topotorch.config import ConfigError
    from topotorch.launch import Runs, parse_slurm
    with pytest.raises(ConfigError, match="--jobs"):
        Runs(0)
    with pytest.raises(ConfigError, match="unknown launcher"):
        Runs(2, "ray")
    with pytest.raises(ConfigError, match="cluster launcher"):
        Runs(2, "pool", slurm={"slurm_partition": "gpu"})
    assert parse_slurm(["slurm_partition=gpu", "timeout_min=120"]) == {"slurm_partition": "gpu", "timeout_min": 120}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_slurm(["gpu"])
    assert main(["sweep", "toponets-mlp", "--set", "tau=0,1", "--out", str(tmp_path), "--jobs", "0"]) == 2
    assert not any(tmp_path.iterdir())  # refused before a cell ran


def _sleep_and_stamp(seconds: float) -> tuple[float, float]:
    import time
    t = time.time()
    time.sleep(seconds)
    return t, time.time()


def test_waiting_for_a_long_run_gives_signs_of_life_and_counts_finished_runs():
    """While the run being collected holds the collection back, ``tick`` is called every ``every`` seconds, and
    ``finished`` counts the runs that ended meanwhile."""
    from topotorch.launch import Runs
    runs, seen = Runs(2), []
    try:
        runs.add("slow", 1, _sleep_and_stamp, 2.0)
        runs.add("fast", 1, _sleep_and_stamp, 0.0)
        runs.result("slow", tick=lambda: seen.append(runs.finished()), every=0.4)
        assert runs.finished() == 2  # slow collected, fast done
        runs.result("fast")
        assert runs.finished() == 2
    finally:
        runs.close()
    assert len(seen) >= 2 and seen[-1] == 1  # fast had finished by the last tick; slow was still running


def test_the_pool_never_runs_more_threads_than_cores(monkeypatch):
    """Two one-thread runs share two cores; a two-thread run waits until it has the machine to itself."""
    import os
    from topotorch.launch import Runs
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    runs = Runs(2)
    try:
        runs.add("a", 1, _sleep_and_stamp, 0.6)
        runs.add("b", 1, _sleep_and_stamp, 0.6)
        runs.add("c", 2, _sleep_and_stamp, 0.1)
        a, b, c = (runs.result(k) for k in "abc")
    finally:
        runs.close()
    assert a[0] < b[1] and b[0] < a[1]              # a and b overlapped
    assert c[0] >= max(a[1], b[1]) - 0.05            # c started after both ended


def test_a_bimt_grid_trains_as_batches_across_settings_whatever_the_jobs(tmp_path, monkeypatch):
    from topotorch.sweep import _batches, sweep
    lams = [{"lam": v} for v in (0, 1e-3, 1e-2)]
    assert [[(p["lam"], s) for p, s in g] for g in _batches("two-moon", lams, {}, 0, 2, tmp_path)] == \
        [[(0, 0), (0, 1), (1e-3, 0), (1e-3, 1), (1e-2, 0), (1e-2, 1)]]
    monkeypatch.setattr("topotorch.sweep.BATCH_CAP", 4)  # full: the next setting starts a new batch
    assert [len(g) for g in _batches("two-moon", lams, {}, 0, 2, tmp_path)] == [4, 2]
    # settings that differ in what the batch shares (its steps) batch their seeds only; a done cell is left out
    steps = [{"steps": 10}, {"steps": 20}]
    (tmp_path / "steps=20_seed=1").mkdir()
    (tmp_path / "steps=20_seed=1" / "metrics.json").write_text("{}")
    assert [[(p["steps"], s) for p, s in g] for g in _batches("two-moon", steps, {}, 0, 2, tmp_path)] == [[(10, 0), (10, 1)]]
    assert _batches("toponets-mlp", [{"tau": 0}, {"tau": 1}], {}, 0, 2, tmp_path) == []  # no batched trainer
    monkeypatch.undo()
    # one seed per setting: the settings batch together, and two workers train exactly what one process does
    grid, fixed = {"lam": [0.0, 1e-3]}, {"steps": 60, "swap_interval": 30, "log_interval": 30, "procedure": "seed"}
    serial = sweep("two-moon", grid, fixed, seeds=1, out=tmp_path / "serial", progress=False)
    parallel = sweep("two-moon", grid, fixed, seeds=1, out=tmp_path / "parallel", progress=False, jobs=2)
    assert serial == parallel and (tmp_path / "serial" / "lam=0.0..lam=0.001_replicas" / "log.csv").is_file()
