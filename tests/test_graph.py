import pytest
import torch
from torch import nn

import topotorch as tt
from topotorch.graph import NeuronGraph, Port


def test_embed_sequential_builds_layers_and_ports():
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    g = tt.embed(model)
    assert g.shape == [4, 8, 3]
    assert [(w.src, w.dst) for w in g.weights] == [(0, 1), (1, 2)]
    hidden_ports = {(p.name, p.dim) for p in g.layers[1].ports}
    assert {("weight", 0), ("bias", 0), ("weight", 1), ("running_mean", 0), ("running_var", 0)} <= hidden_ports
    assert "topo_in_perm" in model.state_dict() and "topo_out_perm" in model.state_dict()


def test_permuting_any_layer_keeps_outputs_including_batchnorm_and_adam_state():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 10), nn.LayerNorm(10), nn.SiLU(), nn.Linear(10, 10), nn.BatchNorm1d(10),
                          nn.Tanh(), nn.Linear(10, 4))
    g = tt.embed(model, in_fold=2)
    x = torch.randn(16, 6)
    model.train()
    model(x)  # populate running stats
    model.eval()
    y0 = model(x)
    for i, layer in enumerate(g.layers):
        g.permute(i, torch.randperm(layer.layout.m))
    assert torch.allclose(model(x), y0, atol=1e-6)


def test_embed_rejects_unsupported_models_and_bad_layouts():
    with pytest.raises(ValueError, match="Conv2d"):
        tt.embed(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Linear(2, 2)))
    with pytest.raises(TypeError, match="by hand"):
        tt.embed(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="expects 5 inputs"):
        tt.embed(nn.Sequential(nn.Linear(4, 3), nn.Linear(5, 2)))
    with pytest.raises(ValueError, match="2 layouts for 3 neuron layers"):
        tt.embed(nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2)), layouts=["line"] * 2)
    m = nn.Sequential(nn.Linear(5, 3))
    with pytest.raises(ValueError, match="does not divide"):
        tt.embed(m, in_fold=2)
    assert "topo_in_perm" not in m.state_dict()  # a refused model is left untouched
    m = nn.Sequential(nn.Linear(4, 3))
    tt.embed(m)
    with pytest.raises(ValueError, match="already embedded"):
        tt.embed(m)


def test_hand_declared_graph_checks_shapes():
    lin = nn.Linear(3, 5)
    g = NeuronGraph()
    a = g.add_layer("a", tt.layout.line(3))
    b = g.add_layer("b", tt.layout.line(5))
    g.connect(lin, a, b)
    assert [p.name for p in g.layers[b].ports] == ["weight", "bias"]
    c = g.add_layer("c", tt.layout.line(4))
    with pytest.raises(ValueError, match="shape"):
        g.connect(nn.Linear(3, 5), b, c)
    with pytest.raises(ValueError, match="axis"):
        g.add_port(c, Port(lin, "bias", 0))


def test_permute_rejects_non_permutations():
    g = tt.embed(nn.Sequential(nn.Linear(3, 4)))
    with pytest.raises(ValueError, match="permutation"):
        g.permute(1, [0, 0, 1, 2])
