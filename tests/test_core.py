"""The core on a user's own models: correct, or a named error that leaves the model as it was."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import topotorch as tt
from topotorch import layout as L
from topotorch.config import parse_sets
from topotorch.costs import SpatialCorrelationLoss, apply_locality_prior
from topotorch.graph import NeuronGraph, Port


class MyMLP(nn.Module):
    """A user's non-Sequential MLP."""

    def __init__(self, perm: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2, self.fc3 = nn.Linear(4, 12), nn.Linear(12, 10), nn.Linear(10, 3)
        if perm:
            self.register_buffer("in_perm", torch.arange(4))
            self.register_buffer("out_perm", torch.arange(3))

    def forward(self, x):
        if hasattr(self, "in_perm"):
            x = x[..., self.in_perm]
        y = self.fc3(F.silu(self.fc2(F.silu(self.fc1(x)))))
        return y[..., torch.argsort(self.out_perm)] if hasattr(self, "out_perm") else y


def _graph(m: MyMLP, perm: bool = False) -> NeuronGraph:
    g = NeuronGraph()
    a = g.add_layer("in", L.line(4), [Port(m, "in_perm", perm=True)] if perm else [])
    b = g.add_layer("h1", L.line(12))
    c = g.add_layer("h2", L.line(10))
    d = g.add_layer("out", L.line(3), [Port(m, "out_perm", perm=True)] if perm else [])
    g.connect(m.fc1, a, b)
    g.connect(m.fc2, b, c)
    g.connect(m.fc3, c, d)
    return g


def _same(a, b) -> bool:
    """Equal to float32 rounding: within 1e-6 of the outputs' scale."""
    return bool((a - b).abs().max() <= 1e-6 * max(1.0, b.abs().max().item()))


def _scramble(m: nn.Module) -> None:
    """Weights that make relocation move units: strong long connections."""
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn_like(p) * torch.rand(p.shape[0], 1) * 3)


def test_hand_declared_graph_relocation_keeps_outputs_and_fixes_boundary_layers():
    m = MyMLP()
    _scramble(m)
    g = _graph(m)
    x = torch.randn(64, 4)
    before = m(x)
    cost = tt.WiringCost(g)
    moved = tt.relocate(g, cost, top_k=12)
    assert moved > 0
    assert _same(m(x), before)
    assert not g.is_movable(0) and not g.is_movable(3) and g.is_movable(1)
    with pytest.raises(ValueError, match="layer 'in'.*permutation port"):
        g.permute(0, torch.tensor([1, 0, 2, 3]))
    with pytest.raises(ValueError, match="layer 'out'.*permutation port"):
        g.permute(3, torch.tensor([1, 0, 2]))
    assert _same(m(x), before)
    # metrics read model input/output indices, not slots
    assert tt.metrics.dependencies(g) == [[0, 1, 2, 3]] * 3


def test_hand_declared_graph_with_permutation_ports_moves_boundaries_and_keeps_outputs():
    m = MyMLP(perm=True)
    _scramble(m)
    g = _graph(m, perm=True)
    x = torch.randn(64, 4)
    before = m(x)
    g.permute(0, torch.tensor([2, 0, 3, 1]))
    g.permute(3, torch.tensor([2, 0, 1]))
    tt.relocate(g, tt.WiringCost(g), top_k=12, method="assignment")
    assert _same(m(x), before)
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
    _scramble(m)
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
    _scramble(model)
    before = model(x)
    assert tt.relocate(g, tt.WiringCost(g), top_k=9) > 0
    assert _same(model(x), before)

    # a locality prior is fixed to positions: relocating its layer must refuse and change nothing
    model = tt.MLP([4, 9, 9, 2])
    apply_locality_prior(model[2], L.line(9), L.line(9))
    g = tt.embed(model)
    _scramble(model)
    before = model(x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="parametrization.*LocalityPrior"):
        g.permute(1, torch.arange(9).flip(0))
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert torch.equal(model(x), before)


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


class TupleBlock(nn.Module):
    """A HuggingFace-style block: returns (hidden, attention weights)."""

    def __init__(self, d=16):
        super().__init__()
        self.lin = nn.Linear(d, d)

    def forward(self, x):
        h = self.lin(x)
        return h, h.detach().softmax(-1)


class DictOut(dict):
    pass


class TupleNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.blocks = nn.ModuleList([TupleBlock(), TupleBlock()])
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        for b in self.blocks:
            x = b(x)[0]
        return DictOut(logits=self.head(x), hidden=x)


def _hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_attach_handles_tuple_and_dict_outputs_and_cleans_up_on_failure():
    model = TupleNet()
    keys = set(model.state_dict())
    x = torch.randn(8, 5, 16)
    topo = tt.attach(model, ["blocks.0", "blocks.1", "head"], example_input=x[:2], alpha=1.0)
    loss = model(x)["logits"].pow(2).mean() + topo()
    loss.backward()
    assert torch.isfinite(loss) and set(topo.last) == {"blocks.0", "blocks.1", "head"}
    tt.detach(model)
    assert set(model.state_dict()) == keys and _hooks(model) == 0 and not tt.is_attached(model)
    # a failing attach (a layout of the wrong size) touches nothing
    with pytest.raises(ValueError, match="layout for blocks.1 has 9 units"):
        tt.attach(model, {"blocks.0": None, "blocks.1": L.grid(3, 3)}, example_input=x[:2])
    assert set(model.state_dict()) == keys and _hooks(model) == 0 and not tt.is_attached(model)
    # failing inside the probe forward pass: hooks removed too
    with pytest.raises(Exception):
        tt.attach(model, ["blocks.0"], example_input=torch.randn(2, 5, 7))
    assert _hooks(model) == 0 and set(model.state_dict()) == keys
    # re-attaching after detach works, and the loss is the same as a fresh attach's
    topo = tt.attach(model, ["blocks.0"], example_input=x[:2])
    model(x)
    assert torch.isfinite(topo())


def test_sheet_names_are_module_paths_and_alpha_names_are_checked():
    model = TupleNet()
    x = torch.randn(8, 5, 16)
    block = model.blocks[0]
    with pytest.raises(ValueError, match=r"alpha names \['blocks.0'\] are not sheets"):
        SpatialCorrelationLoss({block: L.grid(4, 4, spacing=1)}, alpha={"blocks.0": 2.0})
    sl = SpatialCorrelationLoss({block: L.grid(4, 4, spacing=1)}, alpha={"blocks.0": 2.0}, model=model)
    model(x)
    v = sl()
    assert v.item() > 0 and list(sl.last) == ["blocks.0"]
    sl.remove()
    with pytest.raises(ValueError, match=r"alpha names \['blocks.9'\] are not sheets"):
        tt.attach(model, ["blocks.0", "blocks.1"], alpha={"blocks.0": 1.0, "blocks.9": 1.0})
    with pytest.raises(ValueError, match="no weight for"):
        tt.attach(model, ["blocks.0", "blocks.1"], alpha={"blocks.0": 1.0})
    assert _hooks(model) == 0
    topo = tt.attach(model, [model.blocks[0], "blocks.1"], alpha={"blocks.0": 1.0, "blocks.1": 0.0}, example_input=x[:1])
    model(x)
    one = topo()
    assert topo.names == ["blocks.0", "blocks.1"] and one.item() == pytest.approx(topo.last["blocks.0"])


def test_second_forward_pass_before_the_loss_raises():
    model = TupleNet()
    x = torch.randn(8, 5, 16)
    topo = tt.attach(model, ["blocks.0"], example_input=x[:1])
    model(x)
    with pytest.raises(RuntimeError, match="second forward pass"):
        model(x)
    model(x)  # the failed pass dropped the stale activations: this one is captured alone
    topo().backward()
    with torch.no_grad():  # evaluation under no_grad is never captured
        model(x)
        model(x)
    model(x)
    topo.clear()  # an abandoned pass
    model(x)
    assert torch.isfinite(topo())


@pytest.mark.parametrize("backend", ["eager", "inductor"])
@pytest.mark.parametrize("order", ["compile-then-attach", "attach-then-compile"])
def test_spatial_loss_with_torch_compile_in_either_order(order, backend):
    torch._dynamo.reset()
    model = TupleNet()
    x = torch.randn(8, 5, 16)
    if order == "compile-then-attach":
        cm = torch.compile(model, backend=backend)
        cm(x)  # compiled before the hooks exist
        topo = tt.attach(cm, ["blocks.0", "blocks.1"], example_input=x[:1])
    else:
        topo = tt.attach(model, ["blocks.0", "blocks.1"], example_input=x[:1])
        cm = torch.compile(model, backend=backend)
    ref = TupleNet()
    sl = SpatialCorrelationLoss({"blocks.0": L.grid(4, 4, spacing=1), "blocks.1": L.grid(4, 4, spacing=1)},
                                model=ref)
    cm(x)
    ref(x)
    assert torch.allclose(topo(), sl(), atol=1e-6)
    tt.detach(cm)
    assert not tt.is_attached(model)


def test_set_reads_exponent_floats():
    assert parse_sets(["lam=1e-3", "x=2.5e+4", "y=[1e-3, 2]", "z=abc"]) == {"lam": 1e-3, "x": 2.5e4, "y": [1e-3, 2],
                                                                            "z": "abc"}


def test_huggingface_gpt2_attach_trains_and_detaches():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=16, vocab_size=50, n_positions=32)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg)
    keys = set(model.state_dict())
    names = [f"transformer.h.{i}.{p}" for i in range(2) for p in ("attn", "mlp")]
    x = torch.randint(0, 50, (4, 16))
    with pytest.raises(ValueError):
        tt.attach(model, names + ["transformer.h.9"], example_input=x[:1])
    assert _hooks(model) == 0
    topo = tt.attach(model, names, example_input=x[:1], alpha=1.0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        out = model(x, labels=x)
        spatial = topo()
        total = out.loss + spatial
        total.backward()
        opt.step()
        losses.append((total.item(), spatial.item()))
    assert set(topo.last) == set(names)
    assert losses[-1][0] < losses[0][0] and losses[-1][1] < losses[0][1]  # the total and the spatial part fall
    tt.detach(model)
    assert set(model.state_dict()) == keys and _hooks(model) == 0


def test_library_modules_never_import_experiments():
    import pathlib
    import re
    root = pathlib.Path(tt.__file__).parent
    # the recipe loader alone imports the recipe modules; cli.py, report.py and sweep.py reach them through it
    lib = [p for p in root.rglob("*.py") if "experiments" not in p.parts and p.name != "registry.py"]
    assert len(lib) >= 15
    for p in lib:
        assert not re.search(r"^\s*(from|import)\s+(\.+|topotorch\.)experiments", p.read_text(), re.M), p
    assert len(tt.__all__) <= 16  # a small top level: embed/attach, the costs, relocate, probe, a few models


def test_fit_accumulates_gradients_like_one_big_batch_and_stops_on_nan(tmp_path):
    from topotorch.train import TrainingDiverged, fit
    x, y = torch.randn(8, 4), torch.randn(8, 2)
    models = []
    for accum in (1, 4):
        torch.manual_seed(0)
        m = nn.Linear(4, 2)
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        chunk = 8 // accum
        fit(m, opt, lambda step, micro: F.mse_loss(m(x[micro * chunk:(micro + 1) * chunk]), y[micro * chunk:(micro + 1) * chunk]),
            3, grad_accum=accum, progress=False)
        models.append(m)
    assert torch.allclose(models[0].weight, models[1].weight, atol=1e-6)
    m = nn.Linear(4, 2)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    with pytest.raises(TrainingDiverged, match="step 2"):
        fit(m, opt, lambda step, micro: F.mse_loss(m(x), y) * (float("nan") if step == 2 else 1.0), 5,
            out=tmp_path, checkpoint_every=1, progress=False)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir())[-1] == "step-00000002"


class SkipMLP(MyMLP):
    """A residual connection reads h1 directly: relocating h1 without declaring it would change outputs."""

    def forward(self, x):
        h1 = F.silu(self.fc1(x))
        h2 = F.silu(self.fc2(h1)) + h1[..., :10]
        return self.fc3(h2)


def test_verify_finds_an_undeclared_tensor_and_leaves_the_model_as_it_was():
    m = SkipMLP()
    _scramble(m)
    g = _graph(m)
    x = torch.randn(16, 4)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ValueError, match="'h1'.*'h2'|'h1'"):
        g.verify(x, model=m)
    assert all(torch.equal(state[k], v) for k, v in m.state_dict().items())
    g.layers[1].movable = g.layers[2].movable = False  # what the error suggests
    g.verify(x, model=m)
    before = m(x)
    tt.relocate(g, tt.WiringCost(g), top_k=12)
    assert _same(m(x), before)
    m2 = MyMLP()
    _graph(m2).verify(x, model=m2)  # a fully declared graph passes
