import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

import topotorch as tt
from topotorch.relocate import placement_cost, relocate_layer
from bimt_reference import BioMLP, copy_into


def _linears(model):
    return [m for m in model if isinstance(m, torch.nn.Linear)]


@settings(max_examples=25, deadline=None, derandomize=True)
@given(hidden=st.lists(st.integers(1, 12), min_size=1, max_size=3), n_in_slots=st.integers(1, 6),
       fold=st.integers(1, 3), n_out=st.integers(1, 5), seed=st.integers(0, 10_000),
       method=st.sampled_from(["greedy", "assignment"]), top_k=st.integers(1, 8),
       exponent=st.sampled_from([0.5, 1.0, 2.0]), reduction=st.sampled_from(["sum", "mean"]))
def test_relocation_keeps_every_output(hidden, n_in_slots, fold, n_out, seed, method, top_k, exponent, reduction):
    torch.manual_seed(seed)
    shape = [n_in_slots * fold] + hidden + [n_out]
    model = tt.MLP(shape).double()
    g = tt.embed(model, layouts="grid" if seed % 2 else "line", in_fold=fold)
    cost = tt.WiringCost(g, exponent=exponent, reduction=reduction)
    x = torch.randn(9, shape[0], dtype=torch.float64)
    y0 = model(x)
    before = cost.value().item()
    for _ in range(2):
        tt.relocate(g, cost, top_k=top_k, method=method)
    assert torch.allclose(model(x), y0, atol=1e-10)
    assert cost.value().item() <= before + 1e-9  # swaps only ever lower the cost


@pytest.mark.parametrize("shape,fold", [([4, 20, 20, 2], 1), ([6, 15, 9, 3], 2), ([8, 30, 12, 12, 4], 4)])
@pytest.mark.parametrize("seed", range(4))
def test_greedy_picks_the_seed_reference_swaps(shape, fold, seed):
    torch.manual_seed(seed)
    ref = BioMLP(shape, in_fold=fold).double()
    with torch.no_grad():  # spread magnitudes so that the search has clear winners
        for l in ref.linears:
            l.linear.weight.mul_(torch.rand_like(l.linear.weight) * 3)
    model = tt.MLP(shape).double()
    copy_into(ref, model)
    g = tt.embed(model, in_fold=fold)
    cost = tt.WiringCost(g)  # the reference relocates with its default cost: A=1, l0=0.1, sum
    moved = 0
    for _ in range(3):
        log = []
        ref.relocate(log)
        moved += sum(int(j) != int(k) for _, j, k, _ in log)
        tt.relocate(g, cost, top_k=5)
        for a, b in zip(ref.linears, _linears(model)):
            assert torch.equal(a.linear.weight, b.weight)
            assert torch.equal(a.linear.bias, b.bias)
    assert moved > 0
    x = torch.randn(5, shape[0], dtype=torch.float64)
    assert torch.allclose(ref(x), model(x), atol=1e-12)


def test_assignment_is_optimal_for_the_layer():
    torch.manual_seed(3)
    model = tt.MLP([6, 7, 5]).double()
    g = tt.embed(model)
    cost = tt.WiringCost(g, l0=0.0)
    C = placement_cost(g, cost, 1)
    best = min(C[torch.arange(7), torch.tensor(p)].sum().item()
               for p in __import__("itertools").permutations(range(7)))
    relocate_layer(g, cost, 1, method="assignment")
    C2 = placement_cost(g, cost, 1)
    assert C2.diagonal().sum().item() == pytest.approx(best, rel=1e-9)


def test_relocation_permutes_adam_state_so_training_is_unchanged():
    torch.manual_seed(0)
    x, y = torch.randn(32, 4, dtype=torch.float64), torch.randn(32, 2, dtype=torch.float64)
    a = tt.MLP([4, 12, 12, 2]).double()
    ga = tt.embed(a)
    b = copy.deepcopy(a)  # deepcopy carries the buffers and permutation hooks along
    oa = torch.optim.AdamW(a.parameters(), lr=1e-2)
    ob = torch.optim.AdamW(b.parameters(), lr=1e-2)

    def step(m, o):
        o.zero_grad()
        F.mse_loss(m(x), y).backward()
        o.step()
    for _ in range(5):
        step(a, oa); step(b, ob)
    # Relocate only model a (random permutation of every hidden layer), with its optimizer.
    for i in (1, 2):
        ga.permute(i, torch.randperm(12), optimizer=oa)
    for _ in range(5):
        step(a, oa); step(b, ob)
    assert torch.allclose(a(x), b(x), atol=1e-10)


def test_relocation_without_optimizer_state_drifts():
    """The seed's omission: moving units but not Adam's moments changes the training trajectory."""
    torch.manual_seed(0)
    x, y = torch.randn(32, 4, dtype=torch.float64), torch.randn(32, 2, dtype=torch.float64)
    a = tt.MLP([4, 12, 2]).double()
    ga = tt.embed(a)
    b = copy.deepcopy(a)
    oa, ob = (torch.optim.Adam(m.parameters(), lr=1e-2) for m in (a, b))
    for m, o in ((a, oa), (b, ob)):
        for _ in range(5):
            o.zero_grad(); F.mse_loss(m(x), y).backward(); o.step()
    ga.permute(1, torch.roll(torch.arange(12), 1))  # no optimizer given
    for m, o in ((a, oa), (b, ob)):
        for _ in range(5):
            o.zero_grad(); F.mse_loss(m(x), y).backward(); o.step()
    assert not torch.allclose(a(x), b(x), atol=1e-6)


def test_bad_relocation_args():
    g = tt.embed(tt.MLP([3, 4, 2]))
    cost = tt.WiringCost(g)
    with pytest.raises(ValueError, match="method"):
        tt.relocate(g, cost, method="annealing")
    with pytest.raises(ValueError, match="top_k"):
        tt.relocate(g, cost, top_k=0)
