import json

import pytest
import torch
from safetensors.torch import load_file

import topotorch as tt
from topotorch.io import Checkpointer, CheckpointError, load_model
from topotorch.cli import main
from topotorch.config import ConfigError, from_dict
from topotorch.recipes import run_recipe
from topotorch.experiments.bimt import BIMTConfig, run_bimt as train_bimt
from topotorch.train import TrainingDiverged, piecewise, progress_figures

KEYS = {"recipe", "seed", "steps", "seconds", "train_loss", "test_loss", "params_total", "params_kept", "threshold",
        "wiring_length", "modularity_q", "dependencies", "modules"}
SHORT = {"steps": 400, "swap_interval": 50, "log_interval": 50, "checkpoint_interval": 200, "procedure": "seed"}


def test_piecewise_schedule_matches_bimt():
    at = piecewise(1e-3, [[0.25, 10], [0.75, 0.1]], 20000)
    assert at(0) == 1e-3 and at(4999) == 1e-3
    assert at(5000) == pytest.approx(1e-2) and at(14999) == pytest.approx(1e-2)
    assert at(15000) == pytest.approx(1e-3)


def test_progress_bar_shows_a_replica_batch_as_ranges():
    row = {"step": 100, "train_loss": 0.09, "lam": 0.01, "swaps/0": 3, "test_loss/0": 0.0155, "test_loss/1": 0.0126,
           "test_loss/2": 0.0282, "train_loss/0": 0.02, "train_loss/1": 0.03, "train_loss/2": 0.04}
    # the batch's train_loss (a sum over replicas) gives way to the replicas' range; integers (swaps) stay in the log
    assert progress_figures(row) == {"train_loss": "0.02–0.04", "lam": "0.01", "test_loss": "0.0126–0.0282"}
    assert progress_figures({"step": 0, "loss/0": 1.5}) == {"loss": "1.5"}
    assert progress_figures({"step": 0, "a/b": 2.0, "cost": 1.0}) == {"a/b": "2", "cost": "1"}


def test_recipe_run_writes_every_artefact(tmp_path):
    m = run_recipe("independence", tmp_path, SHORT, progress=False)
    for f in ("metrics.json", "network.png", "curves.png", "model.safetensors", "config.json", "log.csv"):
        assert (tmp_path / f).stat().st_size > 0, f
    disk = json.loads((tmp_path / "metrics.json").read_text())
    assert KEYS <= set(disk) and disk == json.loads(json.dumps(m))
    assert disk["steps"] == 400 and disk["params_total"] == 4 * 20 + 20 + 20 * 20 + 20 + 20 * 2 + 2
    assert 0 < disk["params_kept"] <= disk["params_total"]
    assert len(disk["dependencies"]) == 2 and all(set(d) <= {0, 1, 2, 3} for d in disk["dependencies"])
    first = float((tmp_path / "log.csv").read_text().splitlines()[1].split(",")[2])
    assert disk["test_loss"] < 0.8 * first  # it learned something in 400 steps
    # The saved model reloads (with its permutations) and reproduces the test loss.
    model = tt.MLP([4, 20, 20, 2])
    tt.embed(model)
    load_model(model, tmp_path / "model.safetensors")
    from topotorch.data import symbolic
    d = symbolic("independence", 0)
    assert torch.nn.functional.mse_loss(model(d.x_test), d.y_test).item() == pytest.approx(disk["test_loss"], rel=1e-5)


def test_resume_continues_the_same_run(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    run_recipe("independence", a, SHORT, progress=False)
    run_recipe("independence", b, SHORT, progress=False)
    ck = Checkpointer(b)
    last = ck.latest()
    assert last.name == "step-00000400"
    import shutil
    shutil.rmtree(last)  # as if the run had been stopped after the step-200 checkpoint
    with pytest.raises(CheckpointError, match="--resume"):
        run_recipe("independence", b, SHORT, progress=False)
    run_recipe("independence", b, SHORT, resume=True, progress=False)
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    rows_a = (a / "log.csv").read_text().splitlines()
    rows_b = (b / "log.csv").read_text().splitlines()
    assert len(rows_a) == len(rows_b) and rows_a[-1].split(",")[:4] == rows_b[-1].split(",")[:4]
    with pytest.raises(CheckpointError, match="different config"):
        run_recipe("independence", b, dict(SHORT, lr=0.01), resume=True, progress=False)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    cfg = from_dict(BIMTConfig, dict(SHORT, steps=600, lr=1e6, swap_interval=1000))
    with pytest.raises(TrainingDiverged, match="Last good checkpoint"):
        train_bimt(cfg, tmp_path, progress=False)
    for ck in Checkpointer(tmp_path).all():
        sd = load_file(str(ck / "model.safetensors"))
        assert all(torch.isfinite(v.float()).all() for v in sd.values())


@pytest.mark.parametrize("override,msg", [
    ({"stepz": 3}, "unknown config key"),
    ({"steps": "many"}, "steps must be an integer"),
    ({"variant": "half"}, "variant must be one of"),
    ({"shape": [3, 20, 2]}, "does not fit task"),
    ({"in_fold": 3}, "does not divide"),
    ({"lam_schedule": [[2.0, 1.0]]}, "fraction"),
])
def test_bad_configs_raise_clear_errors(tmp_path, override, msg):
    with pytest.raises((ConfigError, ValueError), match=msg):
        run_recipe("independence", tmp_path, override, progress=False)
    assert not (tmp_path / "metrics.json").exists()


def test_cli_list_run_and_errors(tmp_path, capsys):
    assert main(["run", "--list"]) == 0
    out = capsys.readouterr().out
    for name in ("independence", "feature-sharing", "compositionality"):
        assert name in out
    assert main(["run", "nosuch"]) == 2
    assert "unknown recipe" in capsys.readouterr().err
    assert main(["run", "independence", "--out", str(tmp_path), "--steps", "200", "--quiet",
                 "--set", "variant=none", "--set", "log_interval=100"]) == 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["variant"] == "none" and m["steps"] == 200
    assert main(["run", "independence", "--set", "oops"]) == 2
    assert "key=value" in capsys.readouterr().err


def test_corrupt_model_file_is_reported(tmp_path):
    p = tmp_path / "model.safetensors"
    p.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="safetensors"):
        load_model(tt.MLP([2, 2]), p)


def test_tensorboard_logging_is_optional(tmp_path):
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="topotorch\\[tensorboard\\]"):
            run_recipe("independence", tmp_path, dict(SHORT, tensorboard=True), progress=False)
        return
    run_recipe("independence", tmp_path, dict(SHORT, tensorboard=True), progress=False)
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb").iterdir())


def test_masked_fine_tune_follows_relocation():
    """Pruned zeros are held at zero through swaps: the mask moves with the units (a mask fixed at the start
    zeroed live weights after the first swap and broke the function)."""
    from topotorch.experiments.bimt import build_model
    from topotorch.pruning import Masks
    torch.manual_seed(0)
    model, graph = build_model(BIMTConfig(shape=[4, 8, 8, 2]))
    with torch.no_grad():
        for w in graph.weights:
            w.weight.mul_((torch.rand_like(w.weight) > 0.5).float())
    x = torch.randn(64, 4)
    masks = Masks(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    zeros = sum(int((w.weight == 0).sum()) for w in graph.weights)
    for step in range(3):
        before = model(x)
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        masks.before_step(step)
        opt.step()
        masks.after_step(step)
        assert torch.allclose(model(x), before, atol=1e-6)
        graph.permute(1, torch.randperm(8))   # a relocation between steps: function-preserving
        assert torch.allclose(model(x), before, atol=1e-6)
    assert sum(int((w.weight == 0).sum()) for w in graph.weights) == zeros
