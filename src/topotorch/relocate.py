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
