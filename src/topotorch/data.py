"""Datasets. Everything here works offline; real downloads live beside the offline defaults."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Split", "SYMBOLIC", "symbolic"]


@dataclass
class Split:
    """Train and test tensors of a supervised task: ``x (N, d_in)``, ``y (N, d_out)``."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    input_names: list[str]
    output_names: list[str]


def _independence(x):
    x1, x2, x3, x4 = x.T
    return np.stack([(x1 + x3) ** 3, x2 ** 2 + np.sin(np.pi * x4)], 1)


def _feature_sharing(x):
    x1, x2, x3 = x.T
    return np.stack([x1 ** 2, x1 ** 2 + x2 ** 2, x1 ** 2 + x2 ** 2 + x3 ** 2], 1)


def _compositionality(x):
    x1, x2, x3, x4 = x.T
    return np.sqrt((x1 - x2) ** 2 + (x3 - x4) ** 2)[:, None]


# name -> (input dimension, function, LaTeX of each output) — the three tasks of seed 003 (BIMT §3.1).
SYMBOLIC = {
    "independence": (4, _independence, [r"$(x_1+x_3)^3$", r"$x_2^2+\sin(\pi x_4)$"]),
    "feature-sharing": (3, _feature_sharing, [r"$x_1^2$", r"$x_1^2+x_2^2$", r"$x_1^2+x_2^2+x_3^2$"]),
    "compositionality": (4, _compositionality, [r"$\sqrt{(x_1-x_2)^2+(x_3-x_4)^2}$"]),
}


def symbolic(name: str, seed: int, n_train: int = 100, n_test: int = 100,
             dtype: torch.dtype = torch.float32) -> Split:
    """A symbolic-formula regression task with inputs uniform in [-1, 1], drawn as in seed 003.

    The draws follow ``np.random.seed(seed); rand(n_train, d)*2-1; rand(n_test, d)*2-1`` so a recipe with
    the notebook's seed sees the notebook's data.
    """
    if name not in SYMBOLIC:
        raise ValueError(f"unknown symbolic task {name!r}; choose from {sorted(SYMBOLIC)}")
    if n_train < 1 or n_test < 1:
        raise ValueError("n_train and n_test must be positive")
    d, f, outs = SYMBOLIC[name]
    rs = np.random.RandomState(seed)
    xtr = rs.rand(n_train, d) * 2 - 1
    xte = rs.rand(n_test, d) * 2 - 1
    t = lambda a: torch.tensor(a, dtype=dtype)
    return Split(t(xtr), t(f(xtr)), t(xte), t(f(xte)), [f"$x_{i + 1}$" for i in range(d)], list(outs))
