"""Seed BIMT relocation vs topotorch's exact vectorised relocation, side by side in one run.

    python benchmarks/relocate.py [--threads 2] [--repeats 3]

For each shape, both start from the same weights; one relocation round (every neuron layer, top_k = 5)
is timed for each, and the resulting weights are compared (the same swaps give identical weights).
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bimt_reference import BioMLP, copy_into  # noqa: E402

import topotorch as tt  # noqa: E402


def timed(fn, repeats):
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="reference repeats (ours: 20× more)")
    ap.add_argument("--shapes", default="4,20,20,2;784,100,100,10;784,512,512,10")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s); median time of one relocation round (top_k=5)")
    print(f"{'shape':>20} {'params':>8} {'seed ref':>10} {'topotorch':>10} {'speed-up':>9}  same swaps")
    for spec in args.shapes.split(";"):
        shape = [int(s) for s in spec.split(",")]
        torch.manual_seed(0)
        ref0 = BioMLP(shape)
        model0 = tt.MLP(shape)
        copy_into(ref0, model0)
        # Identical-result check on fresh copies: one round each.
        ref, model = copy.deepcopy(ref0), copy.deepcopy(model0)
        g = tt.embed(model)
        cost = tt.WiringCost(g)
        ref.relocate()
        tt.relocate(g, cost, top_k=5)
        same = all(torch.equal(a.linear.weight, b.weight) for a, b in
                   zip(ref.linears, [m for m in model if isinstance(m, torch.nn.Linear)]))
        # Timing: repeated rounds on the evolving copies (each round is a full search either way).
        t_ref = timed(ref.relocate, args.repeats)
        t_ours = timed(lambda: tt.relocate(g, cost, top_k=5), args.repeats * 20)
        n = sum(p.numel() for p in model0.parameters())
        print(f"{str(shape):>20} {n:>8} {t_ref * 1e3:>8.1f}ms {t_ours * 1e3:>8.2f}ms {t_ref / t_ours:>8.0f}×  "
              f"{'yes' if same else 'NO'}", flush=True)


if __name__ == "__main__":
    main()
