"""topolm-paper: TopoLM's published training setting, run on CPU at a tiny width through the same code path (the
recipe's YAML, a streamed dataset read through `datasets`, the global gradient accumulation, the checkpointed
stream position)."""
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from topotorch import data as D
from topotorch.recipes import load_recipe, recipe_config, run_recipe


def _docs(tmp_path, n=120):
    f = tmp_path / "docs.jsonl"
    f.write_text("\n".join(json.dumps({"text": f"document {i}: the cortex maps nouns and verbs {'x' * (i % 17)}."})
                           for i in range(n)))
    return f


def _tiny(f, **kw):
    return {"stream": "json", "stream_config": "", "stream_files": [str(f)], "tokenizer": "bytes", "val_docs": 8,
            "n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16, "batch_size": 2, "grad_accum": 2, "steps": 6,
            "warmup": 2, "lr_decay_steps": 50, "eval_interval": 3, "eval_batches": 1, "checkpoint_interval": 3,
            "preopt_windows": 2, "preopt_swaps": 4, "preopt_radius": 2.0, "radius": 1.0, "device": "cpu",
            "dtype": "float32", "threads": 1, "arms": ["topo"], **kw}


def test_the_recipe_holds_topolms_published_setting():
    r = load_recipe("topolm-paper")
    cfg = recipe_config("topolm-paper")
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size) == (12, 16, 784, 1024)          # 28 × 28 sheets
    assert (cfg.alpha, cfg.neighbourhoods, cfg.radius, cfg.mode, cfg.sheets) == (2.5, 5, 5.0, "sampled", "outputs")
    assert cfg.batch_size * cfg.block_size * cfg.grad_accum == 491_520 and cfg.accum_over_ranks  # tokens per step
    assert (cfg.lr, cfg.min_lr, cfg.warmup, cfg.lr_decay_steps, cfg.beta2) == (6e-4, 6e-5, 2000, 600_000, 0.95)
    assert (cfg.stream, cfg.stream_config, cfg.tokenizer) == ("HuggingFaceFW/fineweb-edu", "sample-10BT", "gpt2")
    assert (cfg.positions, cfg.preopt_windows, cfg.preopt_swaps, cfg.preopt_radius) == ("swap", 50, 50, 10.0)
    assert r.kind == "topolm"
    from importlib import resources
    text = (resources.files("topotorch") / "recipes" / "topolm-paper.yaml").read_text()
    assert "disagree" in text and "600,000" in text  # where TopoLM's README and config disagree is written down


def test_stream_reads_documents_in_order_split_among_ranks_and_continues_exactly(tmp_path):
    pytest.importorskip("datasets")
    f = _docs(tmp_path)
    a = D.stream_tokens("json", None, [str(f)], "bytes", val_docs=8)
    assert bytes(a.val[:10].tolist()).decode() == "document 0"            # the first documents are the validation
    x, y = a.batch("train", 2, 16)
    assert bytes(x[0, :10].tolist()).decode() == "document 8" and torch.equal(x[:, 1:], y[:, :-1])
    a.batch("train", 3, 16)
    state = a.state_dict()
    want = [a.batch("train", 2, 16) for _ in range(4)]
    b = D.stream_tokens("json", None, [str(f)], "bytes", val_docs=8)
    b.load_state_dict(json.loads(json.dumps(state)))                       # through a checkpoint's JSON
    for (wx, wy), (gx, gy) in zip(want, (b.batch("train", 2, 16) for _ in range(4))):
        assert torch.equal(wx, gx) and torch.equal(wy, gy)
    r0 = D.stream_tokens("json", None, [str(f)], "bytes", val_docs=8, rank=0, world=2)
    r1 = D.stream_tokens("json", None, [str(f)], "bytes", val_docs=8, rank=1, world=2)
    assert bytes(r0.batch("train", 1, 10)[0][0].tolist()).decode() == "document 8"
    assert bytes(r1.batch("train", 1, 10)[0][0].tolist()).decode() == "document 9"
    small = D.stream_tokens("json", None, [str(f)], "bytes", val_docs=8)
    with pytest.raises(ValueError, match="ran out"):
        small.batch("train", 400, 64)


def test_tiny_width_trains_resumes_exactly_and_reads_the_stream_position_from_the_checkpoint(tmp_path):
    pytest.importorskip("datasets")
    f = _docs(tmp_path)
    over = _tiny(f)
    m = run_recipe("topolm-paper", tmp_path / "a", over, progress=False)
    assert m["steps"] == 6 and m["val_loss_topo"] < 6.0 and "corr_r_d_topo" in m
    # interrupted after its step-3 checkpoint (the final one removed), then resumed: the same weights
    run_recipe("topolm-paper", tmp_path / "b", over, progress=False)
    import shutil
    shutil.rmtree(tmp_path / "b" / "topo" / "checkpoints" / "step-00000006")
    run_recipe("topolm-paper", tmp_path / "b", over, resume=True, progress=False)
    wa = load_file(str(tmp_path / "a" / "topo" / "model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "topo" / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # the evaluation kit reads the run (bytes: no tokenizer folder needed)
    from topotorch.experiments.topolm import probe_run
    subs = probe_run(tmp_path / "a")
    assert subs[0].name == "topo" and len(subs[0].sheets) == 2


@pytest.mark.slow
def test_two_ranks_under_torchrun_read_their_own_documents_and_stay_identical(tmp_path):
    """The paper's path under torchrun: grad_accum 2 is global (one micro-batch per rank), each rank reads its own
    documents of the stream, the ranks' parameters stay identical."""
    pytest.importorskip("datasets")
    f = _docs(tmp_path, 200)
    sets = [f"{k}={json.dumps(v)}" for k, v in _tiny(f, steps=2, checkpoint_interval=10).items()]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "topotorch.cli",
           "run", "topolm-paper", "--out", str(tmp_path / "r"), "--quiet"] + [x for s in sets for x in ("--set", s)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert m["world_size"] == 2 and m["ddp_identical_topo"] is True
