"""Experiments behind the recipes: one module per family (config, run, analysis, figures), each registering
its runner with :func:`kind`. Library modules never import this package; ``topotorch.recipes`` does.

A runner is ``run(cfg, out, resume, progress) -> metrics`` for a config dataclass with at least ``seed``
and ``steps`` (``None`` = the recipe's default length), so ``--steps``, ``--seed`` and ``--resume`` mean the
same in every recipe.
"""
from __future__ import annotations

from typing import Callable

KINDS: dict[str, tuple[type, Callable]] = {}


def kind(name: str, config: type):
    """Register ``fn(cfg, out, resume, progress)`` as the runner of recipes whose ``kind`` is ``name``."""
    def deco(fn: Callable) -> Callable:
        if name in KINDS:
            raise ValueError(f"recipe kind {name!r} is registered twice")
        KINDS[name] = (config, fn)
        return fn
    return deco


from . import bimt, gptbimt, incontext, locality, spatialnet, tdann, topolm, toponets  # noqa: E402,F401  (each registers its kind)
