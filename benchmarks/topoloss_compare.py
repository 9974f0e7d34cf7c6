"""topotorch's weight smoothness vs the public ``topoloss`` package: value, gradient and speed, side by side.

    pip install topoloss        # only here, for the comparison; topotorch does not depend on it
    python benchmarks/topoloss_compare.py [--threads 2]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from topotorch.costs import WeightSmoothness


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    try:
        from topoloss import LaplacianPyramid, TopoLoss
    except ImportError:
        raise SystemExit("install the reference first: pip install topoloss") from None
    worst_v = worst_g = 0.0
    print(f"torch {torch.__version__}, {args.threads} thread(s)")
    print(f"{'layers':>44} {'|Δ value|':>10} {'max|Δ grad|':>12} {'topoloss':>10} {'topotorch':>10} {'speed-up':>8}")
    for seed in range(args.seeds):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(784, 256), nn.Conv2d(16, 64, 3), nn.Linear(512, 3072 // (1 + seed % 2)))
        specs = [(model[0], 4.0, 4.0, 1.0), (model[1], 2.0, 2.0, 0.5), (model[2], 8.0, 8.0, 2.0)]
        ref = TopoLoss(losses=[LaplacianPyramid.from_layer(model, m, factor_h=fh, factor_w=fw, scale=s)
                               for m, fh, fw, s in specs])
        ours = WeightSmoothness(specs)
        grads = []
        for f in (lambda: ref.compute(model), ours):
            model.zero_grad()
            v = f()
            v.backward()
            grads.append((v.item(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
        dv = abs(grads[0][0] - grads[1][0])
        dg = max((a - b).abs().max().item() for a, b in zip(grads[0][1], grads[1][1]))
        worst_v, worst_g = max(worst_v, dv), max(worst_g, dg)

        def timed(f, reps=20):
            ts = []
            for _ in range(reps):
                model.zero_grad()
                t = time.perf_counter()
                f().backward()
                ts.append(time.perf_counter() - t)
            return statistics.median(ts)
        tr, to = timed(lambda: ref.compute(model)), timed(ours)
        shape = f"[784→256, conv 16→64, 512→{model[2].out_features}]"
        print(f"{shape:>44} {dv:10.2e} {dg:12.2e} {tr * 1e3:8.2f}ms {to * 1e3:8.2f}ms {tr / to:7.2f}×")
    print(f"worst |Δ value| {worst_v:.2e}, worst |Δ gradient| {worst_g:.2e} (target 1e-5): "
          f"{'MATCH' if max(worst_v, worst_g) <= 1e-5 else 'MISMATCH'}")


if __name__ == "__main__":
    main()
