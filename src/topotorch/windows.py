"""Sup-norm windows of a sheet (TopoLM's and TDANN's square neighbourhoods), in memory that grows with the units
and the windows asked for, never with n² of the sheet.

A window around unit ``c`` holds the units within ``radius`` of it in every coordinate, sorted by unit index. Two
indexes serve it:

- a *lattice* (every cell of an ``nx × ny`` grid holds exactly one unit, e.g. TopoLM's sheets, permuted or not):
  the windows that are not clipped by the edge all have one shape, so sampled windows are gathered as one
  ``(k, m)`` table (members ordered by their offset from the centre, x-major) — O(n) memory;
- any other layout (TDANN's retinotopic sheets): units bucketed in square cells of side ``radius``; a window reads
  the 3 × 3 cells around its centre — O(n) memory, O(window) time.
"""
from __future__ import annotations

import torch

__all__ = ["Windows"]


def _axis(values: torch.Tensor) -> tuple[torch.Tensor, float] | None:
    """Lattice indices of 1D ``values`` if they sit on an equally spaced axis (a spacing > 0), else None."""
    u = torch.unique(values)
    if len(u) == 1:
        return torch.zeros(len(values), dtype=torch.long), 1.0
    step = (u[-1] - u[0]) / (len(u) - 1)
    if not torch.allclose(u, u[0] + step * torch.arange(len(u), dtype=u.dtype), rtol=0, atol=1e-9 * float(step) + 1e-12):
        return None
    return torch.round((values - u[0]) / step).long(), float(step)


class Windows:
    """The sup-norm windows of radius ``radius`` of unit coordinates ``coords (n, dim)``.

    Attributes:
        regular: whether the sheet is a lattice whose full windows share one shape (then :meth:`table` works).
        count: number of full windows (lattice) or of possible centres (every unit).
        m: units per full window (lattice only).
    """

    def __init__(self, coords: torch.Tensor, radius: float):
        c = torch.as_tensor(coords, dtype=torch.float64)
        if c.dim() != 2:
            raise ValueError(f"coords must be (n, dim), got {tuple(c.shape)}")
        self.coords, self.radius, self.n = c, float(radius), c.shape[0]
        self.regular = False
        if c.shape[1] <= 2:
            self._try_lattice(c)
        self._cells(c)
        if not self.regular:
            self.count = self.n

    # ---- lattices: one window shape, gathered in a batch --------------------------------------------------
    def _try_lattice(self, c: torch.Tensor) -> None:
        axes = [_axis(c[:, d]) for d in range(c.shape[1])]
        if any(a is None for a in axes):
            return
        idx = torch.stack([a[0] for a in axes], 1)                     # (n, dim) lattice coordinates
        shape = (idx.max(0).values + 1).tolist()
        if int(torch.tensor(shape).prod()) != self.n:
            return
        flat = idx[:, 0] if len(shape) == 1 else idx[:, 1] * shape[0] + idx[:, 0]
        cell_unit = torch.full((self.n,), -1, dtype=torch.long)
        cell_unit[flat] = torch.arange(self.n)
        if (cell_unit < 0).any():  # two units share a cell
            return
        reach = [int(torch.floor(torch.tensor(self.radius / a[1] + 1e-9))) for a in axes]
        # Per unit, the window's extent after clipping at the edges; the full windows are the largest ones.
        lo = torch.stack([(idx[:, d] - reach[d]).clamp_min(0) - idx[:, d] for d in range(len(shape))], 1)
        hi = torch.stack([(idx[:, d] + reach[d]).clamp_max(shape[d] - 1) - idx[:, d] for d in range(len(shape))], 1)
        size = (hi - lo + 1).prod(1)
        full = size == size.max()
        ext = (hi - lo)[full]
        if not (ext == ext[:1]).all():  # the largest windows differ in shape (radius beyond half the sheet)
            return
        # Sorted by their offset from the centre (x-major), the members of equal-extent windows sit at equal
        # relative places, so one distance matrix serves all (as translation invariance on a lattice gives).
        ranges = [torch.arange(int(ext[0, d]) + 1) for d in range(len(shape))]
        off = torch.stack(torch.meshgrid(*ranges, indexing="ij"), -1).reshape(-1, len(shape))
        self.regular, self.shape, self.offsets = True, shape, off
        self.start = idx + lo                                           # (n, dim) first cell of each unit's window
        self.cell_unit = cell_unit
        self.centres = torch.nonzero(full).flatten()                    # unit ids, ascending
        self.count, self.m = len(self.centres), len(off)

    def table(self, picks: torch.Tensor) -> torch.Tensor:
        """Members ``(..., m)`` of the full windows numbered ``picks`` (indices into :attr:`centres`); lattice only."""
        if not self.regular:
            raise ValueError("table() needs a lattice sheet; use members() for windows of varying size")
        return gather_windows(self.start, self.cell_unit, self.centres, self.offsets, self.shape, picks)

    # ---- any layout: a cell index ---------------------------------------------------------------------------
    def _cells(self, c: torch.Tensor) -> None:
        side = max(self.radius, 1e-12)
        self.lo = c.min(0).values
        key = torch.floor((c - self.lo) / side).long()                  # (n, dim) cell of each unit
        self.span = key.max(0).values + 3
        flat = self._flat(key)
        self.order = torch.argsort(flat, stable=True)
        self.sorted_keys = flat[self.order]
        self.cell = key

    def _flat(self, key: torch.Tensor) -> torch.Tensor:
        flat = torch.zeros(key.shape[:-1], dtype=torch.long)
        for d in range(key.shape[-1]):
            flat = flat * int(self.span[d]) + key[..., d] + 1  # +1: the neighbours of cell 0 stay ≥ 0
        return flat

    def members(self, centre: int) -> torch.Tensor:
        """Unit ids (ascending) within ``radius`` of unit ``centre`` in every coordinate."""
        dim = self.cell.shape[1]
        steps = torch.stack(torch.meshgrid(*[torch.arange(-1, 2)] * dim, indexing="ij"), -1).reshape(-1, dim)
        keys = self._flat(self.cell[centre] + steps)
        lo = torch.searchsorted(self.sorted_keys, keys)
        hi = torch.searchsorted(self.sorted_keys, keys, right=True)
        cand = torch.cat([self.order[a:b] for a, b in zip(lo.tolist(), hi.tolist())])
        ok = ((self.coords[cand] - self.coords[centre]).abs().amax(-1) <= self.radius + 1e-9)
        return cand[ok].sort().values


def gather_windows(start, cell_unit, centres, offsets, shape, picks):
    """Members of lattice windows: ``start (…, n, dim)`` first cell of each unit's window, ``cell_unit (…, cells)``
    the unit in each cell, ``centres (…, W)`` unit ids, ``offsets (m, dim)`` cells within a window, ``picks (…, k)``
    → ``(…, k, m)`` unit ids. Leading dimensions (sheets of one group) match; every tensor on one device."""
    c = centres.gather(-1, picks)                                                     # (…, k)
    base = start.gather(-2, c[..., None].expand(*c.shape, start.shape[-1]))           # (…, k, dim)
    pos = base[..., None, :] + offsets                                                # (…, k, m, dim)
    flat = pos[..., 0] if len(shape) == 1 else pos[..., 1] * shape[0] + pos[..., 0]
    return cell_unit.gather(-1, flat.flatten(-2)).view(flat.shape)
