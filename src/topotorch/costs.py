"""Costs that make networks spatial.

:class:`WiringCost` is BIMT's connection cost::

    Σ_layers Σ_ij |W_ij| · (A · d_ij^e + l0)  +  l0 · Σ |b|

with ``d`` the distance between the two units' positions (layout units), ``e`` the distance exponent
(1 = linear as BIMT, 0.5 = sqrt, 2 = square, the three the locality-prior seed tried) and ``l0`` the
layer gap. The factors ``A·d^e + l0`` are precomputed buffers on the weights' device and dtype: they never
change, because relocation moves parameters between fixed slots rather than moving the slots.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

from .graph import NeuronGraph
from .layout import distance

__all__ = ["WiringCost", "DECAYS", "prior_matrix", "LocalityPrior", "apply_locality_prior", "LocalityLinear"]


class WiringCost:
    """BIMT's wiring cost over the weight layers of a :class:`NeuronGraph`.

    Args:
        graph: the neuron graph.
        A: weight of the distance term (BIMT's ``weight_factor``); 0 gives plain L1 (times ``l0``).
        l0: layer gap, the cost of a connection of zero length (BIMT: 0.1).
        exponent: distance exponent ``e`` (1, 0.5 or 2, or any positive number).
        p: norm used for distances in ≥ 2D layouts (1 = L1 as BIMT's 2D layers, 2 = Euclidean).
        reduction: ``"sum"`` (BIMT's symbolic tasks) or ``"mean"`` (per-layer mean, BIMT's larger tasks).
        bias: penalise biases with ``l0·|b|``.
        penalize: one bool per weight layer (``False`` = not penalised, BIMT's ``no_penalize_last``).
    """

    def __init__(self, graph: NeuronGraph, A: float = 1.0, l0: float = 0.1, exponent: float = 1.0,
                 p: float = 2.0, reduction: str = "sum", bias: bool = True,
                 penalize: Sequence[bool] | None = None):
        if reduction not in ("sum", "mean"):
            raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
        if not exponent > 0:
            raise ValueError(f"distance exponent must be positive, got {exponent}")
        if A < 0 or l0 < 0:
            raise ValueError(f"A and l0 must be non-negative, got A={A}, l0={l0}")
        if not graph.weights:
            raise ValueError("the graph has no weight layers to penalise")
        penalize = [True] * len(graph.weights) if penalize is None else list(penalize)
        if len(penalize) != len(graph.weights):
            raise ValueError(f"penalize has {len(penalize)} entries for {len(graph.weights)} weight layers")
        self.graph, self.A, self.l0, self.exponent, self.p = graph, float(A), float(l0), float(exponent), p
        self.reduction, self.bias, self.penalize = reduction, bool(bias), penalize
        self._geom: list[torch.Tensor] = []    # A·d^e, (dst.n, src.n): the position-dependent part
        self._factor: list[torch.Tensor] = []  # scale·(A·d^e + l0) broadcastable to the weight
        self._bscale: list[float] = []
        self.refresh()

    def refresh(self) -> None:
        """Rebuild the distance buffers (after changing layouts, device or dtype of the model)."""
        self._geom.clear(); self._factor.clear(); self._bscale.clear()
        for w, on in zip(self.graph.weights, self.penalize):
            W = w.weight
            d = distance(self.graph.layers[w.dst].layout, self.graph.layers[w.src].layout, p=self.p)
            geom = self.A * d.pow(self.exponent)
            scale = (1.0 / W.numel() if self.reduction == "mean" else 1.0) if on else 0.0
            extra = (1,) * (W.dim() - 2)
            self._geom.append((scale * geom).to(W.device, W.dtype))
            self._factor.append((scale * (geom + self.l0)).reshape(*geom.shape, *extra).to(W.device, W.dtype))
            b = w.bias
            bscale = 1.0 / b.numel() if (b is not None and self.reduction == "mean") else 1.0
            self._bscale.append(bscale if on else 0.0)

    def geometry(self, k: int) -> torch.Tensor:
        """Position-dependent factor of weight layer ``k``, ``(dst.n, src.n)``, including the reduction scale."""
        return self._geom[k]

    def value(self, bias: bool | None = None) -> torch.Tensor:
        """The cost as a differentiable scalar (autograd path)."""
        bias = self.bias if bias is None else bias
        total = None
        for w, f, bs in zip(self.graph.weights, self._factor, self._bscale):
            c = (w.weight.abs() * f).sum()
            if bias and w.bias is not None and bs:
                c = c + self.l0 * bs * w.bias.abs().sum()
            total = c if total is None else total + c
        return total

    @torch.no_grad()
    def add_grad_(self, scale: float, bias: bool | None = None) -> None:
        """Add ``scale · ∂cost/∂θ`` to every penalised parameter's ``.grad`` in place.

        Same gradient as ``(scale * value()).backward()`` (with sign(0) = 0), without building a graph:
        the fast path for training (a few % per step instead of ~30 % through autograd).
        """
        if scale == 0:
            return
        bias = self.bias if bias is None else bias
        for w, f, bs in zip(self.graph.weights, self._factor, self._bscale):
            W = w.weight
            if W.grad is None:
                W.grad = torch.zeros_like(W)
            W.grad.addcmul_(torch.sign(W), f, value=scale)
            b = w.bias
            if bias and b is not None and bs:
                if b.grad is None:
                    b.grad = torch.zeros_like(b)
                b.grad.add_(torch.sign(b), alpha=scale * self.l0 * bs)

    def __call__(self) -> torch.Tensor:
        return self.value()


# ---- locality prior (seed 001) -------------------------------------------------------------------

DECAYS = {
    "inverse": lambda d, r: 1.0 / (1.0 + d),               # what the reference code used
    "inverse-sqrt": lambda d, r: 1.0 / torch.sqrt(1.0 + d),
    "inverse-square": lambda d, r: 1.0 / (1.0 + d) ** 2,
    "linear": lambda d, r: torch.clamp(1.0 - d / r, min=0.0),  # what the seed's text describes
}


def prior_matrix(out_layout, in_layout, decay="inverse", radius: float | None = None, p: float = 2.0,
                 normalize: bool = False) -> torch.Tensor:
    """Locality prior ``P (n_out, n_in)``, ``P_ij = decay(d_ij)`` from output unit i to input unit j.

    ``decay`` is a name in :data:`DECAYS` or any callable ``d -> P`` on a float64 distance tensor;
    ``linear`` needs ``radius``. ``normalize`` rescales each row so a unit's incoming prior averages 1.
    """
    d = distance(out_layout, in_layout, p=p)
    if callable(decay):
        P = torch.as_tensor(decay(d), dtype=torch.float64)
    elif decay in DECAYS:
        if decay == "linear" and not (radius and radius > 0):
            raise ValueError("the 'linear' decay needs a positive radius")
        P = DECAYS[decay](d, radius)
    else:
        raise ValueError(f"unknown decay {decay!r}; choose from {sorted(DECAYS)} or pass a callable")
    if P.shape != d.shape or not torch.isfinite(P).all() or (P < 0).any():
        raise ValueError("a prior must be finite, non-negative and shaped like the distance matrix")
    if normalize:
        mean = P.mean(1, keepdim=True)
        if (mean <= 0).any():
            raise ValueError("cannot normalise: some unit receives an all-zero prior (radius too small?)")
        P = P / mean
    return P


class LocalityPrior(nn.Module):
    """Parametrization ``W ↦ W ⊙ P`` (register with ``torch.nn.utils.parametrize``)."""

    def __init__(self, prior: torch.Tensor):
        super().__init__()
        self.register_buffer("prior", prior)

    def forward(self, W: torch.Tensor) -> torch.Tensor:
        return W * self.prior


def apply_locality_prior(linear: nn.Linear, in_layout, out_layout, decay="inverse", radius=None, p: float = 2.0,
                         normalize: bool = False) -> nn.Linear:
    """Attach a locality prior to an existing ``nn.Linear``: its effective weight becomes ``W ⊙ P``.

    The layer computes ``y = (W ⊙ P) x + b``. (The seed's README writes ``A = P .* (Wx + b)``, which is not
    even shaped right for a prior over connections; its code multiplies the weights, as we do.) The raw
    weight stays a parameter at ``linear.parametrizations.weight.original``; the prior is a buffer.
    """
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"expected nn.Linear, got {type(linear).__name__}")
    if in_layout.n != linear.in_features or out_layout.n != linear.out_features:
        raise ValueError(f"layouts ({out_layout.n} out, {in_layout.n} in) do not match the layer "
                         f"({linear.out_features} out, {linear.in_features} in)")
    P = prior_matrix(out_layout, in_layout, decay, radius, p, normalize)
    W = linear.weight
    parametrize.register_parametrization(linear, "weight", LocalityPrior(P.to(W.device, W.dtype)))
    return linear


class LocalityLinear(nn.Linear):
    """``nn.Linear`` from ``in_layout.n`` to ``out_layout.n`` units with a locality prior (seed 001's LP layer).

    ``prior=False`` gives the control arm: the same layer with ``P = 1``.
    """

    def __init__(self, in_layout, out_layout, decay="inverse", radius=None, p: float = 2.0,
                 normalize: bool = False, bias: bool = True, prior: bool = True):
        super().__init__(in_layout.n, out_layout.n, bias=bias)
        self.in_layout, self.out_layout = in_layout, out_layout
        if prior:
            apply_locality_prior(self, in_layout, out_layout, decay, radius, p, normalize)
        else:
            parametrize.register_parametrization(
                self, "weight", LocalityPrior(torch.ones(out_layout.n, in_layout.n, dtype=self.weight.dtype)))


# ---- Spatial Neural Networks (seed 002): learnable positions -------------------------------------

def _pairwise(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """‖a_i − b_j‖ as sqrt(‖·‖² + eps), smooth at 0 so gradients reach coincident positions."""
    d2 = (a[:, None, :] - b[None, :, :]).pow(2).sum(-1)
    return torch.sqrt(d2 + eps)


def transport_cost(positions, graph: NeuronGraph, phi: str = "l2", layers=None) -> torch.Tensor:
    """Σ over weight layers of mean_ij ‖p_i − p_j‖ · φ(W_ij) (the seed's transport cost).

    Args:
        positions: one ``(n, dim)`` tensor per neuron layer of ``graph`` (``None`` for layers without one).
        phi: ``"l1"`` (|w|) or ``"l2"`` (w², the seed's default).
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


__all__ += ["transport_cost", "proximity_cost"]
