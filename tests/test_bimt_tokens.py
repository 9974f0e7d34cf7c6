"""BIMT's token experiments (modular addition, S4) and BIMT on a GPT language model (seed 000's proposal)."""
import itertools

import numpy as np
import pytest
import torch

import topotorch as tt
from topotorch import data as D
from topotorch.experiments.bimt import BIMTConfig, build_model
from topotorch.gpt import GPT, GPTConfig, gpt_graph
from topotorch.io import load_model
from topotorch.recipes import run_recipe
from topotorch.train import Relocation


def test_token_tasks_label_every_pair_correctly():
    m = D.modular_addition(11, seed=3)
    x, y = torch.cat([m.x_train, m.x_test]), torch.cat([m.y_train, m.y_test])
    assert len(x) == 121 and len(m.x_train) == int(121 * 0.8)
    assert torch.equal(y, (x[:, 0] + x[:, 1]) % 11)
    assert len({tuple(r) for r in x.tolist()}) == 121          # every pair once
    s = D.permutation_group(4, seed=0)
    perms = list(itertools.permutations(range(4)))
    for (a, b), lab in zip(torch.cat([s.x_train, s.x_test]).tolist(), torch.cat([s.y_train, s.y_test]).tolist()):
        assert perms[lab] == tuple(perms[b][perms[a][i]] for i in range(4))   # b ∘ a
    assert sum(n.endswith("+") for n in s.output_names) == 12                # A4 is half of S4


def test_token_model_relocation_keeps_its_function():
    cfg = BIMTConfig(task="modular-addition", modulus=13, embedding=8, in_fold=2, shape=[16, 12, 13])
    cfg.validate()
    model, graph = build_model(cfg)
    x = D.modular_addition(13).x_test
    before = model(x)
    moved = tt.relocate(graph, tt.WiringCost(graph, A=2.0, l0=0.5, reduction="mean"), top_k=8, method="assignment")
    assert moved > 0
    assert torch.allclose(model(x), before, atol=1e-5)
    with pytest.raises(ValueError, match="in_fold 2"):
        BIMTConfig(task="modular-addition", modulus=13, embedding=8, in_fold=1, shape=[16, 12, 13]).validate()
    with pytest.raises(ValueError, match="finetune_steps"):   # refused before any training
        BIMTConfig(task="modular-addition", modulus=13, embedding=8, in_fold=2, shape=[16, 12, 13],
                   finetune_steps=100).validate()


@pytest.mark.slow
def test_modular_addition_reads_few_embedding_dimensions(tmp_path):
    over = {"modulus": 23, "shape": [64, 50, 50, 23], "steps": 8000, "log_interval": 1000}
    m = run_recipe("modular-addition", tmp_path, over, progress=False)
    assert m["test_accuracy"] >= 0.95 and m["test_accuracy_pruned"] >= 0.95   # 1.0 here
    assert m["active_embedding_dims"] <= 16                                    # 10 here
    # independent recomputation from the saved model: thresholded first-layer columns, mapped through in_perm
    cfg = BIMTConfig(task="modular-addition", modulus=23, embedding=32, in_fold=2, shape=[64, 50, 50, 23])
    model, graph = build_model(cfg)
    load_model(model, tmp_path / "model.safetensors")
    W1 = model.mlp[0].weight.detach()
    E = model.embedding.detach()
    ip = model.mlp.topo_in_perm
    read = (W1.abs() > 0.01).any(0)
    dims = sorted(int(ip[s]) for s in range(32) if (read[s] or read[32 + s]) and (E[:, ip[s]].abs() > 0.01).any())
    assert dims == m["embedding_dims_active"]
    data = D.modular_addition(23, 0)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(p.abs() > 0.01)
        keep = torch.zeros(32, dtype=torch.bool)
        keep[dims] = True
        model.embedding[:, ~keep] = 0
        acc = float((model(data.x_test).argmax(1) == data.y_test).float().mean())
    assert acc == pytest.approx(m["test_accuracy_active_dims_only"])
    assert 0 <= m["ring_score"] <= 1 and (tmp_path / "embedding.png").stat().st_size > 0


def test_gpt_bimt_relocation_keeps_logits_at_every_swap():
    torch.manual_seed(0)
    m = GPT(GPTConfig(block_size=16, vocab_size=29, n_layer=2, n_head=2, n_embd=16)).double()
    g = gpt_graph(m)
    cost = tt.WiringCost(g, A=1.0, l0=0.1, bias=False)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    idx = torch.randint(0, 29, (4, 16))
    seen = []
    permute = g.permute

    def checked(i, perm, optimizer=None):        # every single move, checked against the logits before it
        ref = m(idx)[0].detach()
        permute(i, perm, optimizer)
        seen.append(float((m(idx)[0] - ref).abs().max()))
    g.permute = checked
    reloc = Relocation(g, cost, opt, every=1, top_k=8, method="greedy")
    for step in range(5):
        opt.zero_grad()
        m(idx, idx)[1].backward()
        cost.add_grad_(1e-3)
        opt.step()
        with torch.no_grad():
            c0 = float(cost.value())
            reloc.after_step(step)
            assert float(cost.value()) <= c0 + 1e-9
    assert reloc.swaps > 0 and len(seen) > 0 and max(seen) < 1e-10


@pytest.mark.slow
def test_gpt_bimt_reports_three_arms_side_by_side(tmp_path):
    m = run_recipe("gpt-bimt", tmp_path, {"quick": True, "n_embd": 32}, progress=False)
    assert set(m["arms"]) == {"bimt", "l1", "control"}
    b, l1, c = (m["arms"][a] for a in ("bimt", "l1", "control"))
    for r in (b, l1, c):
        assert {"val_loss", "kept_fraction", "kept_at_budget", "val_loss_pruned", "modularity_q", "wiring_length",
                "mlp_unit_spread", "head_spread"} <= set(r)
        assert r["val_loss_at_budget"] <= 1.05 * r["val_loss"] + 1e-9
    assert b["wiring_length"] < c["wiring_length"] and b["kept_fraction"] < c["kept_fraction"]
    # the control's kept connections spread over the whole stream (uniform on [0, 1]: std ≈ 0.29)
    assert c["mlp_unit_spread"] == pytest.approx(np.sqrt(1 / 12), abs=0.03)
    assert b["mlp_unit_spread"] < l1["mlp_unit_spread"]
    assert (tmp_path / "circuit.png").stat().st_size > 0


@pytest.mark.parametrize("layernorm", [False, True])
def test_in_context_transformer_relocation_keeps_outputs(layernorm):
    from topotorch.experiments.incontext import RegressionTransformer, incontext_graph
    torch.manual_seed(0)
    m = RegressionTransformer(GPTConfig(block_size=3, vocab_size=1, n_layer=2, n_head=2, n_embd=8, bias=True),
                              2, 2, layernorm).double()
    g = incontext_graph(m)
    x = D.in_context_regression(0, 20).x_test.double()
    before = m(x)
    g.verify(x, model=m)                      # every movable layer moves without changing the output
    assert [l.name for i, l in enumerate(g.layers) if g.is_movable(i)] == ["stream", "block0.hidden", "block1.hidden"]
    assert tt.relocate(g, tt.WiringCost(g, A=2.0, l0=0.5, reduction="mean"), top_k=8, method="assignment") > 0
    assert torch.allclose(m(x), before, atol=1e-10)


@pytest.mark.slow
def test_in_context_learns_in_context_and_reports_survivors(tmp_path):
    m = run_recipe("in-context", tmp_path, {"quick": True}, progress=False)
    base = m["baseline_mse_no_context"]
    assert base == pytest.approx(4 / 3 * 13 / 12, rel=0.1)      # E[w²]·E[x²] = 1/3 · 13/3
    for arm in ("bimt", "control"):
        assert m["arms"][arm]["test_mse_last"] < base / 50        # it uses the pair in its context
    b = m["arms"]["bimt"]
    assert b["params_kept"] < m["arms"]["control"]["params_kept"]
    # survivors recomputed from the saved weights
    from topotorch.experiments.incontext import RegressionTransformer, incontext_graph
    model = RegressionTransformer(GPTConfig(block_size=4, vocab_size=1, n_layer=2, n_head=1, n_embd=32, bias=True),
                                  2, 2)
    incontext_graph(model)  # the graph keeps its positions on the model: build it before loading
    load_model(model, tmp_path / "bimt" / "model.safetensors")
    thr = 0.01
    alive = (model.l_in.weight.abs() > thr).any(1) | (model.l_out.weight.abs() > thr).any(0)
    for b_ in model.blocks:
        for lin in (b_.attn.q, b_.attn.k, b_.attn.v, b_.mlp.c_fc):
            alive |= (lin.weight.abs() > thr).any(0)
        for lin in (b_.attn.c_proj, b_.mlp.c_proj):
            alive |= (lin.weight.abs() > thr).any(1)
    assert int(alive.sum()) == b["stream_units_alive"]
    assert (tmp_path / "circuit.png").stat().st_size > 0
