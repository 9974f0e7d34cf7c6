"""Files: atomic writes, JSON with errors that name the file, models in safetensors, and checkpoints.

A checkpoint is a directory ``checkpoints/step-00001234/`` (``model.safetensors``, ``optimizer.safetensors``,
``state.json``) written under a temporary name and renamed into place, so a crash never leaves a half-written
one. Loading reads and checks everything before it touches the model; a damaged newest checkpoint falls
back to the newest intact one (and says so).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

__all__ = ["atomic_write_text", "atomic_save_file", "write_json", "read_json", "save_model", "load_model",
           "read_model", "read_state", "read_tensors", "Checkpointer", "CheckpointError", "check_same_config"]


class CheckpointError(ValueError, RuntimeError):
    """A checkpoint, model or run file that cannot be used."""


def atomic_write_text(path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace`` (never half-written)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def atomic_save_file(tensors: dict, path, metadata: dict | None = None) -> None:
    """``safetensors.torch.save_file``, atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def write_json(path, obj, indent: int | None = 1) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent))


def read_json(path, what: str = "JSON file", obj: bool = True):
    """Parse ``path``; a missing, malformed or (with ``obj``) non-object file raises :class:`CheckpointError`
    naming the file."""
    path = Path(path)
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such {what}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not a readable {what} ({e})") from None
    if obj and not isinstance(value, dict):
        raise CheckpointError(f"{path}: a {what} must hold a JSON object, found {type(value).__name__}")
    return value


def save_model(model: nn.Module, path) -> None:
    """``model.state_dict()`` to a safetensors file, atomically. Tied tensors (e.g. a GPT's embedding and
    head) are stored once; the other names are recorded as aliases in the file's metadata."""
    tensors, aliases, seen = {}, {}, {}
    for k, v in model.state_dict().items():
        key = (v.data_ptr(), tuple(v.shape), tuple(v.stride()), v.dtype) if v.numel() else None
        if key is not None and key in seen:
            aliases[k] = seen[key]
            continue
        if key is not None:
            seen[key] = k
        tensors[k] = v.detach().contiguous().cpu()
    atomic_save_file(tensors, path, {"aliases": json.dumps(aliases)})


def read_tensors(path) -> tuple[dict, dict]:
    """(tensors, metadata) of a safetensors file; a missing or damaged file raises :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), "pt") as fh:
            meta = fh.metadata() or {}
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    return tensors, meta


def read_state(path) -> dict:
    """The state dict stored at ``path`` by :func:`save_model`, tied tensors restored under every name."""
    sd, meta = read_tensors(path)
    try:
        aliases = json.loads(meta.get("aliases", "{}"))
    except json.JSONDecodeError:
        raise CheckpointError(f"{path}: damaged metadata") from None
    for k, src in aliases.items():
        if src not in sd:
            raise CheckpointError(f"{path}: alias {k} → {src} names no stored tensor")
        sd[k] = sd[src]
    return sd


def read_model(model: nn.Module, path) -> dict:
    """The state dict stored at ``path``, checked against ``model`` (nothing is loaded yet)."""
    sd = read_state(path)
    own = model.state_dict()
    missing, extra = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
    bad = [k for k in set(own) & set(sd) if own[k].shape != sd[k].shape]
    if missing or extra or bad:
        from .layout import POSITIONS
        hint = ""
        if extra and all(k.endswith(POSITIONS) for k in extra):
            hint = ("; the unexpected entries are unit positions: give the model its positions first (the recipe's "
                    "graph, embed, gpt_graph or attach), or drop them with topotorch.layout.split_positions")
        elif bad and all(k.endswith(POSITIONS) for k in bad):
            hint = "; the positions differ in dimension: build the graph with layouts of the saved dimension"
        raise CheckpointError(f"{path} does not fit the model: missing {missing[:5]}, unexpected {extra[:5]}, "
                              f"wrong shape {bad[:5]}{hint}")
    return sd


def load_model(model: nn.Module, path) -> None:
    """Load a safetensors state dict into ``model``; a mismatch names the offending keys."""
    model.load_state_dict(read_model(model, path))


def check_same_config(out, conf: dict) -> None:
    """Refuse to resume ``out`` when its ``config.json`` holds a different config than ``conf``."""
    prev = Path(out) / "config.json"
    if not prev.is_file():
        return
    old = read_json(prev, "run config").get("config", {})
    if not isinstance(old, dict):
        raise CheckpointError(f"{prev}: 'config' must be a JSON object")
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
    """Saves and restores (model, optimizer, step, RNG, extra state) under ``root/checkpoints``."""

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
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            tensors["rng/cuda"] = torch.cuda.get_rng_state()
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
        return sorted(p for p in self.dir.iterdir() if p.is_dir() and p.name.startswith("step-"))

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

    def read(self, path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict:
        """Read and check checkpoint ``path`` without touching anything; :meth:`apply` loads it."""
        path = Path(path)
        state = read_json(path / "state.json", "checkpoint state")
        if not isinstance(state.get("step"), int):
            raise CheckpointError(f"{path / 'state.json'}: no integer 'step'")
        sd = read_model(model, path / "model.safetensors")
        tensors, _ = read_tensors(path / "optimizer.safetensors")
        optim = None
        if optimizer is not None and state.get("optimizer") is not None:
            try:
                optim = _optim_join(tensors, state["optimizer"])
                groups = optimizer.state_dict()["param_groups"]
                if len(optim["param_groups"]) != len(groups) or any(
                        len(a["params"]) != len(b["params"]) for a, b in zip(optim["param_groups"], groups)):
                    raise ValueError("its parameter groups differ from this optimizer's")
            except (KeyError, ValueError, TypeError, AttributeError) as e:
                raise CheckpointError(f"{path / 'optimizer.safetensors'}: optimizer state does not fit ({e})") from None
        return {"path": path, "state": state, "model": sd, "optimizer": optim, "tensors": tensors}

    def apply(self, got: dict, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict:
        """Load what :meth:`read` returned; returns the JSON state (``step``, ``extra``) plus ``tensors``."""
        model.load_state_dict(got["model"])
        if optimizer is not None and got["optimizer"] is not None:
            optimizer.load_state_dict(got["optimizer"])
        t = got["tensors"]
        if "rng/torch" in t:
            torch.set_rng_state(t["rng/torch"])
        if "rng/cuda" in t and torch.cuda.is_available():
            torch.cuda.set_rng_state(t["rng/cuda"])
        state = dict(got["state"])
        state["tensors"] = {k[len("extra/"):]: v for k, v in t.items() if k.startswith("extra/")}
        state["path"] = got["path"]
        return state

    def load(self, path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict:
        """Restore checkpoint ``path`` in place (all or nothing); returns its JSON state (``step``, ``extra``)."""
        return self.apply(self.read(path, model, optimizer), model, optimizer)

    def load_latest(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict | None:
        """Restore the newest intact checkpoint (``None`` if there is none at all). A damaged newer one is
        reported on stderr and skipped; if every one is damaged, the error names the newest."""
        found = self.all()
        first_error = None
        for path in reversed(found):
            try:
                got = self.read(path, model, optimizer)
            except CheckpointError as e:
                first_error = first_error or e
                print(f"topotorch: checkpoint {path} is unusable ({e}); trying an older one", file=sys.stderr)
                continue
            if first_error is not None:
                print(f"topotorch: resuming from {path} instead", file=sys.stderr)
            return self.apply(got, model, optimizer)
        if first_error is not None:
            raise CheckpointError(f"no intact checkpoint in {self.dir}: {first_error}")
        return None


def png_tag(path, alt: str = "") -> str:
    """An ``<img>`` tag holding the PNG at ``path`` inline (a self-contained HTML page); a note when it is missing."""
    import base64
    import html
    p = Path(path)
    if not p.is_file():
        return "<p><em>figure missing</em></p>"
    data = base64.b64encode(p.read_bytes()).decode()
    return f'<img alt="{html.escape(alt or p.name)}" src="data:image/png;base64,{data}">'
