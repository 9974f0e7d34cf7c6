"""Costs that make networks spatial.

:class:`WiringCost` is BIMT's connection cost::

    Σ_layers Σ_ij |W_ij| · (A · d_ij^e + l0)  +  l0 · Σ |b|

with ``d`` the distance between the two units' positions (layout units), ``e`` the distance exponent
(1 = linear as BIMT, 0.5 = sqrt, 2 = square, the three the locality-prior seed tried) and ``l0`` the
layer gap. The factors ``A·d^e + l0`` are computed once in float64 and cast, cached, to whatever device and
dtype the weights have at each call, so the cost follows its model through ``.to()``, ``.double()``,
``.half()``. They never change with relocation, which moves parameters between fixed slots.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..graph import NeuronGraph
from .. import layout as L
from ..layout import distance

__all__ = ["WiringCost"]


class WiringCost(nn.Module):
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
        super().__init__()
        penalize = [True] * len(graph.weights) if penalize is None else list(penalize)
        if len(penalize) != len(graph.weights):
            raise ValueError(f"penalize has {len(penalize)} entries for {len(graph.weights)} weight layers")
        self.graph, self.A, self.l0, self.exponent, self.p = graph, float(A), float(l0), float(exponent), p
        self.reduction, self.bias, self.penalize = reduction, bool(bias), penalize
        self.refresh()

    def _positions_key(self) -> tuple:
        """What the cached distances were computed from: each owned layer's position buffer and its version."""
        key = []
        for layer in self.graph.layers:
            pos = L.positions_of(layer.owner) if layer.owner is not None else None
            key.append((id(pos), pos._version) if pos is not None else id(layer.layout))
        return tuple(key)

    def _sync(self) -> None:
        # Positions kept on modules change under load_state_dict (or a swap search): recompute when they did.
        if self._positions_key() != self._key:
            self.refresh()

    def refresh(self) -> None:
        """Recompute the distance factors (after changing layouts; positions kept on modules are followed
        automatically)."""
        self._key = self._positions_key()
        self._geom64: list[torch.Tensor] = []  # scale·A·d^e, (dst.n, src.n): the position-dependent part
        self._scale: list[float] = []          # the reduction's weight scale (0: not penalised)
        self._bscale: list[float] = []
        self._cache: dict = {}
        for w, on in zip(self.graph.weights, self.penalize):
            W = w.weight
            d = distance(self.graph.layers[w.dst].layout, self.graph.layers[w.src].layout, p=self.p)
            scale = (1.0 / W.numel() if self.reduction == "mean" else 1.0) if on else 0.0
            self._scale.append(scale)
            self._geom64.append(scale * self.A * d.pow(self.exponent))
            b = w.bias
            bscale = 1.0 / b.numel() if (b is not None and self.reduction == "mean") else 1.0
            self._bscale.append(bscale if on else 0.0)

    def _factors(self, k: int, W: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(geometry, full factor broadcastable to ``W``) of weight layer ``k`` on ``W``'s device and dtype."""
        key = (k, W.device, W.dtype)
        got = self._cache.get(key)
        if got is None:
            geom = self._geom64[k]
            full = (geom + self._scale[k] * self.l0).reshape(*geom.shape, *(1,) * (W.dim() - 2))
            got = self._cache[key] = (geom.to(W.device, W.dtype), full.to(W.device, W.dtype))
        return got

    def geometry(self, k: int) -> torch.Tensor:
        """Position-dependent factor of weight layer ``k``, ``(dst.n, src.n)``, including the reduction scale,
        on the weight's device and dtype."""
        self._sync()
        return self._factors(k, self.graph.weights[k].weight)[0]

    def value(self, bias: bool | None = None) -> torch.Tensor:
        """The cost as a differentiable scalar (autograd path)."""
        bias = self.bias if bias is None else bias
        self._sync()
        total = None
        for k, (w, bs) in enumerate(zip(self.graph.weights, self._bscale)):
            f = self._factors(k, w.weight)[1]
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
        self._sync()
        for k, (w, bs) in enumerate(zip(self.graph.weights, self._bscale)):
            W = w.weight
            if parametrize.is_parametrized(w.module, w.weight_name):
                raise ValueError(f"weight layer {w.name or k} is computed (e.g. parametrized), so its .grad is not "
                                 "the parameter's: use (loss + scale * cost()).backward() instead of add_grad_")
            f = self._factors(k, W)[1]
            if W.grad is None:
                W.grad = torch.zeros_like(W)
            W.grad.addcmul_(torch.sign(W), f, value=scale)
            b = w.bias
            if bias and b is not None and bs:
                if b.grad is None:
                    b.grad = torch.zeros_like(b)
                b.grad.add_(torch.sign(b), alpha=scale * self.l0 * bs)

    def forward(self, bias: bool | None = None) -> torch.Tensor:
        return self.value(bias)
