"""Every recipe: killed at a checkpoint and resumed, it writes what a straight run writes (bit-exact on CPU)."""
import json

import pytest
import torch
from safetensors.torch import load_file

from topotorch.io import Checkpointer
from topotorch.recipes import run_recipe


class Killed(BaseException):
    pass


def _without_seconds(obj):
    if isinstance(obj, dict):
        return {k: _without_seconds(v) for k, v in obj.items() if k != "seconds"}
    if isinstance(obj, list):
        return [_without_seconds(v) for v in obj]
    return obj


def _kill_after(monkeypatch, n: int):
    """Stop the process right after the ``n``-th checkpoint is written."""
    real = Checkpointer.save
    count = {"saves": 0}

    def save(self, step, *a, **k):
        path = real(self, step, *a, **k)
        count["saves"] += 1
        if count["saves"] == n:
            raise Killed(f"killed after {path}")
        return path
    monkeypatch.setattr(Checkpointer, "save", save)
    return real


CASES = {
    # recipe: (overrides, checkpoint after which the run is killed, files whose tensors must match)
    # every stage after training runs too (fine-tune, refit, final sweep), shortened
    "independence": ({"steps": 400, "checkpoint_interval": 100, "swap_interval": 50, "log_interval": 50,
                      "finetune_steps": 300, "refit_steps": 30}, 2,
                     ["model.safetensors"]),
    "locality-prior": ({"steps": 30, "checkpoint_interval": 10, "side": 6}, 4,
                       ["local.safetensors", "control.safetensors"]),
    "tdann-cnn": ({"steps": 20, "checkpoint_interval": 10, "mode": "sampled", "preopt_windows": 2,
                   "preopt_swaps": 5, "channels": [4, 8]}, 1, ["topo.safetensors", "control.safetensors"]),
    "spatial-two-task": ({"steps": 30, "checkpoint_interval": 10, "hidden": [20, 12]}, 4,
                         ["spatial/model.safetensors", "control/model.safetensors"]),
    "sernn": ({"steps": 20, "checkpoint_interval": 10, "strengths": [0.01, 0.1], "networks_per_strength": 1}, 1,
              ["model.safetensors"]),
    # killed in the second arm, after the All-TNN arm finished
    "all-tnn": ({"steps": 20, "checkpoint_interval": 10, "channels": [4, 4], "permutations": 9}, 3,
                ["alltnn.safetensors", "lc.safetensors", "cnn.safetensors"]),
    # killed in the control arm, after the topographic arm finished: its metrics must survive the resume
    "topolm": ({"quick": True, "steps": 20, "checkpoint_interval": 10, "eval_interval": 5, "mode": "sampled",
                "radius": 1.0}, 3, ["topo/model.safetensors", "control/model.safetensors"]),
}


SLOW = {"independence", "spatial-two-task", "all-tnn"}  # the longest runs: in the full suite, not in -m "not slow"


@pytest.mark.parametrize("recipe", [pytest.param(r, marks=pytest.mark.slow) if r in SLOW else r for r in CASES])
def test_killed_and_resumed_run_equals_straight_run(recipe, tmp_path, monkeypatch):
    over, kill_at, files = CASES[recipe]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    a = run_recipe(recipe, straight, over, progress=False)
    _kill_after(monkeypatch, kill_at)
    with pytest.raises(Killed):
        run_recipe(recipe, resumed, over, progress=False)
    monkeypatch.undo()
    assert not (resumed / "metrics.json").exists()
    b = run_recipe(recipe, resumed, over, resume=True, progress=False)
    assert _without_seconds(a) == _without_seconds(b)
    on_disk = json.loads((resumed / "metrics.json").read_text())
    assert _without_seconds(on_disk) == _without_seconds(json.loads((straight / "metrics.json").read_text()))
    for f in files:
        wa, wb = load_file(str(straight / f)), load_file(str(resumed / f))
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), f
    for log in straight.rglob("log.csv"):  # logs too: swap counts and running means continue
        assert log.read_text() == (resumed / log.relative_to(straight)).read_text(), log
