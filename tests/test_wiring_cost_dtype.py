"""The wiring cost on a user's model: it follows the weights' dtype and device, and refuses in-place gradients on
computed (parametrized) weights."""
import math

import pytest
import torch

import topotorch as tt
from topotorch import layout as L
from topotorch.costs import apply_locality_prior


def test_wiring_cost_follows_model_dtype_and_refuses_add_grad_on_computed_weights():
    torch.manual_seed(0)
    model = tt.MLP([4, 6, 2])
    g = tt.embed(model)
    cost = tt.WiringCost(g)
    v32 = cost().item()
    model.double()
    v64 = cost()
    assert v64.dtype == torch.float64 and math.isclose(v64.item(), v32, rel_tol=1e-6)
    # independent: Σ|W|(A·d + l0) + l0·Σ|b| with BIMT's line positions
    ref = 0.0
    for lin, (n_in, n_out) in ((model[0], (4, 6)), (model[2], (6, 2))):
        pin = (torch.arange(n_in, dtype=torch.float64) + 0.5) / n_in
        pout = (torch.arange(n_out, dtype=torch.float64) + 0.5) / n_out
        d = (pout[:, None] - pin[None, :]).abs()
        ref += (lin.weight.abs() * (d + 0.1)).sum().item() + 0.1 * lin.bias.abs().sum().item()
    assert math.isclose(v64.item(), ref, rel_tol=1e-12)
    model.zero_grad()
    cost.add_grad_(1.0)
    assert model[0].weight.grad.dtype == torch.float64
    model.half()
    assert cost().dtype == torch.float16
    m2 = tt.MLP([4, 4, 2])
    apply_locality_prior(m2[0], L.line(4), L.line(4))
    c2 = tt.WiringCost(tt.embed(m2))
    with pytest.raises(ValueError, match="backward"):
        c2.add_grad_(1.0)
