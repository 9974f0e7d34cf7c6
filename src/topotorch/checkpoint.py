"""Atomic checkpoints: weights and optimizer tensors in safetensors, everything else in JSON.

A checkpoint is a directory ``checkpoints/step-00001234/`` written under a temporary name and renamed
into place, so a crash never leaves a half-written checkpoint; the newest complete one is found by name.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .layout import atomic_write_text

__all__ = ["Checkpointer", "save_model", "load_model", "check_same_config", "CheckpointError"]


class CheckpointError(RuntimeError):
    """A checkpoint or model file that cannot be used."""


def save_model(model: nn.Module, path) -> None:
    """``model.state_dict()`` to a safetensors file, atomically. Tied tensors (e.g. a GPT's embedding and
    head) are stored once; the other names are recorded as aliases in the file's metadata."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tensors, aliases, seen = {}, {}, {}
    for k, v in model.state_dict().items():
        key = (v.data_ptr(), tuple(v.shape), tuple(v.stride()), v.dtype) if v.numel() else None
        if key is not None and key in seen:
            aliases[k] = seen[key]
            continue
        if key is not None:
            seen[key] = k
        tensors[k] = v.detach().contiguous().cpu()
    save_file(tensors, str(tmp), metadata={"aliases": json.dumps(aliases)})
    os.replace(tmp, path)


def load_model(model: nn.Module, path) -> None:
    """Load a safetensors state dict into ``model``; a mismatch names the offending keys."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such model file")
    try:
        sd = load_file(str(path))
        with safe_open(str(path), "pt") as fh:
            aliases = json.loads((fh.metadata() or {}).get("aliases", "{}"))
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    for k, src in aliases.items():
        sd[k] = sd[src]
    own = model.state_dict()
    missing, extra = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
    bad = [k for k in set(own) & set(sd) if own[k].shape != sd[k].shape]
    if missing or extra or bad:
        raise CheckpointError(f"{path} does not fit the model: missing {missing[:5]}, unexpected {extra[:5]}, "
                              f"wrong shape {bad[:5]}")
    model.load_state_dict(sd)


def check_same_config(out, conf: dict) -> None:
    """Refuse to resume ``out`` when its ``config.json`` holds a different config than ``conf``."""
    prev = Path(out) / "config.json"
    if not prev.is_file():
        return
    old = json.loads(prev.read_text()).get("config", {})
    diff = sorted(k for k in set(old) | set(conf) if old.get(k) != conf.get(k))
    if diff:
        raise CheckpointError(f"{out} holds a run with a different config ({diff}); use another --out "
                              "or the same settings")


def _optim_split(opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    sd = opt.state_dict()
    tensors, meta = {}, {"param_groups": sd["param_groups"], "state": {}}
    for idx, st in sd["state"].items():
        m = {}
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{idx}/{k}"] = v.detach().contiguous().cpu()
            else:
                m[k] = v
        meta["state"][str(idx)] = m
    return tensors, meta


def _optim_join(tensors: dict, meta: dict) -> dict:
    state: dict = {int(i): dict(m) for i, m in meta["state"].items()}
    for key, v in tensors.items():
        if key.startswith(("rng/", "extra/")):
            continue
        i, k = key.split("/", 1)
        state.setdefault(int(i), {})[k] = v
    return {"state": state, "param_groups": meta["param_groups"]}


class Checkpointer:
    """Saves and restores (model, optimizer, step, RNG, extra JSON state) under ``root/checkpoints``."""

    def __init__(self, root, keep: int = 2):
        self.dir = Path(root) / "checkpoints"
        self.keep = keep

    def save(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
             extra: dict | None = None, extra_tensors: dict | None = None) -> Path:
        """Write checkpoint ``step``; ``extra`` is JSON state, ``extra_tensors`` more tensors (e.g. a data
        generator's state), returned by :meth:`load` under ``"tensors"``."""
        self.dir.mkdir(parents=True, exist_ok=True)
        final = self.dir / f"step-{step:08d}"
        tmp = self.dir / f".tmp-step-{step:08d}-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        save_model(model, tmp / "model.safetensors")
        tensors, meta = _optim_split(optimizer) if optimizer is not None else ({}, None)
        tensors["rng/torch"] = torch.get_rng_state()
        for k, v in (extra_tensors or {}).items():
            tensors[f"extra/{k}"] = v.detach().contiguous().cpu()
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        atomic_write_text(tmp / "state.json", json.dumps({"step": step, "optimizer": meta, "extra": extra or {}}))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in self.all()[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def all(self) -> list[Path]:
        if not self.dir.is_dir():
            return []
        return sorted(p for p in self.dir.iterdir() if p.is_dir() and p.name.startswith("step-")
                      and (p / "state.json").is_file())

    def latest(self) -> Path | None:
        found = self.all()
        return found[-1] if found else None

    def resume_point(self, resume: bool) -> Path | None:
        """The checkpoint to continue from (``None``: start afresh). Starting afresh over a run's checkpoints
        is refused, so a forgotten ``--resume`` never overwrites a run."""
        last = self.latest()
        if last is not None and not resume:
            raise CheckpointError(f"{self.dir.parent} already holds checkpoints; pass --resume to continue that run "
                                  "or choose another --out")
        return last if resume else None

    def load(self, path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict:
        """Restore a checkpoint in place; returns its JSON state (``step``, ``extra``)."""
        path = Path(path)
        try:
            state = json.loads((path / "state.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: unreadable checkpoint state ({e})") from None
        load_model(model, path / "model.safetensors")
        tensors = load_file(str(path / "optimizer.safetensors"))
        if optimizer is not None and state.get("optimizer") is not None:
            optimizer.load_state_dict(_optim_join(tensors, state["optimizer"]))
        if "rng/torch" in tensors:
            torch.set_rng_state(tensors["rng/torch"])
        state["tensors"] = {k[len("extra/"):]: v for k, v in tensors.items() if k.startswith("extra/")}
        return state
