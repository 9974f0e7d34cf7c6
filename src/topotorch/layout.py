"""Where a population of units lives.

A :class:`Layout` holds ``m`` slot positions (an ``(m, dim)`` tensor, arbitrary length units) and a
``fold``: ``n = fold * m`` units, unit ``u`` sitting at slot ``u % m`` (BIMT's in_fold/out_fold, several
groups such as q/k/v sharing the same places). Distances between two layouts are per *unit*.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

__all__ = ["Layout", "distance", "line", "grid", "square", "square_grid", "ring", "explicit", "proximity", "within",
           "POSITIONS", "positions_of", "set_positions", "split_positions"]

# The one name under which a module keeps the positions of its output units (a buffer: saved with the state dict).
POSITIONS = "topo_positions"


class Layout:
    """Positions of ``n = fold * m`` units on ``m`` slots.

    Args:
        coords: ``(m, dim)`` slot coordinates (or ``(m,)`` for 1D).
        fold: number of unit groups sharing the slots; must be ≥ 1.
        unique: require pairwise distinct slot coordinates.
    """

    def __init__(self, coords, fold: int = 1, unique: bool = False, kind: str = "explicit"):
        c = torch.as_tensor(coords, dtype=torch.float64)
        if c.dim() == 1:
            c = c[:, None]
        if c.dim() != 2:
            raise ValueError(f"layout coordinates must be (m, dim), got shape {tuple(c.shape)}")
        if c.shape[0] == 0 or c.shape[1] == 0:
            raise ValueError(f"empty layout: coordinates of shape {tuple(c.shape)}")
        if not torch.isfinite(c).all():
            bad = (~torch.isfinite(c)).any(1).nonzero().flatten().tolist()
            raise ValueError(f"layout coordinates contain NaN/inf at slots {bad[:10]}")
        if not isinstance(fold, int) or isinstance(fold, bool) or fold < 1:
            raise ValueError(f"fold must be a positive integer, got {fold!r}")
        if unique:
            _check_unique(c)
        self.coords = c
        self.fold = fold
        self.kind = kind

    # ---- sizes -------------------------------------------------------------------------------
    @property
    def m(self) -> int:
        """Number of slots (distinct positions)."""
        return self.coords.shape[0]

    @property
    def n(self) -> int:
        """Number of units, ``fold * m``."""
        return self.fold * self.m

    @property
    def dim(self) -> int:
        return self.coords.shape[1]

    def __len__(self) -> int:
        return self.n

    @property
    def unit_coords(self) -> torch.Tensor:
        """``(n, dim)`` position of every unit (slots repeated ``fold`` times)."""
        return self.coords.repeat(self.fold, 1)

    # ---- transforms --------------------------------------------------------------------------
    def permute(self, perm) -> "Layout":
        """Layout whose slot ``s`` has the old position of slot ``perm[s]``."""
        p = torch.as_tensor(perm, dtype=torch.long)
        if p.shape != (self.m,) or not torch.equal(p.sort().values, torch.arange(self.m)):
            raise ValueError(f"perm must be a permutation of range({self.m}), got shape {tuple(p.shape)}")
        return Layout(self.coords[p], fold=self.fold, kind=self.kind)

    def random_permutation(self, generator: torch.Generator | None = None) -> "Layout":
        """The same positions shuffled among slots (TopoLM's default placement)."""
        return self.permute(torch.randperm(self.m, generator=generator))

    # ---- persistence -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"kind": self.kind, "fold": self.fold, "coords": self.coords.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "Layout":
        for key in ("fold", "coords"):
            if key not in d:
                raise ValueError(f"layout dict is missing {key!r}")
        return cls(d["coords"], fold=int(d["fold"]), kind=d.get("kind", "explicit"))

    def save(self, path) -> None:
        """Write the layout as JSON (atomically)."""
        from .io import write_json
        write_json(path, self.to_dict(), indent=None)

    @classmethod
    def load(cls, path) -> "Layout":
        from .io import read_json
        return cls.from_dict(read_json(path, "layout file"))

    def __eq__(self, other) -> bool:
        return isinstance(other, Layout) and self.fold == other.fold and torch.equal(self.coords, other.coords)

    def __repr__(self) -> str:
        return f"Layout(kind={self.kind!r}, m={self.m}, dim={self.dim}, fold={self.fold})"


def _check_unique(c: torch.Tensor) -> None:
    uniq, counts = torch.unique(c, dim=0, return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"layout has duplicate coordinates, e.g. {uniq[counts > 1][0].tolist()}")


def _fold_split(n: int, fold: int) -> int:
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"empty layout: need at least one unit, got n={n!r}")
    if not isinstance(fold, int) or fold < 1:
        raise ValueError(f"fold must be a positive integer, got {fold!r}")
    if n % fold:
        raise ValueError(f"fold {fold} does not divide the number of units {n}")
    return n // fold


def line(n: int, fold: int = 1) -> Layout:
    """BIMT's 1D layout: ``n/fold`` slots at ``linspace(1/2m, 1 - 1/2m, m)`` in [0, 1]."""
    m = _fold_split(n, fold)
    return Layout(torch.linspace(1 / (2 * m), 1 - 1 / (2 * m), m, dtype=torch.float64), fold, kind="line")


def grid(height: int, width: int | None = None, fold: int = 1, spacing: float | None = None) -> Layout:
    """A ``height × width`` grid, row-major (unit = row * width + col).

    By default cell centres in [0, 1]² (BIMT's convention); with ``spacing`` the cells sit at integer
    multiples of it (``spacing=1``: coordinates in cells, as the locality-prior and TopoLM sheets).
    """
    width = height if width is None else width
    if height < 1 or width < 1:
        raise ValueError(f"empty layout: grid {height}×{width}")
    if spacing is not None:
        if not spacing > 0:
            raise ValueError(f"grid spacing must be positive, got {spacing}")
        ys = torch.arange(height, dtype=torch.float64) * spacing
        xs = torch.arange(width, dtype=torch.float64) * spacing
    else:
        ys = torch.linspace(1 / (2 * height), 1 - 1 / (2 * height), height, dtype=torch.float64)
        xs = torch.linspace(1 / (2 * width), 1 - 1 / (2 * width), width, dtype=torch.float64)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return Layout(torch.stack([xx.flatten(), yy.flatten()], 1), fold, kind="grid")


def square_grid(n: int, fold: int = 1) -> Layout:
    """A grid for ``n`` units (``n/fold`` slots) with the most square shape h ≤ w, h·w = m."""
    m = _fold_split(n, fold)
    h = int(math.isqrt(m))
    while m % h:
        h -= 1
    return grid(h, m // h, fold)


def square(n: int, spacing: float = 1.0, fold: int = 1) -> Layout:
    """A √m × √m grid for ``n = fold·m`` units; ``m`` must be a perfect square (e.g. 49 → 7×7)."""
    m = _fold_split(n, fold)
    side = math.isqrt(m)
    if side * side != m:
        raise ValueError(f"a square grid needs a perfect square number of units, got {m} (non-square grid)")
    return grid(side, side, fold, spacing=spacing)


def ring(n: int, radius: float = 0.25, center: Sequence[float] = (0.5, 0.5), fold: int = 1) -> Layout:
    """``n/fold`` slots evenly on a circle (BIMT's MNIST output layer)."""
    m = _fold_split(n, fold)
    if not radius > 0:
        raise ValueError(f"ring radius must be positive, got {radius}")
    t = torch.arange(m, dtype=torch.float64) * (2 * math.pi / m)
    c = torch.stack([center[0] + radius * torch.cos(t), center[1] + radius * torch.sin(t)], 1)
    return Layout(c, fold, kind="ring")


def explicit(coords, fold: int = 1, unique: bool = True) -> Layout:
    """A layout from given slot coordinates; duplicates are refused unless ``unique=False``."""
    return Layout(coords, fold=fold, unique=unique, kind="explicit")


def distance(a: Layout, b: Layout, p: float = 2.0, gap: float = 0.0) -> torch.Tensor:
    """Unit-to-unit distances, ``(a.n, b.n)``, float64.

    ``p`` is the norm (1 = L1 as BIMT's 2D layers, 2 = Euclidean, ``inf`` = sup-norm); ``gap`` is the
    spacing between the two layers' planes (BIMT's l0), added as one more coordinate difference.
    """
    if a.dim != b.dim:
        raise ValueError(f"layouts live in different dimensions: {a.dim} vs {b.dim}")
    if not p > 0:
        raise ValueError(f"p must be positive, got {p}")
    diff = (a.coords[:, None, :] - b.coords[None, :, :]).abs()
    if gap:
        diff = torch.cat([diff, torch.full_like(diff[..., :1], abs(float(gap)))], -1)
    if math.isinf(p):
        d = diff.amax(-1)
    elif p == 1:
        d = diff.sum(-1)
    else:
        d = diff.pow(p).sum(-1).pow(1 / p)
    return d.repeat(a.fold, b.fold)


def proximity(d):
    """TopoLM's and TDANN's target for response correlations, ``1 / (1 + d)``, of distances ``d`` (tensor or
    array); the one definition every loss, search and prior uses."""
    return 1.0 / (1.0 + d)


def within(a, b, radius: float):
    """``(len(a), len(b))`` mask of the unit pairs within ``radius`` of each other in every coordinate (a sup-norm
    window: TopoLM's and TDANN's square neighbourhoods) for coordinates ``a (n_a, dim)``, ``b (n_b, dim)``,
    tensors or arrays."""
    diff = a[:, None, :] - b[None, :, :]
    if isinstance(diff, torch.Tensor):
        return diff.abs().amax(-1) <= radius + 1e-9
    import numpy as np
    return np.abs(diff).max(-1) <= radius + 1e-9


def positions_of(module) -> "torch.Tensor | None":
    """The ``(n, dim)`` positions ``module`` keeps for its output units (its :data:`POSITIONS` buffer, or parameter
    when they are learned), or None."""
    got = module._buffers.get(POSITIONS)
    return got if got is not None else module._parameters.get(POSITIONS)


def set_positions(module, coords, dtype: torch.dtype = torch.float32) -> None:
    """Give ``module``'s output units positions ``(n, dim)`` (a buffer of ``dtype`` on the module's device),
    replacing any it had. Buffers are saved with ``state_dict`` and restored by ``load_state_dict``. A neuron graph
    keeps its layouts in float64 (BIMT's wiring cost is computed in float64); a topography in float32."""
    c = torch.as_tensor(coords.unit_coords if isinstance(coords, Layout) else coords).to(dtype)
    ref = next(iter(module.parameters()), None)
    module.register_buffer(POSITIONS, c.to(ref.device if ref is not None else "cpu"))


def split_positions(state: dict) -> tuple[dict, dict]:
    """A state dict split into ``{module path: (n, dim) positions}`` and the rest (for a model built without the
    position buffers)."""
    suffix = "." + POSITIONS
    pos = {k[:-len(suffix)]: v for k, v in state.items() if k.endswith(suffix)}
    return pos, {k: v for k, v in state.items() if not k.endswith(suffix)}
