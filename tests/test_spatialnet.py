import json
import math

import numpy as np
import pytest
import torch

import topotorch as tt
from topotorch.experiments import spatialnet as S
from topotorch.io import save_model
from topotorch.cli import main
from topotorch.costs import proximity_cost, transport_cost

QUICK = dict(epochs=1, hidden=[12, 8], batch_size=512)


def test_transport_and_proximity_match_hand_values_and_give_position_gradients():
    model = tt.MLP([1, 2])
    g = tt.embed(model)
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[2.0], [-1.0]]))
    p_in = torch.tensor([[0.0, 0.0]], requires_grad=True)
    p_out = torch.tensor([[3.0, 4.0], [0.0, 1.0]], requires_grad=True)
    # mean over the 2 connections of d·w²: (5·4 + 1·1)/2; with |w|: (5·2 + 1·1)/2.
    assert transport_cost([p_in, p_out], g, "l2").item() == pytest.approx(10.5, rel=1e-6)
    assert transport_cost([p_in, p_out], g, "l1").item() == pytest.approx(5.5, rel=1e-6)
    # one pair at distance sqrt(9 + 9) in each direction: mean_{i≠j} exp(-d) = exp(-sqrt(18)).
    assert proximity_cost([None, p_out]).item() == pytest.approx(math.exp(-math.sqrt(18)), rel=1e-6)
    (transport_cost([p_in, p_out], g) + proximity_cost([None, p_out])).backward()
    assert p_out.grad.abs().sum() > 0 and p_in.grad.abs().sum() > 0
    assert model[0].weight.grad is not None
    with pytest.raises(ValueError, match="phi"):
        transport_cost([p_in, p_out], g, "l3")
    with pytest.raises(ValueError, match="position tensors"):
        transport_cost([p_out], g)


@pytest.mark.parametrize("combine", ["concatenate", "mix", "sequential"])
def test_two_task_data_combinators(combine):
    d = S.two_task_data(["digits", "mnist1d"], combine, 0)
    D = {"concatenate": 104, "mix": 64, "sequential": 64}[combine]
    assert d.x_train.shape[1] == D and d.probe[0].shape[1] == D
    if combine == "sequential":
        assert set(d.y_train[:, 1].tolist()) == {0, 1} and len(d.x_train) == 1438 + 4000
    else:
        assert d.y_train.shape == (4000, 2)
    if combine == "concatenate":
        assert d.slices == [(0, 64), (64, 104)]
        assert torch.all(d.probe[0][:, 64:] == 0) and torch.all(d.probe[1][:, :64] == 0)


@pytest.mark.slow
def test_quick_training_then_record_plot_split_score(tmp_path):
    cfg = S.SpatialConfig(**QUICK)
    S.train_spatial(cfg, tmp_path, progress=False)
    rec = S.record(tmp_path)
    assert rec["layer0/variance"].shape == (2, 12) and rec["layer1/mean_abs"].shape == (2, 8)
    for p in S.plot_run(tmp_path):
        assert p.stat().st_size > 0
    a = S.split(tmp_path, "probability", seed=3)
    assert [len(l) for l in a["layers"]] == [12, 8]
    assert main(["score", str(tmp_path)]) == 0
    sc = json.loads((tmp_path / "scores.json").read_text())
    assert len(sc["accuracy"]) == 2 and all(0 <= v <= 1 for v in sc["split_accuracy"])
    _, model, _ = S.load_run(tmp_path)
    assert model.positions[0].requires_grad is False  # the input patches are fixed


def test_greedy_split_recovers_block_modules_exactly(tmp_path):
    cfg = S.SpatialConfig(**QUICK)
    S.train_spatial(cfg, tmp_path, progress=False)
    _, model, data = S.load_run(tmp_path)
    lin = [m for m in model.net if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():  # digits inputs → hidden units 0..5 → 0..3 → head 0; mnist1d → the rest → head 1
        for W, blocks in ((lin[0].weight, [(slice(0, 6), slice(0, 64)), (slice(6, 12), slice(64, 104))]),
                          (lin[1].weight, [(slice(0, 4), slice(0, 6)), (slice(4, 8), slice(6, 12))]),
                          (lin[2].weight, [(slice(0, 10), slice(0, 4)), (slice(10, 20), slice(4, 8))])):
            mask = torch.zeros_like(W)
            for r, c in blocks:
                mask[r, c] = 1
            W.mul_(mask)
    save_model(model, tmp_path / "model.safetensors")
    a = S.split(tmp_path, "greedy")
    assert a["layers"] == [[0] * 6 + [1] * 6, [0] * 4 + [1] * 4]
    full = model(data.x_test)
    for t in range(2):
        sub = S.load_split_model(tmp_path, t)
        assert torch.allclose(sub(data.x_test), model.task_logits(full, t), atol=1e-5)


def test_workflow_errors_are_clear(tmp_path, capsys):
    with pytest.raises(S.RunError, match="no config.json"):
        S.record(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"config": {}}))
    with pytest.raises(S.RunError, match="no model.safetensors"):
        S.score(tmp_path)
    assert main(["record", str(tmp_path / "nope")]) == 2
    assert "no such run directory" in capsys.readouterr().err
    with pytest.raises(ValueError, match="two"):
        S.SpatialConfig(tasks=["digits"]).validate()
    (tmp_path / "config.json").write_text("[1, 2]")  # valid JSON, not an object
    assert main(["record", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "config.json" in err[0] and "JSON object" in err[0]
    (tmp_path / "config.json").write_text("{broken")
    assert main(["score", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "config.json" in err[0] and "not a readable" in err[0]
    two = tmp_path / "two"
    for arm in ("spatial", "control"):
        (two / arm).mkdir(parents=True)
        (two / arm / "model.safetensors").write_bytes(b"x")
    (two / "config.json").write_text(json.dumps({"config": {}}))
    assert main(["plot", str(two)]) == 2
    err = capsys.readouterr().err
    assert "two-arm run" in err and str(two / "spatial") in err and str(two / "control") in err


def test_paired_tasks_get_new_partners_every_epoch():
    d = S.two_task_data(["digits", "mnist1d"], "concatenate", 0)
    x0, y0 = d.epoch_data(0)
    x1, y1 = d.epoch_data(1)
    assert torch.equal(y0[:, 0], y1[:, 0]) and torch.equal(x0[:, :64], x1[:, :64])  # digits cycle in order
    assert not torch.equal(y0[:, 1], y1[:, 1])  # their MNIST-1D partners change
    assert torch.equal(d.epoch_data(1)[0], x1)  # deterministic per epoch
    seq = S.two_task_data(["digits", "mnist1d"], "sequential", 0)
    assert seq.epoch_data(3)[0] is seq.x_train


def test_mnist1d_cache_returns_the_generated_data_and_survives_a_damaged_file(tmp_path, monkeypatch):
    import contextlib
    import io

    from mnist1d.data import get_dataset_args, make_dataset

    from topotorch import data as D
    monkeypatch.setenv("HOME", str(tmp_path))
    D._mnist1d_arrays.cache_clear()
    with contextlib.redirect_stdout(io.StringIO()):
        ref = make_dataset(get_dataset_args())
    first = D.mnist1d()
    (f,) = (tmp_path / ".cache" / "topotorch" / "mnist1d").glob("*.npz")
    f.write_bytes(b"damaged")
    D._mnist1d_arrays.cache_clear()
    again = D.mnist1d()
    first.x_train += 1  # a caller's changes do not reach the next caller
    for s in (D.mnist1d(), again):
        assert np.array_equal(s.x_train.numpy(), ref["x"].astype(np.float32))
        assert np.array_equal(s.y_test.numpy(), ref["y_test"])
    D._mnist1d_arrays.cache_clear()
