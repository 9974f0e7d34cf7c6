"""Function-preserving neuron relocation (BIMT's swaps), exact and vectorised.

For neuron layer ``i`` with ``m`` slots, the position-dependent wiring cost of putting the unit now in
slot ``s`` into slot ``p`` is::

    C[s, p] = Σ_in  Σ_j |W_in[s, j]| · G_in[p, j]  +  Σ_out Σ_k |W_out[k, s]| · G_out[k, p]

(``G = scale·A·d^e``, summed over folds). Swapping the units in slots ``j`` and ``k`` changes the cost by
``C[a,k] + C[b,j] − C[a,j] − C[b,k]`` (``a``, ``b`` the units there), so one row and one column of ``C``
— two matrix-vector products — score every candidate ``k`` at once. That is the seed's greedy search
(top-k most connected neurons in turn, each swapped into the slot that minimises the total cost) computed
exactly, without recomputing the whole cost per candidate. ``method="assignment"`` instead places the
whole layer optimally for ``C`` with the Hungarian algorithm.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from .costs import WiringCost
from .graph import NeuronGraph

__all__ = ["relocate", "relocate_layer", "placement_cost"]


def _terms(graph: NeuronGraph, cost: WiringCost, i: int):
    """|W| and geometry of the weight layers touching layer ``i``, reshaped by its fold.

    Returns (ins, outs, score): ``ins`` a list of ``(Wr, Gr)`` with shape ``(f, m, n_src)``, ``outs`` a list
    of ``(Wo, Go)`` with shape ``(n_dst, f, m)`` and ``score`` the per-slot connection strength ``(m,)``.
    """
    lay = graph.layers[i].layout
    f, m = lay.fold, lay.m
    ins, outs, score = [], [], None
    for k, w in enumerate(graph.weights):
        if w.dst != i and w.src != i:
            continue
        W = w.weight.detach()
        Wabs = W.abs()
        if W.dim() > 2:
            Wabs = Wabs.flatten(2).sum(-1)
        G = cost.geometry(k)
        if w.src == i:
            s = Wabs.sum(0).reshape(f, m).sum(0)
            outs.append((Wabs.reshape(-1, f, m), G.reshape(-1, f, m)))
        else:
            s = Wabs.sum(1).reshape(f, m).sum(0)
            ins.append((Wabs.reshape(f, m, -1), G.reshape(f, m, -1)))
        score = s if score is None else score + s
    return ins, outs, score


def placement_cost(graph: NeuronGraph, cost: WiringCost, i: int) -> torch.Tensor:
    """Full ``C`` (m × m) of layer ``i``: cost of the unit in slot ``s`` placed at slot ``p``."""
    ins, outs, _ = _terms(graph, cost, i)
    m = graph.layers[i].layout.m
    C = torch.zeros(m, m, dtype=torch.float64)
    for Wr, Gr in ins:
        C += torch.einsum("lsj,lpj->sp", Wr, Gr).double()
    for Wo, Go in outs:
        C += torch.einsum("kls,klp->sp", Wo, Go).double()
    return C


@torch.no_grad()
def relocate_layer(graph: NeuronGraph, cost: WiringCost, i: int, top_k: int = 5,
                   method: str = "greedy", optimizer=None) -> int:
    """Relocate the units of neuron layer ``i``; returns the number of units that moved."""
    m = graph.layers[i].layout.m
    if m < 2 or not graph.is_movable(i):
        return 0
    if method == "assignment":
        _, col = linear_sum_assignment(placement_cost(graph, cost, i).cpu().numpy())
        arr = np.empty(m, dtype=np.int64)
        arr[col] = np.arange(m)
        arr = torch.from_numpy(arr)
    elif method == "greedy":
        arr = _greedy(graph, cost, i, top_k)
    else:
        raise ValueError(f"unknown relocation method {method!r}; use 'greedy' or 'assignment'")
    moved = int((arr != torch.arange(m)).sum())
    if moved:
        graph.permute(i, arr, optimizer)
    return moved


def _greedy(graph: NeuronGraph, cost: WiringCost, i: int, top_k: int) -> torch.Tensor:
    ins, outs, score = _terms(graph, cost, i)
    m = graph.layers[i].layout.m
    dev = score.device
    # The seed ranks once per layer, then walks the ranked *slots* while swaps happen.
    top = torch.flip(torch.argsort(score), [0])[:top_k].tolist()
    arr = torch.arange(m, device=dev)           # arr[s] = unit (original slot) now in slot s
    cur = torch.zeros(m, dtype=score.dtype, device=dev)  # cur[s] = C[arr[s], s]
    for Wr, Gr in ins:
        cur += (Wr * Gr).sum((0, 2))
    for Wo, Go in outs:
        cur += (Wo * Go).sum((0, 1))
    for j in top:
        a = int(arr[j])
        row = torch.zeros_like(cur)  # C[a, p] for every slot p
        col = torch.zeros_like(cur)  # C[u, j] for every unit u
        for Wr, Gr in ins:
            row += torch.einsum("lj,lpj->p", Wr[:, a], Gr)
            col += torch.einsum("luj,lj->u", Wr, Gr[:, j])
        for Wo, Go in outs:
            row += torch.einsum("kl,klp->p", Wo[:, :, a], Go)
            col += torch.einsum("klu,kl->u", Wo, Go[:, :, j])
        colc = col[arr]
        delta = row + colc - row[j] - cur
        delta[j] = 0.0
        k = int(torch.argmin(delta))
        if delta[k] < 0:  # swap only on a strict improvement (the seed also swaps on exact ties)
            cur[j], cur[k] = colc[k], row[k]
            arr[j], arr[k] = arr[k].clone(), arr[j].clone()
    return arr.cpu()


@torch.no_grad()
def relocate(graph: NeuronGraph, cost: WiringCost, top_k: int = 5, method: str = "greedy",
             optimizer=None, layers=None) -> int:
    """Relocate every neuron layer in order (as the seed), keeping the model's function.

    Args:
        graph, cost: the neuron graph and the *training* wiring cost (same A, exponent, masks, reduction).
        top_k: units per layer tried in turn by the greedy search (BIMT: 5).
        method: ``"greedy"`` (the seed's algorithm, exact) or ``"assignment"`` (optimal per layer).
        optimizer: its per-parameter state (Adam moments) is permuted with the parameters.
        layers: indices of neuron layers to relocate (default: every movable layer; fixed layers — set by
            hand, or boundary layers without a permutation port — are skipped).
    Returns: the number of units that moved.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be ≥ 1, got {top_k}")
    idx = range(len(graph.layers)) if layers is None else layers
    return sum(relocate_layer(graph, cost, i, top_k, method, optimizer) for i in idx)


# ---- swap pre-optimisation of sheet positions (TDANN / TopoLM) ----------------------------------

def _window_units(P: np.ndarray, centre: int, radius: float) -> np.ndarray:
    return np.nonzero(np.abs(P - P[centre]).max(1) <= radius + 1e-9)[0]


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
    from .costs.correlation import pair_loss
    from .layout import Layout
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
        d = np.sqrt(((P[:, None, :] - P[None, :, :]) ** 2).sum(-1))
        return float(pair_loss(torch.from_numpy(R + np.eye(n)), torch.from_numpy(1 / (1 + d)), kind))

    def drow(a):
        return 1.0 / (1.0 + np.sqrt(((P - P[a]) ** 2).sum(1)))

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
            Da, Db = drow(a), drow(b)
            ra, rb = R[a], R[b]
            mask = np.ones(n, dtype=bool)
            mask[[a, b]] = False
            if kind == "relative":
                gain = ((ra - rb) * (Db - Da))[mask].sum()  # change of Σ r·D; the loss falls iff it grows
                better = gain > 1e-12
            else:
                change = (np.abs(ra - Db) + np.abs(rb - Da) - np.abs(ra - Da) - np.abs(rb - Db))[mask].sum()
                better = change < -1e-12
            if better:
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
    from .costs.correlation import pair_loss
    from .layout import Layout
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
    Dp = 1.0 / (1.0 + torch.cdist(pts, pts))                   # between the fixed points
    inside = (pts[:, None, :] - pts[None, :, :]).abs().amax(-1) <= radius + 1e-9
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
