"""S seeds of a BIMT recipe batched as replicas vs S single runs, side by side in one run.

    python benchmarks/seeds.py [--threads 1] [--steps 4000] [--sizes 1,5,20]

For each S, the same S seeds of the independence recipe ([4, 20, 20, 2] MLP, 100 points, wiring cost, relocation
every 200 steps) train once as one batched program (``recipes.run_seeds``, :mod:`topotorch.replicas`) and once
one run at a time (``run_recipe``). Printed per S: the main training phase alone (what replicas batch) and the whole
run (the post-training stages — pruning to a budget, the masked fine-tune, retrained cuts, the final sweep and the
analysis — run seed by seed in both), as seconds and as ratios to one single run.

The transformer rows: the same for BIMT's in-context regression (2 blocks, d 32; both arms of every seed), its
seeds stacked by :class:`~topotorch.replicas.StackedModule` (bit-identical to single runs).
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


def transformer_rows(sizes, steps, tmp: Path):
    """The in-context recipe (both arms per seed) at ``steps`` steps: S seeds as one stacked program
    (``StackedModule``) vs one run at a time."""
    over = {"steps": steps, "eval_interval": max(1, steps // 4), "checkpoint_interval": 10 ** 6}
    run_recipe("in-context", tmp / "warm", dict(over, steps=10), progress=False)  # imports: not timed
    single_one = None
    for S in sizes:
        seeds = list(range(S))
        d = tmp / f"t{S}"
        t = time.perf_counter()
        ms, how = run_seeds("in-context", [d / f"seed-{s}" for s in seeds], [dict(over, seed=s) for s in seeds],
                            d / "replicas", progress=False, batched=S > 1)
        whole_b = time.perf_counter() - t
        train_b = ms[0]["batch_seconds"] if S > 1 else sum(a["seconds"] for a in ms[0]["arms"].values())
        t = time.perf_counter()
        train_s = 0.0
        for s in seeds:
            m = run_recipe("in-context", tmp / f"u{S}" / f"seed-{s}", dict(over, seed=s), progress=False)
            train_s += sum(a["seconds"] for a in m["arms"].values())
        whole_s = time.perf_counter() - t
        if single_one is None:
            single_one = (train_s / S, whole_s / S)
        print(f"| in-context (2 arms) | {S} | {train_b:.1f} s | {train_s:.1f} s | {train_b / single_one[0]:.2f}× | "
              f"{train_s / train_b:.1f}× | {whole_b:.1f} s | {whole_s:.1f} s | {whole_b / single_one[1]:.2f}× | "
              f"{whole_s / whole_b:.1f}× |", flush=True)
        shutil.rmtree(d, ignore_errors=True)
        shutil.rmtree(tmp / f"u{S}", ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the recipes pin 1)")
    ap.add_argument("--steps", type=int, default=4000, help="training steps per run (the recipe: 20000)")
    ap.add_argument("--sizes", default="1,5,20")
    ap.add_argument("--transformer-steps", type=int, default=1000, help="in-context steps per run (the recipe: 40000)")
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
        transformer_rows(sizes, args.transformer_steps, Path(tmp))


if __name__ == "__main__":
    main()
