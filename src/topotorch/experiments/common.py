"""Pieces shared by experiment runners: run-directory setup, data by name, JSON output."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from .. import data as D
from ..layout import atomic_write_text


def start_run(cfg, out) -> Path:
    """Create ``out``, pin the thread count, write ``config.json``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    atomic_write_text(out / "config.json", json.dumps({"config": dataclasses.asdict(cfg)}, indent=1))
    return out


def write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1))


# name -> loader(seed, data_dir, download, flat) -> Split. Register your own to use it in recipes.
DATASETS = {
    "digits": lambda seed, data_dir, download, flat: D.digits(seed, flat=flat),
    "mnist": lambda seed, data_dir, download, flat: D.mnist(data_dir, seed, download=download, flat=flat),
    "mnist1d": lambda seed, data_dir, download, flat: D.mnist1d(seed, flat=True),
}


def load_dataset(name: str, seed: int, data_dir: str = "data/mnist", download: bool = True, flat: bool = False):
    """A classification :class:`~topotorch.data.Split` by name (a key of :data:`DATASETS`)."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from {sorted(DATASETS)} or register one in DATASETS")
    return DATASETS[name](seed, data_dir, download, flat)
