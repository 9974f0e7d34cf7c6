"""Spatial Neural Networks' costs (seed 002) on learnable positions: transport and proximity."""
from __future__ import annotations

import torch

from ..graph import NeuronGraph

__all__ = ["transport_cost", "proximity_cost"]

def _pairwise(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """‖a_i − b_j‖ as sqrt(‖·‖² + eps), smooth at 0 so gradients reach coincident positions."""
    d2 = (a[:, None, :] - b[None, :, :]).pow(2).sum(-1)
    return torch.sqrt(d2 + eps)


def transport_cost(positions, graph: NeuronGraph, phi: str = "l2", layers=None) -> torch.Tensor:
    """Σ over weight layers of mean_ij ‖p_i − p_j‖ · φ(W_ij) (the seed's transport cost).

    Args:
        positions: one ``(n, dim)`` tensor per neuron layer of ``graph`` (``None`` for layers without one).
        phi: ``"l1"`` (``|w|``) or ``"l2"`` (``w²``, the seed's default).
        layers: indices of the weight layers that pay the cost (default: those with both ends placed).
    """
    if phi not in ("l1", "l2"):
        raise ValueError(f"phi must be 'l1' or 'l2', got {phi!r}")
    if len(positions) != len(graph.layers):
        raise ValueError(f"got {len(positions)} position tensors for {len(graph.layers)} neuron layers")
    total = None
    for k, w in enumerate(graph.weights):
        ps, pd = positions[w.src], positions[w.dst]
        if (layers is not None and k not in layers) or ps is None or pd is None:
            continue
        W = w.weight
        W = W.flatten(2).sum(-1) if W.dim() > 2 else W
        c = (_pairwise(pd, ps) * (W.abs() if phi == "l1" else W * W)).mean()
        total = c if total is None else total + c
    if total is None:
        raise ValueError("no weight layer selected for the transport cost")
    return total


def proximity_cost(positions, layers=None) -> torch.Tensor:
    """Σ over neuron layers of mean_{i≠j} exp(−‖p_i − p_j‖): keeps one layer's neurons apart."""
    total = None
    for i, p in enumerate(positions):
        if p is None or (layers is not None and i not in layers) or p.shape[0] < 2:
            continue
        n = p.shape[0]
        e = torch.exp(-_pairwise(p, p))
        c = (e.sum() - e.diagonal().sum()) / (n * (n - 1))
        total = c if total is None else total + c
    if total is None:
        raise ValueError("no neuron layer selected for the proximity cost")
    return total
