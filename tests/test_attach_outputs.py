"""attach on any model: tuple and dict outputs, failure leaves the model as it was, sheets named by module path,
one forward pass per loss, torch.compile in either order, a HuggingFace GPT-2."""

import pytest
import torch
from torch import nn

import topotorch as tt
from topotorch import layout as L
from topotorch.costs import SpatialCorrelationLoss


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
    with pytest.raises(Exception):  # noqa: B017 — whatever the model raises; what matters is what is left behind
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
