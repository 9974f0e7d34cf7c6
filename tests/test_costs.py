import math

import pytest
import torch
from torch import nn

import topotorch as tt


def _tiny():
    model = nn.Sequential(nn.Linear(2, 2), nn.SiLU(), nn.Linear(2, 1))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -2.0], [0.5, 0.0]]))
        model[0].bias.copy_(torch.tensor([0.3, -0.1]))
        model[2].weight.copy_(torch.tensor([[-1.0, 4.0]]))
        model[2].bias.copy_(torch.tensor([2.0]))
    return model, tt.embed(model)


def test_wiring_cost_matches_hand_computation():
    model, g = _tiny()
    # line(2) = [0.25, 0.75]; line(1) = [0.5]. Layer 1: d = [[0, .5], [.5, 0]]; layer 2: d = [[.25, .25]].
    A, l0 = 2.0, 0.1
    w1 = 1 * (0 + l0) + 2 * (A * 0.5 + l0) + 0.5 * (A * 0.5 + l0) + 0
    w2 = 1 * (A * 0.25 + l0) + 4 * (A * 0.25 + l0)
    b = l0 * (0.3 + 0.1 + 2.0)
    cost = tt.WiringCost(g, A=A, l0=l0)
    assert cost.value().item() == pytest.approx(w1 + w2 + b, rel=1e-6)
    assert tt.WiringCost(g, A=A, l0=l0, bias=False).value().item() == pytest.approx(w1 + w2, rel=1e-6)
    no_last = tt.WiringCost(g, A=A, l0=l0, penalize=[True, False], bias=False).value().item()
    assert no_last == pytest.approx(w1, rel=1e-6)
    mean = tt.WiringCost(g, A=A, l0=l0, reduction="mean").value().item()
    assert mean == pytest.approx(w1 / 4 + w2 / 2 + l0 * (0.4 / 2 + 2.0 / 1), rel=1e-6)
    sq = tt.WiringCost(g, A=A, l0=l0, exponent=2, bias=False).value().item()
    assert sq == pytest.approx(1 * l0 + 2.5 * (A * 0.25 + l0) + 5 * (A * 0.0625 + l0), rel=1e-6)
    sqrt = tt.WiringCost(g, A=A, l0=l0, exponent=0.5, bias=False).value().item()
    assert sqrt == pytest.approx(1 * l0 + 2.5 * (A * math.sqrt(.5) + l0) + 5 * (A * 0.5 + l0), rel=1e-6)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_in_place_gradient_equals_autograd(reduction):
    torch.manual_seed(1)
    model = tt.MLP([5, 7, 6, 3])
    g = tt.embed(model, layouts="grid" if reduction == "mean" else "line")
    cost = tt.WiringCost(g, A=1.3, l0=0.2, reduction=reduction, penalize=[True, True, False])
    (0.7 * cost.value()).backward()
    grads = lambda: [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in model.parameters()]
    auto = grads()
    model.zero_grad(set_to_none=True)
    cost.add_grad_(0.7)
    for a, b in zip(auto, grads()):
        assert torch.allclose(a, b, atol=1e-7)
    assert any(a.abs().sum() > 0 for a in auto)


def test_cost_buffers_follow_dtype_and_bad_args():
    model = tt.MLP([3, 4, 2]).double()
    g = tt.embed(model)
    assert tt.WiringCost(g).value().dtype == torch.float64
    with pytest.raises(ValueError, match="reduction"):
        tt.WiringCost(g, reduction="max")
    with pytest.raises(ValueError, match="penalize"):
        tt.WiringCost(g, penalize=[True])
    with pytest.raises(ValueError, match="exponent"):
        tt.WiringCost(g, exponent=0)
