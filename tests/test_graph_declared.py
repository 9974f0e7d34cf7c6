"""Hand-declared neuron graphs on a user's own (non-Sequential) model: relocation keeps the outputs, ports and
fixed layers behave, parametrized weights move through their original or are refused, verify() finds what the
declaration missed."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import topotorch as tt
from topotorch import layout as L
from topotorch.costs import apply_locality_prior
from topotorch.graph import NeuronGraph, Port

from usermodels import MyMLP, graph_of, same, scramble


def test_hand_declared_graph_relocation_keeps_outputs_and_fixes_boundary_layers():
    m = MyMLP()
    scramble(m)
    g = graph_of(m)
    x = torch.randn(64, 4)
    before = m(x)
    cost = tt.WiringCost(g)
    moved = tt.relocate(g, cost, top_k=12)
    assert moved > 0
    assert same(m(x), before)
    assert not g.is_movable(0) and not g.is_movable(3) and g.is_movable(1)
    with pytest.raises(ValueError, match="layer 'in'.*permutation port"):
        g.permute(0, torch.tensor([1, 0, 2, 3]))
    with pytest.raises(ValueError, match="layer 'out'.*permutation port"):
        g.permute(3, torch.tensor([1, 0, 2]))
    assert same(m(x), before)
    # metrics read model input/output indices, not slots
    assert tt.metrics.dependencies(g) == [[0, 1, 2, 3]] * 3


def test_hand_declared_graph_with_permutation_ports_moves_boundaries_and_keeps_outputs():
    m = MyMLP(perm=True)
    scramble(m)
    g = graph_of(m, perm=True)
    x = torch.randn(64, 4)
    before = m(x)
    g.permute(0, torch.tensor([2, 0, 3, 1]))
    g.permute(3, torch.tensor([2, 0, 1]))
    tt.relocate(g, tt.WiringCost(g), top_k=12, method="assignment")
    assert same(m(x), before)
    assert sorted(m.in_perm.tolist()) == [0, 1, 2, 3] and m.in_perm.tolist() != [0, 1, 2, 3]
    # dependencies are in the model's own input/output indices: cut input 2 off output 1
    with torch.no_grad():
        m.fc1.weight[:, (m.in_perm == 2).nonzero().item()] = 0
    deps = tt.metrics.dependencies(g)
    assert all(2 not in d for d in deps)


def test_ports_must_be_parameters_or_buffers_and_permutation_ports_permutations():
    m = MyMLP()
    m.plain = torch.arange(4)
    g = NeuronGraph()
    with pytest.raises(ValueError, match="not a parameter or buffer"):
        g.add_layer("in", L.line(4), [Port(m, "plain")])
    m.register_buffer("bad", torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="permutation of range"):
        g.add_layer("in", L.line(4), [Port(m, "bad", perm=True)])
    assert g.layers == []


def test_explicitly_fixed_layer_is_skipped_and_refused():
    m = MyMLP()
    scramble(m)
    g = NeuronGraph()
    a, b = g.add_layer("in", L.line(4)), g.add_layer("h1", L.line(12), movable=False)
    c, d = g.add_layer("h2", L.line(10)), g.add_layer("out", L.line(3))
    g.connect(m.fc1, a, b); g.connect(m.fc2, b, c); g.connect(m.fc3, c, d)
    w = m.fc1.weight.clone()
    tt.relocate(g, tt.WiringCost(g), top_k=12)
    assert torch.equal(m.fc1.weight, w)  # h1 never moved
    with pytest.raises(ValueError, match="fixed"):
        g.permute(1, torch.arange(12).flip(0))


def test_parametrized_weight_is_moved_through_its_original_or_refused():
    torch.manual_seed(0)
    x = torch.randn(32, 4)

    class Scale(nn.Module):  # commutes with moving units
        def forward(self, W):
            return 2.0 * W

    model = tt.MLP([4, 9, 9, 2])
    torch.nn.utils.parametrize.register_parametrization(model[2], "weight", Scale())
    g = tt.embed(model)
    scramble(model)
    before = model(x)
    assert tt.relocate(g, tt.WiringCost(g), top_k=9) > 0
    assert same(model(x), before)

    # a locality prior is fixed to positions: relocating its layer must refuse and change nothing
    model = tt.MLP([4, 9, 9, 2])
    apply_locality_prior(model[2], L.line(9), L.line(9))
    g = tt.embed(model)
    scramble(model)
    before = model(x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="parametrization.*LocalityPrior"):
        g.permute(1, torch.arange(9).flip(0))
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert torch.equal(model(x), before)


class SkipMLP(MyMLP):
    """A residual connection reads h1 directly: relocating h1 without declaring it would change outputs."""

    def forward(self, x):
        h1 = F.silu(self.fc1(x))
        h2 = F.silu(self.fc2(h1)) + h1[..., :10]
        return self.fc3(h2)


def test_verify_finds_an_undeclared_tensor_and_leaves_the_model_as_it_was():
    m = SkipMLP()
    scramble(m)
    g = graph_of(m)
    x = torch.randn(16, 4)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ValueError, match="'h1'.*'h2'|'h1'"):
        g.verify(x, model=m)
    assert all(torch.equal(state[k], v) for k, v in m.state_dict().items())
    g.layers[1].movable = g.layers[2].movable = False  # what the error suggests
    g.verify(x, model=m)
    before = m(x)
    tt.relocate(g, tt.WiringCost(g), top_k=12)
    assert same(m(x), before)
    m2 = MyMLP()
    graph_of(m2).verify(x, model=m2)  # a fully declared graph passes
