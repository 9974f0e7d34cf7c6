"""Statistics of maps on a sheet: Moran's I with a permutation test, smoothing, selectivity and patches.

A *map* is one value per unit ``(n,)``; positions are a :class:`~topotorch.layout.Layout` or an ``(n, dim)``
array in cells. Neighbours are units within ``radius`` cells in every coordinate (queen contiguity on a grid
of unit cells; on a retinotopic sheet, about the eight nearest units). Everything is sparse: memory grows
with the number of neighbour pairs, not with n², so a 200k-unit sheet is fine.
"""
from __future__ import annotations

import numpy as np
from scipy import sparse, stats
from scipy.spatial import cKDTree

__all__ = ["coords_of", "neighbours", "morans_i", "morans_i_test", "morans_i_tests", "smooth_map", "smooth_maps",
           "is_grid", "welch_t", "fdr", "dprime", "patches", "binned_curve", "pair_sample", "pair_distance", "connections",
           "pooled_positions", "wiring_length"]


def coords_of(layout_or_coords) -> np.ndarray:
    """``(n, dim)`` float64 unit coordinates of a Layout (its ``unit_coords``), a tensor or an array."""
    c = getattr(layout_or_coords, "unit_coords", layout_or_coords)
    c = np.asarray(c.detach().cpu() if hasattr(c, "detach") else c, dtype=np.float64)
    if c.ndim == 1:
        c = c[:, None]
    if c.ndim != 2 or len(c) == 0:
        raise ValueError(f"positions must be (units, dim), got shape {c.shape}")
    return c


def is_grid(layout_or_coords) -> bool:
    """Whether every unit sits on an integer cell of a 2D grid, one unit per cell (TopoLM's sheets)."""
    c = coords_of(layout_or_coords)
    if c.shape[1] != 2 or not np.allclose(c, np.rint(c), atol=1e-6):
        return False
    return len(np.unique(np.rint(c).astype(np.int64), axis=0)) == len(c)


def neighbours(layout_or_coords, radius: float = 1.0) -> sparse.csr_matrix:
    """Row-standardised spatial weights ``(n, n)``: ``1/k_i`` for the ``k_i`` units within ``radius`` of unit
    ``i`` in every coordinate (sup norm), 0 on the diagonal and for units without neighbours (as PySAL)."""
    c = coords_of(layout_or_coords)
    pairs = cKDTree(c).query_pairs(radius * (1 + 1e-9), p=np.inf, output_type="ndarray")
    n = len(c)
    i = np.concatenate([pairs[:, 0], pairs[:, 1]])
    j = np.concatenate([pairs[:, 1], pairs[:, 0]])
    W = sparse.csr_matrix((np.ones(len(i)), (i, j)), shape=(n, n))
    k = np.asarray(W.sum(1)).ravel()
    return sparse.diags(np.divide(1.0, k, out=np.zeros(n), where=k > 0)) @ W


def _morans(Z: np.ndarray, W: sparse.csr_matrix) -> np.ndarray:
    """Moran's I of each column of ``Z (n, k)``."""
    Z = Z - Z.mean(0, keepdims=True)
    den = (Z * Z).sum(0)
    s0 = W.sum()
    num = (Z * (W @ Z)).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = Z.shape[0] / s0 * num / den
    return np.where(den > 0, out, 0.0) if s0 > 0 else np.zeros(Z.shape[1])


def morans_i(values, layout_or_coords, radius: float = 1.0, W: sparse.csr_matrix | None = None) -> float:
    """Moran's I = (n / S0) · zᵀWz / zᵀz with :func:`neighbours` weights (PySAL esda's value); 0 for a
    constant map."""
    x = np.asarray(values, dtype=np.float64).ravel()
    W = neighbours(layout_or_coords, radius) if W is None else W
    if len(x) != W.shape[0]:
        raise ValueError(f"{len(x)} values for {W.shape[0]} positions")
    return float(_morans(x[:, None], W)[0])


def smooth_map(values, layout_or_coords, fwhm: float) -> np.ndarray:
    """A map smoothed by a Gaussian of ``fwhm`` cells, returned per unit in the units' order.

    On a grid of unit cells (TopoLM's sheets) this is the renormalised convolution TopoLM used (scipy's
    ``gaussian_filter``, edges renormalised); on any other layout, the Gaussian-weighted mean of the units
    within 4σ (sparse)."""
    x = np.asarray(values, dtype=np.float64).ravel()
    return smooth_maps(x[:, None], layout_or_coords, fwhm)[:, 0]


def smooth_maps(Z, layout_or_coords, fwhm: float) -> np.ndarray:
    """:func:`smooth_map` of every column of ``Z (n, k)`` at once (one kernel for all maps), ``(n, k)``."""
    Z = np.asarray(Z, dtype=np.float64)
    c = coords_of(layout_or_coords)
    if Z.ndim != 2 or len(Z) != len(c):
        raise ValueError(f"{len(Z)} values for {len(c)} positions" if Z.ndim == 2 else
                         f"maps must be (units, k), got shape {Z.shape}")
    return _smoother(c, fwhm)(Z)


def _smoother(c: np.ndarray, fwhm: float):
    """``Z (n, k) → Z`` smoothed by a Gaussian of ``fwhm`` cells on layout ``c`` (see :func:`smooth_map`): built once,
    applied to any number of stacks of maps."""
    if not fwhm > 0:
        raise ValueError(f"fwhm must be positive, got {fwhm}")
    if is_grid(c):
        return lambda Z: _smooth_grid_columns(Z, c, fwhm)
    return _GaussSmoother(c, fwhm / (2 * np.sqrt(2 * np.log(2))))


def _smooth_grid_columns(Z: np.ndarray, c: np.ndarray, fwhm: float) -> np.ndarray:
    """:func:`smooth_map` of every column of ``Z (n, k)`` on a grid layout, as one filter over a stack of images."""
    from scipy.ndimage import gaussian_filter
    sigma = fwhm / (2 * np.sqrt(2 * np.log(2)))
    g = np.rint(c).astype(int)
    g -= g.min(0)
    shape = tuple(g.max(0)[::-1] + 1)
    img, mask = np.zeros((Z.shape[1],) + shape), np.zeros(shape)
    img[:, g[:, 1], g[:, 0]], mask[g[:, 1], g[:, 0]] = Z.T, 1.0
    sm = gaussian_filter(img, (0, sigma, sigma), mode="constant")
    norm = np.maximum(gaussian_filter(mask, sigma, mode="constant"), 1e-12)
    return (sm / norm)[:, g[:, 1], g[:, 0]].T


# kernel entries held at once when smoothing a scattered layout; above it the kernel is applied block by block
KERNEL_ENTRIES = 20_000_000


class _GaussSmoother:
    """The row-normalised Gaussian kernel of :func:`_gauss_kernel` applied to ``(n, k)`` values. When the
    kernel would hold more than :data:`KERNEL_ENTRIES` entries (a wide ``fwhm`` on a large sheet: TDANN's patch
    smoothing at 4 % of a 200k-unit sheet's extent has ~3,000 neighbours per unit), it is formed and applied for one
    block of units at a time, so memory stays ∝ block × neighbours instead of n × neighbours (equal to the whole
    kernel's product to ~1e-15 relative)."""

    def __init__(self, c: np.ndarray, sigma: float):
        self.c, self.sigma, self.tree = c, sigma, cKDTree(c)
        n = len(c)
        probe = np.random.RandomState(0).choice(n, min(n, 2000), replace=False)
        self.neighbours = float(self.tree.query_ball_point(c[probe], 4 * sigma, return_length=True).mean())
        self.K = _gauss_kernel(c, sigma, self.tree) if self.neighbours * n <= KERNEL_ENTRIES else None

    def __call__(self, Z: np.ndarray) -> np.ndarray:
        """``Z (n, k)`` smoothed."""
        if self.K is not None:
            return np.asarray(self.K @ Z)
        c, n = self.c, len(self.c)
        block = max(1, int(KERNEL_ENTRIES // 4 / max(1.0, self.neighbours)))
        out = np.empty(Z.shape, dtype=np.float64)
        for s in range(0, n, block):
            near = self.tree.query_ball_point(c[s:s + block], 4 * self.sigma)
            rows = np.repeat(np.arange(len(near)), [len(v) for v in near])
            cols = np.concatenate([np.asarray(v, dtype=np.int64) for v in near])
            w = np.exp(-0.5 * (pair_distance(c, rows + s, c, cols) / self.sigma) ** 2)  # the unit itself: exp(0) = 1
            K = sparse.csr_matrix((w, (rows, cols)), shape=(len(near), n))
            K = sparse.diags(1.0 / np.asarray(K.sum(1)).ravel()) @ K
            out[s:s + block] = K @ Z
        return out


def _gauss_kernel(c: np.ndarray, sigma: float, tree=None) -> sparse.csr_matrix:
    tree = cKDTree(c) if tree is None else tree
    D = tree.sparse_distance_matrix(tree, 4 * sigma, output_type="coo_matrix")
    other = D.row != D.col  # the unit itself once, weight exp(0) = 1, whether or not scipy lists the zero-distance pair
    w = np.exp(-0.5 * (D.data[other] / sigma) ** 2)
    K = (sparse.csr_matrix((w, (D.row[other], D.col[other])), shape=D.shape)
         + sparse.identity(len(c), format="csr"))
    return sparse.diags(1.0 / np.asarray(K.sum(1)).ravel()) @ K


def morans_i_test(values, layout_or_coords, permutations: int = 999, seed: int = 0, fwhm: float | None = None,
                  radius: float = 1.0, chunk: int = 64) -> dict:
    """Moran's I of a map next to a shuffled-position null: the same values on permuted positions (smoothed
    after shuffling when ``fwhm`` is given, so that smoothing alone is in the null too).

    Returns ``{"i", "null_mean", "null_sd", "p_value", "permutations", "null" (the null values)}``; ``p_value`` is one-sided (positive
    autocorrelation, i.e. topography): ``(1 + #{I_null ≥ I}) / (1 + permutations)``. Permutation ``k`` is the
    ``k``-th ``RandomState(seed).permutation(n)``, so a direct loop reproduces it."""
    return morans_i_tests([values], layout_or_coords, permutations, seed, (fwhm,), radius, chunk)[0][0]


def morans_i_tests(maps, layout_or_coords, permutations: int = 999, seed: int = 0, fwhms=(None,),
                   radius: float = 1.0, chunk: int = 64) -> list[list[dict]]:
    """:func:`morans_i_test` of several maps on one sheet (``maps``: a sequence of ``(n,)`` maps), unsmoothed
    and/or smoothed (``fwhms``, ``None`` for unsmoothed): ``result[f][k]`` equals ``morans_i_test(maps[k], …,
    fwhm=fwhms[f])`` to the last bit. The neighbour weights, smoothing kernel and permutations (the same seeded
    sequence for every map) are computed once — a category probe tests one map per category, raw and smoothed."""
    xs = [np.asarray(v, dtype=np.float64).ravel() for v in maps]
    c = coords_of(layout_or_coords)
    for x in xs:
        if len(x) != len(c):
            raise ValueError(f"{len(x)} values for {len(c)} positions")
    if permutations < 1:
        raise ValueError(f"permutations must be ≥ 1, got {permutations}")
    n = len(c)
    W = neighbours(c, radius)
    smooth = {f: _smoother(c, f) for f in fwhms if f}  # each kernel built once, for the maps and their shuffles
    obs = [[float(_morans(smooth[f](x[:, None]) if f else x[:, None], W)[0]) for x in xs] for f in fwhms]
    rs = np.random.RandomState(seed)
    null = [[[] for _ in xs] for _ in fwhms]
    for start in range(0, permutations, chunk):
        perms = [rs.permutation(n) for _ in range(min(chunk, permutations - start))]
        for k, x in enumerate(xs):
            Z = np.stack([x[p] for p in perms], 1)
            for a, f in enumerate(fwhms):
                null[a][k].append(_morans(smooth[f](Z) if f else Z, W))
    out = []
    for a in range(len(fwhms)):
        row = []
        for k in range(len(xs)):
            nl, o = np.concatenate(null[a][k]), obs[a][k]
            row.append({"i": o, "null_mean": float(nl.mean()), "null_sd": float(nl.std(ddof=1)) if len(nl) > 1 else 0.0,
                        "p_value": float((1 + (nl >= o - 1e-12).sum()) / (1 + len(nl))), "permutations": int(len(nl)),
                        "null": nl})
        out.append(row)
    return out


def welch_t(a, b) -> tuple[np.ndarray, np.ndarray]:
    """Per-unit Welch t statistic and two-sided p of condition ``a (N_a, n)`` vs ``b (N_b, n)``; units with no
    variance in either condition get t = 0, p = 1."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"conditions must be (samples, units) with equal units, got {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"each condition needs at least two samples, got {len(a)} and {len(b)}")
    import warnings
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # constant units: handled below (t = 0, p = 1)
        t, p = stats.ttest_ind(a, b, axis=0, equal_var=False)
    return np.nan_to_num(t), np.nan_to_num(p, nan=1.0)


def fdr(p, q: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Benjamini–Hochberg: adjusted p-values and the mask of discoveries at level ``q``."""
    adj = stats.false_discovery_control(np.asarray(p, dtype=np.float64), method="bh")
    return adj, adj < q


def dprime(a, b) -> np.ndarray:
    """Per-unit d′ = (μ_a − μ_b) / √((σ²_a + σ²_b) / 2) of ``a (N_a, n)`` vs ``b (N_b, n)``; 0 where both
    conditions have no variance."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    sd = np.sqrt((a.var(0, ddof=1) + b.var(0, ddof=1)) / 2)
    return np.divide(a.mean(0) - b.mean(0), sd, out=np.zeros(a.shape[1]), where=sd > 0)


def patches(values, layout_or_coords, threshold: float, min_units: int = 10, radius: float = 1.0) -> dict:
    """Connected patches of units whose value exceeds ``threshold`` (neighbours as in :func:`neighbours`),
    keeping patches of at least ``min_units`` units (TDANN's patch detection after smoothing).

    Returns ``{"count", "sizes" (units, largest first), "areas" (cells²: units × the sheet's area per unit),
    "labels" (per unit, -1 outside any kept patch)}``."""
    from scipy.sparse.csgraph import connected_components
    x = np.asarray(values, dtype=np.float64).ravel()
    c = coords_of(layout_or_coords)
    above = np.nonzero(x > threshold)[0]
    labels = np.full(len(x), -1)
    if len(above) == 0:
        return {"count": 0, "sizes": [], "areas": [], "labels": labels.tolist()}
    W = neighbours(c[above], radius)
    _, comp = connected_components(W, directed=False)
    sizes = np.bincount(comp)
    keep = [k for k in np.argsort(-sizes, kind="stable") if sizes[k] >= min_units]
    span = np.ptp(c, 0)
    cell = float(np.prod(span[span > 0])) / len(c) if (span > 0).any() else 1.0
    for new, k in enumerate(keep):
        labels[above[comp == k]] = new
    return {"count": len(keep), "sizes": [int(sizes[k]) for k in keep],
            "areas": [float(sizes[k] * cell) for k in keep], "labels": labels.tolist()}


def pair_sample(n: int, max_pairs: int = 2_000_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """All unit pairs ``i < j`` when there are at most ``max_pairs``, else that many random distinct-unit pairs."""
    if n * (n - 1) // 2 <= max_pairs:
        return np.triu_indices(n, 1)
    rs = np.random.RandomState(seed)
    i, j = rs.randint(0, n, max_pairs), rs.randint(0, n - 1, max_pairs)
    j = j + (j >= i)
    return i, j


def pair_distance(a: np.ndarray, i, b: np.ndarray | None = None, j=None) -> np.ndarray:
    """Euclidean distances ``|a[i] − b[j]|`` of index pairs (``b`` defaults to ``a``), equal to the last bit to
    ``np.sqrt(((a[i] - b[j]) ** 2).sum(1))``: summed over coordinates in the same order, but gathered one
    coordinate at a time, which is ~9× faster than gathering rows for millions of pairs."""
    b = a if b is None else b
    acc = None
    for k in range(a.shape[1]):
        e = np.ascontiguousarray(a[:, k])[i] - np.ascontiguousarray(b[:, k])[j]
        e *= e
        acc = e if acc is None else np.add(acc, e, out=acc)
    return np.sqrt(acc, out=acc)


def binned_curve(distance, value, bins: int = 12) -> dict:
    """Mean ``value`` in equal-width distance bins: ``{"distance" (bin centres), "value", "count"}``, empty
    bins dropped."""
    d, v = np.asarray(distance, dtype=np.float64), np.asarray(value, dtype=np.float64)
    edges = np.linspace(d.min(), d.max() + 1e-9, bins + 1)
    k = np.clip(np.digitize(d, edges) - 1, 0, bins - 1)
    cnt = np.bincount(k, minlength=bins)
    mean = np.bincount(k, weights=v, minlength=bins) / np.maximum(cnt, 1)
    keep = cnt > 0
    return {"distance": ((edges[:-1] + edges[1:]) / 2)[keep].tolist(), "value": mean[keep].tolist(),
            "count": cnt[keep].tolist()}


# ---- wiring length between two sheets ---------------------------------------------------------------

def connections(module, in_shape) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The weights of ``module`` as triplets ``(dst unit, src unit, |w|)``: an ``nn.Linear`` (units = features), or
    an ``nn.Conv2d`` / ``LocallyConnected2d`` reading a map of ``in_shape = (C, H, W)`` (units channel-major, as
    ``output.flatten(1)``; zero padding contributes nothing). Memory ∝ the number of weights used."""
    import torch
    from torch import nn
    if not (isinstance(module, (nn.Linear, nn.Conv2d)) or hasattr(module, "unit_kernels")):
        raise ValueError(f"wiring length reads the weights of a Linear, Conv2d or LocallyConnected2d; the reading "
                         f"module is a {type(module).__name__} (name its conv or linear layer as the sheet)")
    w = module.weight.detach().abs().double().cpu()
    if isinstance(module, nn.Linear):
        d, s = np.nonzero(np.ones(tuple(w.shape), dtype=bool))
        return d, s, w.numpy()[d, s]
    C, H, W = in_shape
    idx = torch.arange(C * H * W, dtype=torch.float64).view(1, C, H, W) + 1  # 0 marks padding
    k, stride, pad = module.kernel_size, module.stride, module.padding
    if isinstance(pad, str):
        raise ValueError("padding given as a string is not supported for wiring length")
    cols = torch.nn.functional.unfold(idx, k, padding=pad, stride=stride)[0].long() - 1  # (C·kh·kw, L)
    L = cols.shape[1]
    O = module.out_channels
    if hasattr(module, "unit_kernels"):                 # LocallyConnected2d: weight (L, O, K)
        wk = w.permute(1, 2, 0)                         # (O, K, L)
    else:
        if getattr(module, "groups", 1) != 1:
            raise ValueError("grouped convolutions are not supported for wiring length")
        wk = w.reshape(O, -1, 1).expand(O, cols.shape[0], L)
    dst = (torch.arange(O)[:, None, None] * L + torch.arange(L)[None, None, :]).expand(O, cols.shape[0], L)
    src = cols[None].expand(O, -1, -1)
    keep = (src >= 0).numpy().ravel()
    return dst.numpy().ravel()[keep], src.numpy().ravel()[keep], wk.numpy().ravel()[keep]


def _unit_frame(c: np.ndarray) -> np.ndarray:
    lo, span = c.min(0), np.ptp(c, 0)
    return (c - lo) / np.where(span > 0, span, 1.0)


def pooled_positions(coords, channels: int, height: int, width: int, out_h: int, out_w: int) -> np.ndarray:
    """Positions of a pooled map's units ``(channels·out_h·out_w, dim)``: the mean position of the units each one
    pools (``height // out_h`` × ``width // out_w`` blocks), for a sheet of ``channels × height × width``
    channel-major units."""
    c = coords_of(coords).reshape(channels, height, width, -1)
    fh, fw = height // out_h, width // out_w
    if fh < 1 or fw < 1:
        raise ValueError(f"cannot pool a {height}×{width} map to {out_h}×{out_w}")
    c = c[:, :out_h * fh, :out_w * fw].reshape(channels, out_h, fh, out_w, fw, -1).mean((2, 4))
    return c.reshape(channels * out_h * out_w, -1)


def wiring_length(dst, src, weight, dst_coords, src_coords, permutations: int = 99, seed: int = 0) -> dict:
    """Weighted mean length of the connections ``src → dst`` (weights ``|w|``), each sheet scaled to the unit
    square (sheets aligned as cortical areas are, retinotopically): ``Σ |w| d / Σ |w|``; next to the same with the
    source units' positions shuffled (``null``, mean over ``permutations``), their ``ratio`` (< 1: shorter than
    chance) and a one-sided permutation ``p_value``."""
    a, b = _unit_frame(coords_of(dst_coords)), _unit_frame(coords_of(src_coords))
    w = np.asarray(weight, dtype=np.float64)
    if w.sum() <= 0:
        raise ValueError("no connection has a non-zero weight")

    def length(bpos):
        return float((w * pair_distance(a, dst, bpos, src)).sum() / w.sum())
    obs = length(b)
    rs = np.random.RandomState(seed)
    null = np.array([length(b[rs.permutation(len(b))]) for _ in range(permutations)])
    return {"length": obs, "null": float(null.mean()), "ratio": obs / float(null.mean()),
            "p_value": float((1 + (null <= obs + 1e-12).sum()) / (1 + permutations))}
