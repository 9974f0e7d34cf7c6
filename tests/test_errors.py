"""Bad input ends in one named line, exit ≠ 0, and nothing lost."""
import json

import pytest

from topotorch.cli import main

# the training loop only: these tests are about errors, not about BIMT's pruning and refitting stages after it
BIMT = ["--set", "checkpoint_interval=100", "--set", "log_interval=50", "--set", "finetune_steps=0", "--set",
        "refit_steps=0", "--set", "final_sweep=false", "--quiet"]


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_damaged_checkpoints_fall_back_or_name_the_file(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["run", "independence", "--out", str(out), "--steps", "300", *BIMT]
    assert main(args) == 0
    straight = json.loads((out / "metrics.json").read_text())
    ckpts = sorted((out / "checkpoints").iterdir())
    assert [c.name for c in ckpts] == ["step-00000200", "step-00000300"]
    # the newest is truncated: resume falls back to the newest intact one, says so, and ends as a straight run
    opt = ckpts[-1] / "optimizer.safetensors"
    opt.write_bytes(opt.read_bytes()[:100])
    capsys.readouterr()
    assert main(args + ["--resume"]) == 0
    err = capsys.readouterr().err
    assert "step-00000300" in err and "resuming from" in err and "step-00000200" in err
    resumed = json.loads((out / "metrics.json").read_text())
    straight.pop("seconds"), resumed.pop("seconds")
    assert resumed == straight
    # every checkpoint damaged: one line naming the file, exit 2, nothing else touched
    for c in sorted((out / "checkpoints").iterdir()):
        (c / "optimizer.safetensors").write_bytes(b"")
    before = (out / "metrics.json").read_text()
    capsys.readouterr()
    assert main(args + ["--resume"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("topotorch: error:") and "optimizer.safetensors" in line and "no intact checkpoint" in line
    assert (out / "metrics.json").read_text() == before


def test_config_json_that_is_not_an_object_or_not_json_is_named(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["run", "independence", "--out", str(out), "--steps", "200", *BIMT]
    assert main(args) == 0
    (out / "config.json").write_text("[]")
    capsys.readouterr()
    assert main(args + ["--resume"]) == 2
    line = _one_line(capsys)
    assert "config.json" in line and "JSON object" in line
    (out / "config.json").write_text("{")
    assert main(args + ["--resume"]) == 2
    line = _one_line(capsys)
    assert "config.json" in line and "not a readable" in line


def test_set_accepts_exponent_floats_and_every_recipe_accepts_steps(tmp_path, capsys):
    assert main(["run", "independence", "--out", str(tmp_path / "a"), "--steps", "100", "--set", "lam=1e-3",
                 "--set", "l0=1.0e-1", *BIMT]) == 0
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())["config"]
    assert cfg["lam"] == 1e-3 and cfg["steps"] == 100
    assert main(["run", "locality-prior", "--out", str(tmp_path / "b"), "--steps", "5", "--seed", "3", "--quiet",
                 "--set", "side=5"]) == 0
    m = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert m["steps"] == 5 and m["seed"] == 3
    assert main(["run", "locality-prior", "--out", str(tmp_path / "c"), "--steps", "0", "--quiet"]) == 2
    assert "steps must be ≥ 1" in _one_line(capsys)


def test_starting_afresh_over_a_run_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["run", "independence", "--out", str(out), "--steps", "200", *BIMT]
    assert main(args) == 0
    before = (out / "metrics.json").read_text()
    capsys.readouterr()
    assert main(args) == 2
    assert "--resume" in _one_line(capsys)
    assert (out / "metrics.json").read_text() == before


@pytest.mark.parametrize("value", ["[1, 2]", "{"])
def test_layout_and_recipe_files_name_themselves(tmp_path, value, capsys):
    bad = tmp_path / "r.yaml"
    bad.write_text("kind: [unclosed" if value == "{" else "- 1\n- 2\n")
    assert main(["run", str(bad), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert str(bad) in _one_line(capsys)
