"""Pieces shared by experiment runners: run-directory setup and per-arm training state."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from ..io import check_same_config, write_json
from ..layout import POSITIONS


def start_run(cfg, out, resume: bool = False, **extra) -> Path:
    """Create ``out``, pin the thread count, refuse to resume a run of another config, write ``config.json``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    conf = dataclasses.asdict(cfg)
    if resume:
        check_same_config(out, conf)
    write_json(out / "config.json", {"config": conf, **extra})
    return out


def arm_steps(cfg, per_epoch: int) -> int:
    """Optimizer steps of one arm: ``cfg.steps`` if set, else ``cfg.epochs`` epochs of ``per_epoch`` steps."""
    return cfg.steps if cfg.steps is not None else cfg.epochs * per_epoch


def check_length(cfg) -> None:
    if cfg.steps is not None and cfg.steps < 1:
        raise ValueError(f"steps must be ≥ 1, got {cfg.steps}")
    if getattr(cfg, "epochs", 1) < 1:
        raise ValueError(f"epochs must be ≥ 1, got {cfg.epochs}")


def optimize_once(memo: dict, topo, search) -> dict:
    """``search()`` — ``topo``'s swap pre-optimisation — in the first arm of a comparison; a later arm whose
    model and positions are the same as the first's were before its search (same initial weights: the same seeded
    search gives the same result) gets the found positions copied instead of searching again. Returns the
    search's info. ``memo``: a dict kept across the arms."""
    model = topo.model
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if "state" in memo and before.keys() == memo["state"].keys() and all(
            torch.equal(before[k], memo["state"][k]) for k in before):
        for e in topo.entries:
            getattr(e["owner"], POSITIONS).copy_(memo["found"][e["name"]])
        topo.refresh()
        return memo["info"]
    info = search()
    memo.update(state=before, info=info,
                found={e["name"]: getattr(e["owner"], POSITIONS).detach().clone() for e in topo.entries})
    return info


def run_arms(arms, seed: int, one) -> tuple[dict, dict, float]:
    """The comparison every two-arm recipe runs: each arm in turn from ``torch.manual_seed(seed)`` (so every arm
    starts from the same initial weights), ``one(arm) -> (result, summary, seconds)``.

    Returns ``({arm: result}, {f"{key}_{arm}": value for every summary entry}, total seconds)``: the flat names
    (``accuracy_topo``, ``accuracy_control``) are what the recipes' claims read."""
    res, flat, seconds = {}, {}, 0.0
    for arm in arms:
        torch.manual_seed(seed)
        res[arm], summary, secs = one(arm)
        flat.update(flatten_arms({arm: summary}))
        seconds += secs
    return res, flat, seconds


def flatten_arms(per_arm: dict, keys=None) -> dict:
    """``{f"{key}_{arm}": value}`` for each arm's ``keys`` (default: all of them), arm by arm."""
    return {f"{k}_{a}": r[k] for a, r in per_arm.items() for k in (r if keys is None else keys)}
