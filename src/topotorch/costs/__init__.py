"""Costs that make networks spatial.

- :mod:`.wiring` — BIMT's wiring cost Σ|W|(A·d^e + l0) + l0·Σ|b| (autograd and in-place gradient paths).
- :mod:`.prior` — the locality prior (a layer computing ``(W ⊙ P)x + b``).
- :mod:`.spatialnet` — transport and proximity costs on learnable positions.
- :mod:`.smoothness` — TopoLoss-compatible weight smoothness (blur by bilinear down/up-sampling).
- :mod:`.correlation` — TopoLM/TDANN's spatial correlation loss on activations (forward hooks); its kernels in
  :mod:`.kernels`.
- :mod:`.cosine` — All-TNN's smoothness: neighbouring units' incoming weights point the same way.
"""
from .wiring import WiringCost
from .prior import DECAYS, LocalityLinear, LocalityPrior, apply_locality_prior, prior_matrix
from .spatialnet import proximity_cost, transport_cost
from .smoothness import WeightSmoothness, sheet_shape, weight_smoothness
from .correlation import SpatialCorrelationLoss, correlation_matrix, inverse_distance, pair_loss
from .cosine import CosineSmoothness, cosine_smoothness

__all__ = ["WiringCost", "DECAYS", "LocalityLinear", "LocalityPrior", "apply_locality_prior", "prior_matrix",
           "proximity_cost", "transport_cost",
           "WeightSmoothness", "sheet_shape", "weight_smoothness", "SpatialCorrelationLoss", "correlation_matrix",
           "inverse_distance", "pair_loss",
           "CosineSmoothness", "cosine_smoothness"]
