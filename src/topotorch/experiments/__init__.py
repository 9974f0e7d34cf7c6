"""Experiments behind the recipes: one module per family (config, run, analysis, figures), each registering
its runner with :func:`kind`. Library modules never import this package; ``topotorch.recipes`` does.

A runner is ``run(cfg, out, resume, progress) -> metrics`` for a config dataclass with at least ``seed``
and ``steps`` (``None`` = the recipe's default length), so ``--steps``, ``--seed`` and ``--resume`` mean the
same in every recipe.
"""
from __future__ import annotations

from ..registry import KINDS, kind  # noqa: F401  (recipe modules register with it)

# Every module of this package is imported by topotorch.registry.load(): a new recipe is a new module here (or
# one named in $TOPOTORCH_RECIPES) plus its YAML, with no import line to add.
