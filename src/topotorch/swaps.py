"""TDANN's swap pre-optimisation of sheet positions: exchange the positions of two units inside a local window
when that lowers the spatial correlation loss of fixed responses — one at a time (:func:`swap_optimize`) or
thousands of candidates scored in one batched product (:func:`swap_optimize_batched`). BIMT's function-preserving
relocation is :mod:`topotorch.relocate`."""
from __future__ import annotations

import numpy as np
import torch

from .costs.correlation import pair_loss
from .layout import Layout, proximity, within

__all__ = ["swap_optimize", "swap_optimize_batched", "swap_optimize_windows", "SHEET_SWAP_UNITS"]

# Sheets up to this size are pre-optimised against the whole sheet's loss (a few (n, n) float64 matrices, about
# 1 GB at 4096 units); larger ones window by window (:func:`swap_optimize_windows`), as TDANN.
SHEET_SWAP_UNITS = 4096


def _improves(ra, rb, Da, Db, a: int, b: int, kind: str) -> bool:
    """Whether exchanging the places of units a and b lowers the loss, from their correlation rows ``ra, rb`` and
    the proximity rows ``Da, Db`` of their places (pairs with a or b themselves left out). Relative: the swap
    permutes D, so only Σ r·D changes, by ``Σ_k (r_ak − r_bk)(D_bk − D_ak)``; absolute: the change of Σ |r − D|."""
    mask = np.ones(len(ra), dtype=bool)
    mask[[a, b]] = False
    if kind == "relative":
        return ((ra - rb) * (Db - Da))[mask].sum() > 1e-12
    return (np.abs(ra - Db) + np.abs(rb - Da) - np.abs(ra - Da) - np.abs(rb - Db))[mask].sum() < -1e-12


def _window_units(P: np.ndarray, centre: int, radius: float) -> np.ndarray:
    return np.nonzero(within(P[centre:centre + 1], P, radius)[0])[0]


def swap_optimize(r, layout, windows: int = 50, swaps_per_window: int = 50, radius: float = 5.0,
                  kind: str = "relative", seed: int = 0, naive: bool = False):
    """Lower the spatial correlation loss of fixed responses by swapping unit positions (TDANN).

    For each of ``windows`` random sup-norm windows (around a random unit, ``radius`` in layout units),
    ``swaps_per_window`` times: pick two units in the window, swap their positions, keep the swap only if
    the whole-sheet loss falls. Only entries of the global coordinate array are exchanged, so positions stay
    a permutation of the original cells and windows stay local (TopoLM's released code breaks both).

    Swapping units a and b permutes D, so ΣD and ΣD² stay fixed and only Σ r·D changes, by
    ``Σ_k (r_ak − r_bk)(D_bk − D_ak)`` — O(n) per candidate. ``naive=True`` recomputes the whole loss
    instead (O(n²) per candidate), for comparison.

    Args:
        r: ``(n, n)`` response correlations of the sheet's units (e.g. ``correlation_matrix(acts)``).
        layout: the sheet's current :class:`~topotorch.layout.Layout` (``fold`` 1).
    Returns: ``(new_layout, info)`` with ``info = {"tried", "accepted", "loss_before", "loss_after", "seconds"}``.
    """
    import time as _time
    if kind not in ("relative", "absolute"):
        raise ValueError(f"kind must be 'relative' or 'absolute', got {kind!r}")
    if layout.fold != 1:
        raise ValueError("swap_optimize works on layouts without folds")
    R = np.asarray(torch.as_tensor(r, dtype=torch.float64))
    n = layout.n
    if R.shape != (n, n):
        raise ValueError(f"r has shape {R.shape}, layout has {n} units")
    R = R.copy()
    np.fill_diagonal(R, 0.0)
    P = layout.coords.numpy().copy()
    rs = np.random.RandomState(seed)

    def full_loss(P):
        Pt = torch.from_numpy(P)  # cdist without the product shortcut: exact differences, no (n, n, dim) tensor
        d = torch.cdist(Pt, Pt, compute_mode="donot_use_mm_for_euclid_dist")
        return float(pair_loss(torch.from_numpy(R + np.eye(n)), proximity(d), kind))

    def drow(a):
        return proximity(np.sqrt(((P - P[a]) ** 2).sum(1)))

    t0 = _time.perf_counter()
    before = full_loss(P)
    current = before
    tried = accepted = 0
    for _ in range(windows):
        units = _window_units(P, rs.randint(n), radius)
        if len(units) < 2:
            continue
        for _ in range(swaps_per_window):
            a, b = rs.choice(units, 2, replace=False)
            tried += 1
            if naive:
                P[[a, b]] = P[[b, a]]
                new = full_loss(P)
                if new < current:
                    current, accepted = new, accepted + 1
                else:
                    P[[a, b]] = P[[b, a]]
                continue
            if _improves(R[a], R[b], drow(a), drow(b), a, b, kind):
                P[[a, b]] = P[[b, a]]
                accepted += 1
    after = full_loss(P)
    info = {"tried": tried, "accepted": accepted, "loss_before": before, "loss_after": after,
            "seconds": _time.perf_counter() - t0}
    return Layout(P, fold=1, kind=layout.kind), info


__all__ += ["swap_optimize"]


@torch.no_grad()
def swap_optimize_batched(r, layout, candidates: int = 100_000, radius: float = 5.0, kind: str = "relative",
                          seed: int = 0, batch: int | None = None, device=None):
    """:func:`swap_optimize` with candidate swaps scored in batches (TDANN's pre-optimisation at scale).

    Each round draws ``batch`` candidate pairs, both units inside one random sup-norm window (``radius``) of
    the sheet's fixed set of positions, scores them all at once — the gain of swapping a and b is
    ``Σ_k (r_ak − r_bk)(D_bk − D_ak)``, a batched product on ``device`` — and applies the best non-conflicting
    improving swaps together. Their joint effect is checked exactly (``Σ r·D`` over all pairs); should the
    interactions between them make the loss rise, only the single best swap is applied. So the loss never
    rises, positions stay a permutation of the original ones, and every swap is local.

    Returns ``(new_layout, info)`` with ``info = {"tried", "accepted", "loss_before", "loss_after", "seconds",
    "swaps_per_second"}``.
    """
    import time as _time
    if kind not in ("relative", "absolute"):
        raise ValueError(f"kind must be 'relative' or 'absolute', got {kind!r}")
    if layout.fold != 1:
        raise ValueError("swap_optimize_batched works on layouts without folds")
    dev = torch.device(device) if device is not None else torch.as_tensor(r).device
    if batch is None:  # a GPU scores a round of 64k candidates in about the time a CPU scores 8k
        batch = 8192 if dev.type == "cpu" else 65536
    if candidates < 1 or batch < 1 or not radius > 0:
        raise ValueError("candidates and batch must be ≥ 1, radius positive")
    n = layout.n
    R = torch.as_tensor(r, dtype=torch.float64).to(dev).clone()
    if R.shape != (n, n):
        raise ValueError(f"r has shape {tuple(R.shape)}, layout has {n} units")
    R.fill_diagonal_(0.0)
    pts = layout.coords.to(dev)
    Dp = proximity(torch.cdist(pts, pts))                   # between the fixed points
    inside = within(pts, pts, radius)
    sizes = inside.sum(1)
    width = int(sizes.max())
    table = torch.argsort((~inside).to(torch.int8), dim=1, stable=True)[:, :width]  # window members first
    slot = torch.arange(n, device=dev)                        # slot[u]: the point unit u sits on
    occ = torch.arange(n, device=dev)                         # occ[p]: the unit on point p
    D = Dp.clone()                                            # D[u, v] = Dp[slot[u], slot[v]]
    g = torch.Generator(device="cpu").manual_seed(seed)

    def total(Dm):
        return (R * Dm).sum() / 2 if kind == "relative" else -(R - Dm).abs().fill_diagonal_(0).sum() / 2

    def loss(Dm):
        return float(pair_loss(R + torch.eye(n, dtype=R.dtype, device=dev), Dm, kind))

    t0 = _time.perf_counter()
    before = loss(D)
    current = total(D)
    tried = accepted = 0
    multi = sizes >= 2
    centres_ok = torch.nonzero(multi).flatten()
    if len(centres_ok) == 0:
        raise ValueError("no window holds two units: increase radius")
    R32, D32 = R.float(), D.float()
    while tried < candidates:
        B = min(batch, candidates - tried)
        c = centres_ok[torch.randint(len(centres_ok), (B,), generator=g).to(dev)]
        m = sizes[c]
        i = (torch.rand(B, generator=g).to(dev) * m).long()
        j = (torch.rand(B, generator=g).to(dev) * (m - 1)).long()
        j = j + (j >= i).long()                                # a second, different member
        A, Bu = occ[table[c, i]], occ[table[c, j]]
        tried += B
        # Candidates are scored in float32 (a ranking); the accepted set is checked in float64 below.
        Ra, Rb, Da, Db = R32[A], R32[Bu], D32[A], D32[Bu]
        ar = torch.arange(B, device=dev)
        if kind == "relative":
            per = (Ra - Rb) * (Db - Da)
        else:
            per = (Ra - Da).abs() + (Rb - Db).abs() - (Ra - Db).abs() - (Rb - Da).abs()
        gain = per.sum(1) - per[ar, A] - per[ar, Bu]  # the sum runs over k ∉ {a, b}
        good = torch.nonzero(gain > 1e-7).flatten()
        if len(good) == 0:
            continue
        order = good[torch.argsort(gain[good], descending=True)].tolist()
        used, pairs = set(), []
        Al, Bl = A.tolist(), Bu.tolist()
        for k in order:
            a, b = Al[k], Bl[k]
            if a not in used and b not in used:
                used.update((a, b))
                pairs.append((a, b))
        for attempt in ([pairs, pairs[:1]] if len(pairs) > 1 else [pairs]):
            ab = torch.tensor(attempt, device=dev).t()              # (2, swaps): one copy, one scatter
            perm = torch.arange(n, device=dev)
            perm[ab.flatten()] = ab.flip(0).flatten()
            D_new = D[perm][:, perm]
            new = total(D_new)
            if new > current:  # checked in float64: the loss never rises
                D, current, D32 = D_new, new, D_new.float()
                slot = slot[perm]
                occ[slot] = torch.arange(n, device=dev)
                accepted += len(attempt)
                break
    seconds = _time.perf_counter() - t0
    after = loss(D)
    new_coords = layout.coords[slot.cpu()]
    info = {"tried": tried, "accepted": accepted, "loss_before": before, "loss_after": after,
            "seconds": seconds, "swaps_per_second": tried / max(seconds, 1e-9)}
    return Layout(new_coords, fold=1, kind=layout.kind), info


__all__ += ["swap_optimize_batched"]


@torch.no_grad()
def swap_optimize_windows(acts, layout, windows: int = 50, swaps_per_window: int = 50, radius: float = 5.0,
                          kind: str = "relative", seed: int = 0, check_windows: int = 32):
    """TDANN's pre-optimisation window by window, for sheets too large for an (n, n) matrix (200k units).

    For each of ``windows`` sup-norm windows (``radius``, layout units) around a random position: the response
    correlations of the units now in it, from ``acts`` (samples × n), and their distances, both (m, m); then
    ``swaps_per_window`` candidate swaps of two of its units, each kept when it lowers the window's loss (the
    change of Σ r·D is ``Σ_k (r_ak − r_bk)(D_bk − D_ak)``, O(m)). Positions stay a permutation of the original
    ones. Memory: the activations plus O(n + m²).

    ``loss_before``/``loss_after`` are the mean window loss over ``check_windows`` fixed windows (the same
    positions before and after), a sampled estimate of the sheet's loss; ``window_loss_before``/``_after`` the mean
    loss of the optimised windows before and after their own swaps (never higher: a swap is kept only when it
    lowers it; pairs that leave a window can still get worse, so the sheet's loss usually but not always falls).

    Returns ``(new_layout, info)`` with ``info = {"tried", "accepted", "loss_before", "loss_after",
    "window_loss_before", "window_loss_after", "seconds", "scope": "windows", "window_units"}`` (mean units per
    optimised window).
    """
    import time as _time
    from .costs.kernels import correlation_matrix
    from .windows import Windows
    if kind not in ("relative", "absolute"):
        raise ValueError(f"kind must be 'relative' or 'absolute', got {kind!r}")
    if layout.fold != 1:
        raise ValueError("swap_optimize_windows works on layouts without folds")
    X = torch.as_tensor(acts)
    n = layout.n
    if X.dim() != 2 or X.shape[1] != n:
        raise ValueError(f"acts must be (samples, {n}), got {tuple(X.shape)}")
    if X.shape[0] < 2:
        raise ValueError("acts need at least two samples to correlate units")
    pts = layout.coords.double()
    index = Windows(pts, radius)                   # over the fixed points; occ[p] is the unit on point p
    occ = torch.arange(n)
    rs = np.random.RandomState(seed)

    def window(p):
        P = index.members(p)
        units = occ[P]
        r = correlation_matrix(X[:, units].double())
        D = proximity(torch.cdist(pts[P], pts[P], compute_mode="donot_use_mm_for_euclid_dist"))
        return P, r, D

    check = rs.randint(n, size=check_windows)

    def sampled_loss():
        vals = [float(pair_loss(r, D, kind)) for P, r, D in map(window, check) if len(P) > 2]
        if not vals:
            raise ValueError(f"no window of radius {radius} holds three units; increase radius")
        return float(np.mean(vals))

    t0 = _time.perf_counter()
    before = sampled_loss()
    tried = accepted = 0
    sizes, wb, wa = [], [], []
    for _ in range(windows):
        P, r, D = window(rs.randint(n))
        m = len(P)
        sizes.append(m)
        if m < 3:
            continue
        wb.append(float(pair_loss(r, D, kind)))
        R, Dn = r.numpy().copy(), D.numpy()
        np.fill_diagonal(R, 0.0)
        slot = np.arange(m)                        # slot[i]: the row of R of the unit now on point P[i]
        for _ in range(swaps_per_window):
            i, j = rs.choice(m, 2, replace=False)
            tried += 1
            # correlations of the units now on points i and j with the units on every point
            if _improves(R[slot[i]][slot], R[slot[j]][slot], Dn[i], Dn[j], i, j, kind):
                slot[[i, j]] = slot[[j, i]]
                accepted += 1
        occ[P] = occ[P][torch.from_numpy(slot)]
        s = torch.from_numpy(slot)
        wa.append(float(pair_loss(r[s][:, s], D, kind)))
    after = sampled_loss()
    # unit u sits on point p where occ[p] = u: its new coordinates are pts[p]
    where = torch.empty(n, dtype=torch.long)
    where[occ] = torch.arange(n)
    info = {"tried": tried, "accepted": accepted, "loss_before": before, "loss_after": after,
            "window_loss_before": float(np.mean(wb)) if wb else float("nan"),
            "window_loss_after": float(np.mean(wa)) if wa else float("nan"),
            "seconds": _time.perf_counter() - t0, "scope": "windows", "window_units": float(np.mean(sizes))}
    return Layout(layout.coords[where], fold=1, kind=layout.kind), info

