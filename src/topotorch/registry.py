"""Where recipes register what they bring, so that no library module names a recipe.

A recipe is one Python module plus one YAML. The module registers, at import:

- its runner and config dataclass: ``@kind("name", Config, figures=…)`` (``figures``: the task and topography
  figures a sweep plots, ``(task label, fn(metrics), topography label or None, fn(metrics))``);
- the published claims ``reproduce`` checks: ``claims(Claim(…), …)``; claims measured on real data found in a
  ``--data`` folder: ``@data_claims`` on ``fn(folder) -> [Claim]``; task-vs-topography fronts:
  ``@front`` on ``fn(quick, folder) -> [(name, recipe, grid, fixed, data label)]``;
- command-line subcommands: ``@command("name", help, add_arguments)`` on ``handler(args) -> exit code``.

Its YAML sits in ``topotorch/recipes/`` or in a folder given as ``kind(…, recipes=folder)``. :func:`load`
imports every module of ``topotorch.experiments`` and the modules named in the ``TOPOTORCH_RECIPES``
environment variable (comma-separated, importable names), so a recipe outside this package is one module and
one YAML too.
"""
from __future__ import annotations

import importlib
import os
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

__all__ = ["Claim", "kind", "claims", "data_claims", "front", "command", "load", "KINDS", "CLAIMS", "DATA_CLAIMS",
           "FRONTS", "FIGURES", "COMMANDS", "RECIPE_DIRS", "REPLICAS", "NotBatchable"]


@dataclass
class Claim:
    """A published claim, how it is measured on one run's ``metrics.json``, and whether it holds there."""
    system: str
    recipe: str
    published: str
    measured: Callable[[dict], str]
    holds: Callable[[dict], bool]
    figure: str
    overrides: dict
    quick: dict
    run_as: str = ""  # run directory name when a recipe appears twice
    data: str = "offline default"  # the data the claim is measured on (named in the report)
    figures: Callable[[dict], dict] = lambda m: {}  # named numbers of one run, summarised as mean ± sd over seeds
    full_only: bool = False  # too long for --quick: run in full mode (or when named with --only)


KINDS: dict[str, tuple[type, Callable]] = {}
FIGURES: dict[str, tuple] = {}
CLAIMS: list[Claim] = []
DATA_CLAIMS: list[Callable] = []
FRONTS: list[Callable] = []
COMMANDS: dict[str, tuple[str, Callable, Callable]] = {}
RECIPE_DIRS: list[Path] = []
REPLICAS: dict[str, Callable] = {}


class NotBatchable(Exception):
    """Raised by a replicas runner, before it touches anything, for configs it cannot train as one batch."""


def kind(name: str, config: type, figures: tuple | None = None, recipes=None, replicas: Callable | None = None):
    """Register ``fn(cfg, out, resume, progress) -> metrics`` as the runner of recipes whose ``kind`` is ``name``.

    ``replicas``: ``fn(cfgs, outs, root, resume, progress) -> [metrics]`` training several seeds of one config as one
    batched program (:mod:`topotorch.replicas`), each run's directory as a single run would write it; it raises
    :class:`NotBatchable` (then the seeds run one by one) for configs it cannot batch."""
    def deco(fn: Callable) -> Callable:
        if name in KINDS:
            raise ValueError(f"recipe kind {name!r} is registered twice")
        KINDS[name] = (config, fn)
        if replicas is not None:
            REPLICAS[name] = replicas
        if figures is not None:
            FIGURES[name] = figures
        if recipes is not None and Path(recipes) not in RECIPE_DIRS:
            RECIPE_DIRS.append(Path(recipes))
        return fn
    return deco


def claims(*cs: Claim) -> None:
    """Add claims to those ``topotorch reproduce`` checks (in registration order)."""
    CLAIMS.extend(cs)


def data_claims(fn: Callable) -> Callable:
    DATA_CLAIMS.append(fn)
    return fn


def front(fn: Callable) -> Callable:
    FRONTS.append(fn)
    return fn


def command(name: str, help: str, add_arguments: Callable = lambda p: None):
    """Register ``handler(args) -> int`` as ``topotorch NAME``; ``add_arguments(parser)`` declares its flags."""
    def deco(fn: Callable) -> Callable:
        if name in COMMANDS:
            raise ValueError(f"command {name!r} is registered twice")
        COMMANDS[name] = (help, add_arguments, fn)
        return fn
    return deco


def load() -> None:
    """Import every recipe module (idempotent): ``topotorch.experiments.*`` and ``$TOPOTORCH_RECIPES``."""
    from . import experiments
    for m in pkgutil.iter_modules(experiments.__path__):
        importlib.import_module(f"{experiments.__name__}.{m.name}")
    for name in filter(None, (s.strip() for s in os.environ.get("TOPOTORCH_RECIPES", "").split(","))):
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ImportError(f"TOPOTORCH_RECIPES names {name!r}, which cannot be imported ({e})") from None
