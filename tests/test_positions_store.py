"""One position store: neuron graphs keep their layouts as buffers on the model (saved with it, shared with a
topography, followed by the wiring cost after loading), and a saved BIMT model alone redraws its network."""

import pytest
import torch

import topotorch as tt
from topotorch import layout as L
from topotorch import metrics as M
from topotorch.cli import main
from topotorch.costs import WiringCost
from topotorch.gpt import GPT, GPTConfig, gpt_graph
from topotorch.graph import WeightsOnly, from_state_dict
from topotorch.io import read_state, save_model
from topotorch.models import MLP, TokenMLP


def _bio2d():
    return [L.grid(4), L.grid(6), L.ring(5)]  # BioMLP2D's input grid, a square hidden grid, the output ring


def test_saved_state_alone_rebuilds_the_graph_with_folds_permutations_and_metrics(tmp_path):
    torch.manual_seed(0)
    model = MLP([16, 36, 5])
    g = tt.embed(model, _bio2d())
    for i, layer in enumerate(g.layers):
        g.permute(i, torch.randperm(layer.layout.m))
    save_model(model, tmp_path / "model.safetensors")
    r = from_state_dict(read_state(tmp_path / "model.safetensors"))
    assert isinstance(r.model, WeightsOnly) and r.shape == g.shape
    for a, b in zip(g.layers, r.layers):
        assert torch.equal(a.layout.unit_coords, b.layout.unit_coords) and a.layout.fold == b.layout.fold
    for a, b in zip(g.weights, r.weights):
        assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    assert torch.equal(r.input_perm(), g.input_perm()) and torch.equal(r.output_perm(), g.output_perm())
    # the measures read from the file equal those of the live model (independent code paths: live vs rebuilt)
    assert M.wiring_length(r, 0.0) == pytest.approx(M.wiring_length(g, 0.0), rel=1e-12)
    assert WiringCost(r, A=2.0).value().item() == pytest.approx(WiringCost(g, A=2.0).value().item(), rel=1e-6)
    with pytest.raises(RuntimeError, match="not its activations"):
        r.model(torch.randn(2, 16))


def test_token_model_fold_is_read_back_from_repeating_positions(tmp_path):
    model = TokenMLP(7, 3, [6, 12, 7])
    g = tt.embed(model.mlp, "line", in_fold=2)
    r = from_state_dict(model.state_dict())
    assert r.layers[0].layout.fold == 2 and r.layers[0].layout.m == 3
    assert torch.equal(r.layers[0].layout.unit_coords, g.layers[0].layout.unit_coords)


def test_state_without_positions_is_refused_by_name():
    model = MLP([4, 8, 2])
    tt.embed(model)
    sd = {k: v for k, v in model.state_dict().items() if not k.endswith(L.POSITIONS)}
    with pytest.raises(ValueError, match="no positions"):
        from_state_dict(sd)
    with pytest.raises(ValueError, match="exactly one"):
        from_state_dict({"0.weight": torch.zeros(2, 2)})


def test_loading_a_state_moves_the_layout_and_the_wiring_cost_follows():
    torch.manual_seed(0)
    rows = [L.grid(1, 4), L.grid(1, 9), L.grid(1, 2)]  # same dimension as "grid", other places
    a, b = MLP([4, 9, 2]), MLP([4, 9, 2])
    ga, gb = tt.embed(a, "grid"), tt.embed(b, rows)
    b.load_state_dict(a.state_dict())
    cost_b = WiringCost(gb)  # built on b's loaded state: equals a's
    assert cost_b.value().item() == pytest.approx(WiringCost(ga).value().item(), rel=1e-12)
    c = MLP([4, 9, 2])
    gc = tt.embed(c, rows)
    cost_c = WiringCost(gc)
    before = cost_c.value().item()
    c.load_state_dict(a.state_dict())  # positions (and weights) replaced under a live cost: no manual refresh
    assert gc.layers[1].layout == ga.layers[1].layout
    assert cost_c.value().item() == pytest.approx(WiringCost(ga).value().item(), rel=1e-12) != before


def test_bimt_and_topolm_share_one_position_per_unit_on_a_gpt():
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=32, block_size=16, n_layer=2, n_head=2, n_embd=16))
    g = gpt_graph(m, stream=L.square_grid(16))
    mods = [f"blocks.{i}.{p}.c_proj" for i in range(2) for p in ("attn", "mlp")]
    before = {k for k in m.state_dict()}
    topo = tt.attach(m, mods, graph=g)
    assert set(m.state_dict()) == before  # no second set of positions
    for name in mods:
        assert torch.equal(topo.positions(name).unit_coords, g.layers[0].layout.unit_coords)
    x = torch.randint(0, 32, (4, 16))
    _, loss = m(x, x)
    (loss + topo() + WiringCost(g).value()).backward()
    with pytest.raises(ValueError, match="share their positions"):
        topo.optimize_positions(x)
    tt.detach(m)
    assert set(m.state_dict()) == before and g.layers[0].layout.n == 16
    # a module outside the graph cannot share; a graph-positioned module without graph= is named
    with pytest.raises(ValueError, match="not a weight layer of the graph"):
        tt.attach(m, ["lm_head"] if hasattr(m, "lm_head") else ["wpe"], graph=g)
    with pytest.raises(ValueError, match="pass graph= to share"):
        tt.attach(m, ["blocks.0.mlp.c_fc"])
    assert set(m.state_dict()) == before


def test_gpt_graph_rebuilt_before_loading_takes_the_saved_positions(tmp_path):
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=32, block_size=16, n_layer=1, n_head=2, n_embd=16)
    m = GPT(cfg)
    g = gpt_graph(m, stream=L.square_grid(16))
    g.permute(0, torch.randperm(16))
    save_model(m, tmp_path / "m.safetensors")
    m2 = GPT(cfg)
    g2 = gpt_graph(m2, stream=L.grid(1, 16))  # other places (same dimension), replaced on load
    tt.io.load_model(m2, tmp_path / "m.safetensors")
    assert g2.layers[0].layout == g.layers[0].layout
    assert WiringCost(g2).value().item() == pytest.approx(WiringCost(g).value().item(), rel=1e-12)


def test_draw_command_needs_only_the_weights_file(tmp_path):
    torch.manual_seed(0)
    model = MLP([16, 36, 5])
    tt.embed(model, _bio2d())
    save_model(model, tmp_path / "model.safetensors")
    assert not (tmp_path / "config.json").exists()
    assert main(["draw", str(tmp_path / "model.safetensors"), "--out", str(tmp_path / "net.png")]) == 0
    assert (tmp_path / "net.png").stat().st_size > 10_000
    (tmp_path / "x.safetensors").write_bytes(b"not a file")
    assert main(["draw", str(tmp_path / "x.safetensors")]) == 2


def test_casting_the_model_leaves_graph_positions_exact():
    """model.half() / .float() cast every floating buffer; the layouts a graph reads stay the float64 positions."""
    model = MLP([4, 20, 7])
    g = tt.embed(model, [L.line(4), L.line(20), L.ring(7)])  # a ring's coordinates are not representable in half
    want = [layer.layout.unit_coords.clone() for layer in g.layers]
    model.half()
    assert L.positions_of(model[2]).dtype == torch.float16
    assert all(torch.equal(layer.layout.unit_coords, w) for layer, w in zip(g.layers, want))
    model.float()
    assert all(torch.equal(layer.layout.unit_coords, w) for layer, w in zip(g.layers, want))
    other = MLP([4, 20, 7])
    tt.embed(other, [L.line(4), L.line(20), L.grid(1, 7)])
    model.load_state_dict({k: v.float() for k, v in other.state_dict().items()})  # new positions are read
    assert not torch.equal(g.layers[2].layout.unit_coords, want[2])
