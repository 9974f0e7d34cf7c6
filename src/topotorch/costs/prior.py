"""The locality prior (seed 001): a linear layer whose effective weight is ``W ⊙ P``."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..layout import distance, positions_of, proximity, set_positions

__all__ = ["DECAYS", "prior_matrix", "LocalityPrior", "apply_locality_prior", "LocalityLinear"]

DECAYS = {
    "inverse": lambda d, r: proximity(d),                  # what the reference code used
    "inverse-sqrt": lambda d, r: 1.0 / torch.sqrt(1.0 + d),
    "inverse-square": lambda d, r: 1.0 / (1.0 + d) ** 2,
    "linear": lambda d, r: torch.clamp(1.0 - d / r, min=0.0),  # what the seed's text describes
}


def prior_matrix(out_layout, in_layout, decay="inverse", radius: float | None = None, p: float = 2.0,
                 normalize: bool = False, strength: float = 1.0) -> torch.Tensor:
    """Locality prior ``P (n_out, n_in)``, ``P_ij = decay(d_ij) ** strength`` from output unit i to input unit j.

    ``decay`` is a name in :data:`DECAYS` or any callable ``d -> P`` on a float64 distance tensor;
    ``linear`` needs ``radius``. ``strength`` sharpens or flattens the prior: 0 gives ``P = 1`` (no prior,
    the control), and for ``inverse`` 0.5 / 1 / 2 are the seed's ``inverse-sqrt`` / ``inverse`` /
    ``inverse-square``. ``normalize`` rescales each row so a unit's incoming prior averages 1.
    """
    if not strength >= 0:
        raise ValueError(f"the prior's strength must be ≥ 0, got {strength}")
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
    P = P ** strength
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
                         normalize: bool = False, strength: float = 1.0) -> nn.Linear:
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
    P = prior_matrix(out_layout, in_layout, decay, radius, p, normalize, strength)
    W = linear.weight
    parametrize.register_parametrization(linear, "weight", LocalityPrior(P.to(W.device, W.dtype)))
    return linear


class LocalityLinear(nn.Linear):
    """``nn.Linear`` from ``in_layout.n`` to ``out_layout.n`` units with a locality prior (seed 001's LP layer).

    ``prior=False`` gives the control arm: the same layer with ``P = 1``.
    """

    def __init__(self, in_layout, out_layout, decay="inverse", radius=None, p: float = 2.0,
                 normalize: bool = False, bias: bool = True, prior: bool = True, strength: float = 1.0):
        super().__init__(in_layout.n, out_layout.n, bias=bias)
        # Positions live on the module (saved with its state_dict); the Layouts are views of them.
        self.register_buffer("in_positions", in_layout.unit_coords.float())
        set_positions(self, out_layout)
        self._kinds = (in_layout.kind, out_layout.kind)
        if prior:
            apply_locality_prior(self, in_layout, out_layout, decay, radius, p, normalize, strength)
        else:
            parametrize.register_parametrization(
                self, "weight", LocalityPrior(torch.ones(out_layout.n, in_layout.n, dtype=self.weight.dtype)))

    @property
    def in_layout(self):
        from ..layout import Layout
        return Layout(self.in_positions.double().cpu(), kind=self._kinds[0])

    @property
    def out_layout(self):
        from ..layout import Layout
        return Layout(positions_of(self).double().cpu(), kind=self._kinds[1])
