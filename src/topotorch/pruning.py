"""Pruning a spatially embedded network, as BIMT does and beyond it: magnitude thresholds, pruning to a loss budget
(greedy, weight by weight; or a global magnitude cut found by bisection), a retrained cut of each survivor, a
callback that holds pruned weights at zero through training and relocation, and a final relocation sweep.

Every function takes the loss as a closure (``loss() -> float`` or a tensor), so one implementation serves an
MLP on 100 points (BIMT's formulas), a token model and a GPT on text. Nothing here needs a recipe.
"""
from __future__ import annotations

import itertools
from typing import Callable

import torch

from . import metrics as M
from .metrics import Snapshot, threshold
from .relocate import relocate
from .train import Callback

__all__ = ["threshold", "Snapshot", "prune_greedy", "prune_quantile", "prune_with_refit", "Masks", "final_sweep"]


@torch.no_grad()
def prune_greedy(graph, loss: Callable[[], float], start: float, budget: float) -> dict:
    """Greedy magnitude pruning to a loss budget: every weight of the graph with ``|w| <= start`` is zeroed, then
    the others are tried from the smallest up and each is zeroed unless that takes ``loss()`` above ``budget`` ×
    the unpruned loss (a weight the function needs is skipped, the next one tried). Returns
    ``{"pruned_weights", "train_loss_before_prune", "train_loss_after_prune"}``."""
    if budget < 1:
        raise ValueError(f"budget is a multiple of the unpruned loss and must be ≥ 1, got {budget}")
    base = loss()
    pruned = 0
    entries = []
    for w in graph.weights:
        W = w.weight
        small = (W.abs() <= start) & (W != 0)
        pruned += int(small.sum())
        W.masked_fill_(small, 0.0)
        for idx in torch.nonzero(W).tolist():
            entries.append((abs(float(W[tuple(idx)])), W, tuple(idx)))
    limit = budget * max(base, loss() if pruned else base)
    for _, W, idx in sorted(entries, key=lambda e: e[0]):
        old = W[idx].item()
        W[idx] = 0.0
        if loss() > limit:
            W[idx] = old
        else:
            pruned += 1
    return {"pruned_weights": pruned, "train_loss_before_prune": base, "train_loss_after_prune": loss()}


@torch.no_grad()
def prune_quantile(graph, loss: Callable[[], float], budget: float, rounds: int = 12) -> dict:
    """The largest share of the graph's weights, smallest magnitudes first (one global cut), whose removal keeps
    ``loss()`` within ``(1 + budget)`` × the unpruned one, found by bisection over magnitude quantiles in
    ``rounds`` steps. The weights are restored afterwards. Returns ``{"kept_at_budget", "val_loss_at_budget"}``."""
    if not budget >= 0 or rounds < 1:
        raise ValueError(f"budget must be ≥ 0 and rounds ≥ 1, got {budget}, {rounds}")
    base = loss()
    Ws = [w.weight for w in graph.weights]
    saved = [W.clone() for W in Ws]
    mags = torch.cat([W.abs().flatten() for W in saved]).sort().values
    lo, hi = 0.0, 1.0           # share pruned: lo is within budget, hi is not (or 1)
    best = base
    try:
        for _ in range(rounds):
            mid = (lo + hi) / 2
            cut = mags[min(len(mags) - 1, int(mid * len(mags)))]
            for W, S in zip(Ws, saved):
                W.copy_(S * (S.abs() > cut))
            value = loss()
            if value <= (1 + budget) * base:
                lo, best = mid, value
            else:
                hi = mid
    finally:
        for W, S in zip(Ws, saved):
            W.copy_(S)
    return {"kept_at_budget": 1 - lo, "val_loss_at_budget": best}


def prune_with_refit(graph, model, loss: Callable[[], torch.Tensor], limit: float, steps: int, lr: float) -> int:
    """Try each surviving weight, smallest first: zero it, retrain the rest for ``steps`` Adam steps on ``loss()``
    (zeros held at zero) and keep the cut if the loss is then ≤ ``limit``, else restore the whole model. Catches
    paths that a greedy cut keeps only because the rest of the network has not yet adapted to their absence.
    Returns the number of weights cut."""
    cut = 0
    with torch.no_grad():
        entries = sorted(((abs(float(w.weight[i])), k, i) for k, w in enumerate(graph.weights)
                          for i in map(tuple, torch.nonzero(w.weight).tolist())), key=lambda e: e[0])
    for _, k, idx in entries:
        W = graph.weights[k].weight
        if W[idx] == 0:
            continue
        saved = {n: v.clone() for n, v in model.state_dict().items()}
        with torch.no_grad():
            W[idx] = 0.0
        masks = Masks(model)
        opt = torch.optim.Adam(model.parameters(), lr=lr, foreach=True)
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            loss().backward()
            masks.before_step(0)
            opt.step()
            masks.after_step(0)
        with torch.no_grad():
            if loss().item() <= limit:
                cut += 1
            else:
                model.load_state_dict(saved)
    return cut


class Masks(Callback):
    """Holds the parameter entries that are zero at zero: gradients masked, values re-zeroed after steps.

    The mask is read from the parameters before every step (zeros stay exactly zero in between), so it
    follows the permutations of relocation, which move zeros with their units; a mask fixed at the start
    would, after a swap, zero live weights and break the function."""

    def __init__(self, model):
        self.params = [p for p in model.parameters() if p.is_floating_point()]
        self.masks: list = []

    def before_step(self, step: int) -> None:
        self.masks = [p.detach() != 0 for p in self.params]
        for p, m in zip(self.params, self.masks):
            if p.grad is not None:
                p.grad.mul_(m)

    def after_step(self, step: int) -> None:
        with torch.no_grad():
            for p, m in zip(self.params, self.masks):
                p.mul_(m)


@torch.no_grad()
def final_sweep(model, graph, cost, rounds: int = 50) -> float:
    """Lower the wiring cost by relocation from several starts and keep the cheapest placement.

    Starts: the current placement, and one per ordering of the pruned network's modules (connected
    components holding an output) in which every movable layer's units are sorted by module, keeping their
    order within it. From each, whole-layer optimal assignments run until a round moves nothing. Every step
    is a function-preserving permutation; the placement with the lowest ``cost`` wins. Returns that cost.
    """
    comp, offs = M._components(graph, 0.0)
    out_comps = list(dict.fromkeys(int(comp[offs[-2] + u]) for u in range(graph.layers[-1].n)))
    start = {k: v.clone() for k, v in model.state_dict().items()}
    orders = [None] + [list(p) for p in itertools.permutations(out_comps)][:24] if len(out_comps) > 1 else [None]
    best, best_cost = None, float("inf")
    for order in orders:
        model.load_state_dict(start)
        if order is not None:
            rank = {c: r for r, c in enumerate(order)}
            for i, layer in enumerate(graph.layers):
                if not graph.is_movable(i) or layer.layout.fold != 1 or layer.layout.dim != 1:
                    continue
                labels = comp[offs[i]:offs[i + 1]]
                key = [(rank.get(int(c), len(order)), s) for s, c in enumerate(labels)]
                graph.permute(i, torch.tensor(sorted(range(len(key)), key=key.__getitem__)))
        for _ in range(rounds):
            if not relocate(graph, cost, 1, "assignment"):
                break
        c = float(cost.value())
        if c < best_cost - 1e-12:
            best, best_cost = {k: v.clone() for k, v in model.state_dict().items()}, c
    model.load_state_dict(best)
    return best_cost
