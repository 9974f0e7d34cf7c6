"""Replicas: seeds of a small BIMT model trained as one batched program equal single runs of those seeds.

Tolerance (stated in topotorch.replicas): elementwise steps are the same arithmetic and the batched products' backward
is formed as nn.Linear's, so a replica's gradients equal a single run's except in the last bit of an occasional
element (a vectorised kernel's tail); over a few hundred steps with relocation every weight stays within 5e-4 and the
metrics within 1e-4 relative, and the pruned network's modules are the same."""
import json

import pytest
import torch
import torch.nn.functional as F

import topotorch as tt
from topotorch.cli import main
from topotorch.io import read_state
from topotorch.models import MLP
from topotorch.recipes import batch_refusal, recipe_config, run_recipe, run_seeds
from topotorch.replicas import StackedMLP, replica_losses


def _compare(tmp_path, recipe, over, seeds=(0, 1, 2), w_tol=5e-4, each=None):
    """``each``: per replica, overrides on top of ``over`` (replicas that differ in more than the seed)."""
    overs = [dict(over, seed=s, **(each[i] if each else {})) for i, s in enumerate(seeds)]
    ms, how = run_seeds(recipe, [tmp_path / f"b{i}" for i in range(len(seeds))], overs, tmp_path / "batch",
                        progress=False)
    assert how == "batched"
    for i, (s, m, o) in enumerate(zip(seeds, ms, overs)):
        single = run_recipe(recipe, tmp_path / f"s{i}", o, progress=False)
        A, B = read_state(tmp_path / f"b{i}" / "model.safetensors"), read_state(tmp_path / f"s{i}" / "model.safetensors")
        assert set(A) == set(B)
        for k in A:
            assert torch.allclose(A[k].double(), B[k].double(), atol=w_tol, rtol=0), (s, k)
        for key in ("train_loss", "test_loss", "test_loss_pruned", "wiring_length"):
            assert m[key] == pytest.approx(single[key], rel=1e-4), (s, key)
        assert m["modules"] == single["modules"] and m["params_kept"] == single["params_kept"]
        assert m["seed"] == s and m["replicas"] == len(seeds)
        assert json.loads((tmp_path / f"b{i}" / "config.json").read_text()) == \
            json.loads((tmp_path / f"s{i}" / "config.json").read_text())
        # the run directory as a single run writes it: the same log columns, the same steps, close values
        la = (tmp_path / f"b{i}" / "log.csv").read_text().splitlines()
        lb = (tmp_path / f"s{i}" / "log.csv").read_text().splitlines()
        assert la[0] == lb[0] and len(la) == len(lb)
        for ra, rb in zip(la[1:], lb[1:]):
            for va, vb in zip(ra.split(","), rb.split(",")):
                assert float(va) == pytest.approx(float(vb), rel=1e-3, abs=1e-6)
        assert {p.name for p in (tmp_path / f"b{i}").iterdir()} >= {"network.png", "curves.png", "metrics.json",
                                                                     "model.safetensors", "config.json"}
    return ms


def test_independence_replicas_equal_single_runs_with_relocation_and_the_full_procedure(tmp_path):
    over = {"steps": 300, "swap_interval": 100, "log_interval": 100, "finetune_steps": 60, "refit_steps": 5}
    _compare(tmp_path, "independence", over)


def test_two_moon_replicas_cross_entropy_and_accuracy_equal_single_runs(tmp_path):
    ms = _compare(tmp_path, "two-moon", {"steps": 300, "swap_interval": 100, "log_interval": 100})
    assert all("test_accuracy" in m for m in ms)


def test_replicas_of_different_variants_and_schedules_equal_their_single_runs(tmp_path):
    # a batch as reproduce's sibling rows or a sweep's settings make it: the wiring-cost model, the control without
    # it, L1 without the distance term or swaps, and a different λ schedule — each its own penalty and relocation
    each = [{}, {"variant": "none"}, {"variant": "l1"}, {"lam": 3e-3, "lam_schedule": [[0.5, 3.0]]}, {}]
    ms = _compare(tmp_path, "two-moon", {"steps": 300, "swap_interval": 100, "log_interval": 100},
                  seeds=(0, 0, 0, 0, 1), each=each)
    logs = [(tmp_path / f"b{i}" / "log.csv").read_text().splitlines()[0] for i in range(5)]
    assert "swaps" in logs[0] and "swaps" not in logs[1] and "swaps" not in logs[2]
    assert ms[1]["params_kept"] > ms[0]["params_kept"]  # the control keeps more: the arms really differed


def test_token_models_stack_their_embeddings_with_each_replicas_gradients():
    from topotorch.experiments.bimt import BIMTConfig, build_model
    from topotorch.replicas import StackedTokenMLP
    models = []
    for s in range(3):
        torch.manual_seed(s)
        models.append(build_model(BIMTConfig(task="modular-addition", modulus=7, embedding=4, in_fold=2,
                                             shape=[8, 6, 7]))[0])
    ref = [build_model(BIMTConfig(task="modular-addition", modulus=7, embedding=4, in_fold=2, shape=[8, 6, 7]))[0]
           for _ in range(3)]
    for r, m in zip(ref, models):
        r.load_state_dict(m.state_dict())
    st = StackedTokenMLP(models)
    tok = torch.randint(7, (3, 20, 2), generator=torch.Generator().manual_seed(0))
    y = torch.randint(7, (3, 20), generator=torch.Generator().manual_seed(1))
    losses = replica_losses(F.cross_entropy, st(tok), y) + 0.5 * st.embedding.abs().mean((1, 2))
    losses.sum().backward()
    for s, r in enumerate(ref):
        one = F.cross_entropy(r(tok[s]), y[s]) + 0.5 * r.embedding.abs().mean()
        assert torch.allclose(losses[s], one, rtol=1e-6)
        one.backward()
        assert torch.allclose(st.embedding.grad[s], r.embedding.grad, atol=1e-7)
        assert torch.equal(models[s].embedding, st.embedding[s])  # the replica's embedding is its slice
    with pytest.raises(ValueError, match="integer tokens"):
        st(tok.float())


@pytest.mark.slow
def test_in_context_transformer_replicas_of_both_arms_equal_single_runs_bit_for_bit(tmp_path):
    # every Linear stacked, the replicas' batches one after another through the attention: the same arithmetic
    over = {"steps": 200, "eval_interval": 100}
    ms, how = run_seeds("in-context", [tmp_path / f"b{s}" for s in (0, 1)], [dict(over, seed=s) for s in (0, 1)],
                        tmp_path / "batch", progress=False)
    assert how == "batched"
    for s, m in zip((0, 1), ms):
        single = run_recipe("in-context", tmp_path / f"s{s}", dict(over, seed=s), progress=False)
        for arm in ("bimt", "control"):
            A = read_state(tmp_path / f"b{s}" / arm / "model.safetensors")
            B = read_state(tmp_path / f"s{s}" / arm / "model.safetensors")
            assert set(A) == set(B) and all(torch.equal(A[k], B[k]) for k in A), (s, arm)
            la = (tmp_path / f"b{s}" / arm / "log.csv").read_text().splitlines()
            lb = (tmp_path / f"s{s}" / arm / "log.csv").read_text().splitlines()
            assert la[0] == lb[0] and len(la) == len(lb)
        strip = lambda d: {k: v for k, v in d.items() if "seconds" not in k and k not in ("arms", "replicas")}
        assert strip(m) == strip(single) and m["replicas"] == 4
    # what the stacked model cannot hold is refused by name
    assert "layernorm" in batch_refusal("in-context", [recipe_config("in-context", {"seed": s, "layernorm": True})
                                                      for s in (0, 1)])
    assert "swap_interval" in batch_refusal("in-context", [recipe_config("in-context", {"seed": s, "swap_interval": 50})
                                                          for s in (0, 1)])


def test_stacked_forward_and_gradients_match_each_replica():
    torch.manual_seed(0)
    models, graphs = [], []
    for s in range(3):
        torch.manual_seed(s)
        m = MLP([4, 12, 3])
        g = tt.embed(m)
        graphs.append(g)
        g.permute(0, torch.randperm(4))  # boundary permutations differ per replica
        g.permute(2, torch.randperm(3))
        models.append(m)
    import copy
    singles = [copy.deepcopy(m) for m in models]
    st = StackedMLP(models)
    x, y = torch.randn(3, 50, 4), torch.randn(3, 50, 3)
    out = st(x)
    replica_losses(F.mse_loss, out, y).sum().backward()
    for s, m in enumerate(singles):
        assert torch.allclose(m(x[s]), out[s], atol=1e-6)
        F.mse_loss(m(x[s]), y[s]).backward()
        lin = [q for q in m if isinstance(q, torch.nn.Linear)]
        for k, q in enumerate(lin):
            assert torch.allclose(q.weight.grad, st.weights[k].grad[s], atol=1e-6)
            assert torch.allclose(q.bias.grad, st.biases[k].grad[s], atol=1e-6)
    # every replica's own parameters alias its slice: moving a replica's units moves the stack, exactly
    with torch.no_grad():
        before = st(x)
        w = st.weights[0][1].clone()
        graphs[1].permute(1, torch.randperm(12))
        assert not torch.equal(st.weights[0][1], w)                   # replica 1's slice moved
        assert torch.allclose(st(x), before, atol=1e-6)               # and every replica computes the same
    a, b = MLP([4, 12, 3]), MLP([4, 12, 3], "relu")
    tt.embed(a), tt.embed(b)
    with pytest.raises(ValueError, match="replicas must share one architecture"):
        StackedMLP([a, b])


def test_what_cannot_be_batched_is_named_and_runs_one_by_one():
    cfgs = [recipe_config("modular-addition", {"seed": s}) for s in (0, 1)]
    assert "one at a time" in batch_refusal("modular-addition", cfgs)  # measured: no faster, and amplified bits
    assert "no batched trainer" in batch_refusal("toponets-mlp", [recipe_config("toponets-mlp", {})] * 2)
    mixed = [recipe_config("independence", {"seed": 0}), recipe_config("independence", {"seed": 1, "lr": 0.01})]
    assert "differ in lr" in batch_refusal("independence", mixed)
    steps = [recipe_config("independence", {"seed": 0}), recipe_config("independence", {"variant": "none", "steps": 5})]
    assert "differ in steps" in batch_refusal("independence", steps)
    assert "same config" in batch_refusal("independence", [recipe_config("independence", {})] * 2)
    assert batch_refusal("independence", [recipe_config("independence", {"variant": v, "lam": lam})
                                          for v in ("full", "none") for lam in (1e-3, 1e-2)]) is None
    assert batch_refusal("independence", [recipe_config("independence", {"seed": s}) for s in (0, 1)]) is None


def test_run_seeds_command_writes_one_directory_per_seed(tmp_path, capsys):
    assert main(["run", "two-moon", "--seeds", "2", "--seed", "5", "--steps", "40", "--out", str(tmp_path),
                 "--quiet"]) == 0
    assert "one batched program" in capsys.readouterr().out
    for s in (5, 6):
        assert json.loads((tmp_path / f"seed-{s}" / "metrics.json").read_text())["seed"] == s
    assert (tmp_path / "replicas" / "log.csv").is_file()
    assert main(["run", "toponets-mlp", "--seeds", "2", "--steps", "3", "--out", str(tmp_path / "t"), "--quiet"]) == 0
    assert "one at a time: recipe kind 'toponets-mlp' has no batched trainer" in capsys.readouterr().out


def test_reproduce_trains_sibling_rows_of_a_recipe_as_one_batch(tmp_path, monkeypatch):
    # a claim and its control on one recipe: their seeds train together (4 replicas, a penalty per variant), and each
    # row is what the rows run one by one report (to the replicas' tolerance)
    from topotorch import report
    from topotorch.registry import Claim
    short = {"steps": 200, "swap_interval": 100, "log_interval": 100}
    figs = lambda m: {"test loss": m["test_loss"], "weights kept": m["params_kept"]}
    rows = [Claim("two-moon", "two-moon", "-", lambda m: f"{m['test_loss']:.3f}", lambda m: m["test_loss"] < 1, "network.png",
                  {}, short, figures=figs),
            Claim("control", "two-moon", "-", lambda m: f"{m['test_loss']:.3f}", lambda m: m["params_kept"] > 100,
                  "network.png", {}, dict(short, variant="none"), run_as="two-moon-none", figures=figs)]
    monkeypatch.setattr(report, "claims", lambda: rows)
    got = {b: report.reproduce(tmp_path / str(b), quick=True, seeds=2, progress=False, batched=b) for b in (True, False)}
    log = (tmp_path / "True" / "two-moon" / "replicas" / "log.csv").read_text().splitlines()[0].split(",")
    assert {"test_loss/3", "lam/0", "lam/3", "swaps/1"} <= set(log) and "swaps/2" not in log  # one batch of both rows
    assert not (tmp_path / "False" / "two-moon" / "replicas").exists()
    for a, b in zip(got[True], got[False]):
        assert (a["recipe"], a["seeds"], a["held"]) == (b["recipe"], b["seeds"], b["held"])
        assert set(a["figures"]) == {"test loss", "weights kept"}
        for key, f in a["figures"].items():
            assert f["values"] == pytest.approx(b["figures"][key]["values"], rel=1e-4), key
