"""S seeds of a BIMT recipe batched as replicas vs S single runs, side by side in one run.

    python benchmarks/seeds.py [--threads 1] [--steps 4000] [--sizes 1,5,20]

For each S, the same S seeds of the independence recipe ([4, 20, 20, 2] MLP, 100 points, wiring cost, relocation
every 200 steps) train once as one batched program (``recipes.run_seeds``, :mod:`topotorch.replicas`) and once
one run at a time (``run_recipe``). Printed per S: the main training phase alone (what replicas batch) and the whole
run (the post-training stages — pruning to a budget, the masked fine-tune, retrained cuts, the final sweep and the
analysis — run seed by seed in both), as seconds and as ratios to one single run.

The transformer rows (BIMT's in-context regression, 2 blocks d 32) time one training step of S replicas stacked
with ``torch.func`` (``stack_module_state`` + ``vmap`` over ``functional_call``) against S separate steps; that
recipe trains its seeds one at a time (its relocation and pruning act on heads and a shared residual stream), so
these rows measure what batching would give it.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

from topotorch.recipes import run_recipe, run_seeds


def mlp_rows(sizes, steps, tmp: Path, whole: bool):
    over = {"steps": steps, "log_interval": 500, "checkpoint_interval": 10 ** 6}
    if not whole:  # the notebook's procedure: training + analysis, no post-training stages
        over["procedure"] = "seed"
    single_one = None
    run_recipe("independence", tmp / "warm", dict(over, steps=10), progress=False)  # imports, fonts: not timed
    for S in sizes:
        seeds = list(range(S))
        d = tmp / f"b{S}"
        t = time.perf_counter()
        ms, how = run_seeds("independence", [d / f"seed-{s}" for s in seeds], [dict(over, seed=s) for s in seeds],
                            d / "replicas", progress=False, batched=S > 1)
        whole_b = time.perf_counter() - t
        train_b = ms[0]["batch_seconds"] if S > 1 else ms[0]["seconds"]  # the batch's training (shared)
        t = time.perf_counter()
        train_s = 0.0
        for s in seeds:
            m = run_recipe("independence", tmp / f"s{S}" / f"seed-{s}", dict(over, seed=s), progress=False)
            train_s += m["seconds"] if not whole else 0.0
        whole_s = time.perf_counter() - t
        if single_one is None:
            single_one = (train_s / S, whole_s / S)
        print(f"| independence | {S} | {train_b:.1f} s | {train_s:.1f} s | {train_b / single_one[0]:.2f}× | "
              f"{train_s / train_b:.1f}× | {whole_b:.1f} s | {whole_s:.1f} s | {whole_b / single_one[1]:.2f}× | "
              f"{whole_s / whole_b:.1f}× |", flush=True)
        shutil.rmtree(tmp / f"b{S}", ignore_errors=True)
        shutil.rmtree(tmp / f"s{S}", ignore_errors=True)


def transformer_rows(sizes, steps: int = 50):
    from torch.func import functional_call, grad, stack_module_state, vmap
    from topotorch.gpt import GPTConfig
    from topotorch.models import RegressionTransformer
    cfg = GPTConfig(block_size=8, vocab_size=1, n_layer=2, n_head=1, n_embd=32, bias=True)
    x = torch.randn(64, 5, 2)
    one = None
    for S in sizes:
        models = [RegressionTransformer(cfg, 2, 2) for _ in range(S)]
        params, buffers = stack_module_state(models)
        base = models[0]

        def loss(p, b, xb):
            return (functional_call(base, (p, b), (xb,)) - xb).pow(2).mean()
        step = vmap(grad(loss), in_dims=(0, 0, None))
        opt = torch.optim.AdamW(list(params.values()), lr=1e-3)
        for _ in range(3):
            step(params, buffers, x)
        t = time.perf_counter()
        for _ in range(steps):
            g = step(params, buffers, x)
            for k, v in params.items():
                v.grad = g[k]
            opt.step()
        batched = (time.perf_counter() - t) / steps
        opts = [torch.optim.AdamW(m.parameters(), lr=1e-3) for m in models]
        t = time.perf_counter()
        for _ in range(steps):
            for m, o in zip(models, opts):
                (m(x) - x).pow(2).mean().backward()
                o.step()
                o.zero_grad()
        single = (time.perf_counter() - t) / steps
        one = one or single / S
        print(f"| in-context transformer (one step) | {S} | {batched * 1e3:.1f} ms | {single * 1e3:.1f} ms | "
              f"{batched / one:.2f}× | {single / batched:.1f}× | — | — | — | — |", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the recipes pin 1)")
    ap.add_argument("--steps", type=int, default=4000, help="training steps per run (the recipe: 20000)")
    ap.add_argument("--sizes", default="1,5,20")
    ap.add_argument("--whole", action="store_true", help="the recipe's full procedure (pruning to a budget, fine-tune, "
                                                         "retrained cuts, final sweep per seed) instead of the notebook's")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"threads {args.threads}; independence at {args.steps} steps, "
          f"{'full procedure' if args.whole else 'the notebook procedure'}; ratios to one single run of the same phase\n")
    print("| model | S | batched: training | S single: training | batched ÷ one run | speed-up | batched: whole | "
          "S single: whole | batched ÷ one run | speed-up |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        mlp_rows(sizes, args.steps, Path(tmp), args.whole)
    transformer_rows(sizes)


if __name__ == "__main__":
    main()
