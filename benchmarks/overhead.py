"""Training-step time with the BIMT wiring cost divided by without it, measured side by side.

    python benchmarks/overhead.py [--threads 2] [--shape 784,512,512,10] [--batch 128]

Steps alternate between the arms (paired), so machine noise hits both; the ratio of medians is printed
for the in-place gradient path (what the trainer uses) and, for reference, the autograd path.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import topotorch as tt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shape", default="784,512,512,10")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=300)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    shape = [int(s) for s in args.shape.split(",")]
    torch.manual_seed(0)
    x = torch.randn(args.batch, shape[0])
    y = torch.randint(0, shape[-1], (args.batch,))
    model = tt.MLP(shape)
    graph = tt.embed(model)
    cost = tt.WiringCost(graph, A=2.0, l0=0.5, reduction="mean")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step(mode):
        opt.zero_grad(set_to_none=False)
        loss = F.cross_entropy(model(x), y)
        if mode == "autograd":
            loss = loss + 1e-3 * cost.value()
        loss.backward()
        if mode == "inplace":
            cost.add_grad_(1e-3)
        opt.step()

    modes = ("plain", "inplace", "autograd")
    times = {m: [] for m in modes}
    for _ in range(20):
        for m in modes:
            step(m)
    for i in range(args.steps):
        for m in modes[i % 3:] + modes[:i % 3]:  # rotate the order too
            t = time.perf_counter()
            step(m)
            times[m].append(time.perf_counter() - t)
    med = {m: statistics.median(v) for m, v in times.items()}
    print(f"torch {torch.__version__}, {args.threads} thread(s), shape {shape}, batch {args.batch}, "
          f"AdamW, {args.steps} paired steps")
    print(f"plain step            {med['plain'] * 1e3:7.2f} ms")
    print(f"+ wiring cost in-place {med['inplace'] * 1e3:7.2f} ms   ratio {med['inplace'] / med['plain']:.3f}")
    print(f"+ wiring cost autograd {med['autograd'] * 1e3:7.2f} ms   ratio {med['autograd'] / med['plain']:.3f}")


if __name__ == "__main__":
    main()
