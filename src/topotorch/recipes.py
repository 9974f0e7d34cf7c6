"""Experiments as data: YAML recipes in ``topotorch/recipes`` run by a runner chosen by their ``kind``."""
from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable

import yaml

from .config import ConfigError, from_dict, load_yaml

__all__ = ["Recipe", "list_recipes", "load_recipe", "run_recipe", "RUNNERS"]


@dataclass
class Recipe:
    name: str
    kind: str
    description: str
    reproduces: str
    config: dict


def _no_resume(resume: bool) -> None:
    if resume:
        raise ConfigError("this recipe trains in well under a minute and keeps no checkpoints; run it without --resume")


def _runner_bimt(config: dict, out, resume: bool, progress: bool) -> dict:
    from .train import BIMTConfig, train_bimt
    return train_bimt(from_dict(BIMTConfig, config), out, resume=resume, progress=progress)


def _runner_locality(config: dict, out, resume: bool, progress: bool) -> dict:
    _no_resume(resume)
    from .experiments.locality import LocalityConfig, run_locality
    return run_locality(from_dict(LocalityConfig, config), out, progress=progress)


def _runner_spatial(config: dict, out, resume: bool, progress: bool) -> dict:
    _no_resume(resume)
    from .spatialnet import SpatialConfig, run_two_task
    return run_two_task(from_dict(SpatialConfig, config), out, progress=progress)


def _runner_topolm(config: dict, out, resume: bool, progress: bool) -> dict:
    from .topolm import TopoLMConfig, run_topolm
    return run_topolm(from_dict(TopoLMConfig, config), out, resume=resume, progress=progress)


def _runner_tdann(config: dict, out, resume: bool, progress: bool) -> dict:
    _no_resume(resume)
    from .experiments.tdann import TDANNConfig, run_tdann
    return run_tdann(from_dict(TDANNConfig, config), out, progress=progress)


# kind -> runner(config dict, out dir, resume, progress) -> metrics
RUNNERS: dict[str, Callable] = {"bimt": _runner_bimt, "locality-prior": _runner_locality,
                               "spatial-two-task": _runner_spatial, "topolm": _runner_topolm,
                               "tdann-cnn": _runner_tdann}


def _recipe_files() -> dict[str, Path]:
    root = resources.files("topotorch") / "recipes"
    return {Path(str(p)).stem: Path(str(p)) for p in root.iterdir() if str(p).endswith(".yaml")}


def list_recipes() -> list[Recipe]:
    return [load_recipe(n) for n in sorted(_recipe_files())]


def load_recipe(name_or_path: str) -> Recipe:
    """A packaged recipe by name, or a recipe YAML file by path."""
    files = _recipe_files()
    path = files.get(name_or_path)
    if path is None:
        p = Path(name_or_path)
        if p.suffix in (".yaml", ".yml") and p.is_file():
            path = p
        else:
            raise ConfigError(f"unknown recipe {name_or_path!r}; available: {', '.join(sorted(files))} "
                              "(or a path to a .yaml recipe)")
    try:
        d = load_yaml(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML ({e})") from None
    if not isinstance(d, dict) or "kind" not in d or not isinstance(d.get("config", {}), dict):
        raise ConfigError(f"{path}: a recipe needs 'kind' and a 'config' mapping")
    if d["kind"] not in RUNNERS:
        raise ConfigError(f"{path}: unknown recipe kind {d['kind']!r}; known: {sorted(RUNNERS)}")
    return Recipe(path.stem, d["kind"], d.get("description", ""), d.get("reproduces", ""), dict(d.get("config") or {}))


def run_recipe(name: str, out, overrides: dict | None = None, resume: bool = False,
               progress: bool = True) -> dict:
    """Run recipe ``name`` into ``out`` with ``overrides`` (keys of the recipe's config) applied."""
    r = load_recipe(name)
    cfg = dict(r.config)
    cfg.setdefault("recipe", r.name)
    for k, v in (overrides or {}).items():
        if "." in k:
            raise ConfigError(f"nested keys are not used by {r.kind} recipes: {k!r}")
        cfg[k] = v
    return RUNNERS[r.kind](cfg, out, resume, progress)
