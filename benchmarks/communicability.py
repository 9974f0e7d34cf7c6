"""seRNN's communicability cost: value and gradient with topotorch's matrix-exponential backward vs torch's own,
side by side in one run.

    python benchmarks/communicability.py [--threads 1] [--networks 12] [--units 100]

Both compute ``expm`` with ``torch.linalg.matrix_exp`` (the same values); torch differentiates it through a 2n×2n
block exponential, topotorch through a Taylor scaling-and-squaring approximant (``costs.communicability``). Printed:
milliseconds per value + gradient of the cost on ``networks`` random recurrent matrices (seRNN's recipe: 12 of 100
units), the ratio, and each float32 gradient's largest error against torch's float64 gradient.
"""
from __future__ import annotations

import argparse
import time

import torch

from topotorch.costs import communicability as C


def cost(W, P, expm):
    A = W.abs()
    r = A.sum(-1).clamp_min(1e-12).rsqrt()
    E = expm(r[..., :, None] * A * r[..., None, :]) * (1 - torch.eye(W.shape[-1], dtype=W.dtype))
    return (A * E * torch.cdist(P, P)).sum()


def timed(W, P, expm, reps):
    for _ in range(2):
        torch.autograd.grad(cost(W, P, expm), W)
    t = time.perf_counter()
    for _ in range(reps):
        g = torch.autograd.grad(cost(W, P, expm), W)[0]
    return (time.perf_counter() - t) / reps * 1e3, g


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--networks", type=int, default=12)
    ap.add_argument("--units", type=int, default=100)
    ap.add_argument("--reps", type=int, default=20)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    grid = next(g for g in ((5, 5, 4), (a.units, 1, 1)) if g[0] * g[1] * g[2] == a.units)
    P = C.grid3d(grid).float()
    W = (torch.randn(a.networks, a.units, a.units) * 0.1).requires_grad_(True)
    W64 = W.detach().double().requires_grad_(True)
    truth = torch.autograd.grad(cost(W64, P.double(), torch.linalg.matrix_exp), W64)[0]
    print(f"{a.networks} networks of {a.units} units, {a.threads} thread(s); value + gradient of the cost")
    rows = {}
    for name, fn in (("torch matrix_exp backward", torch.linalg.matrix_exp), ("topotorch (Taylor adjoint)", C._MatrixExp.apply)):
        ms, g = timed(W, P, fn, a.reps)
        rows[name] = ms
        err = (g.double() - truth).abs().max().item() / truth.abs().max().item()
        print(f"  {name:28s} {ms:8.1f} ms   largest gradient error {err:.1e} (relative to the largest entry)")
    print(f"  speed-up: {rows['torch matrix_exp backward'] / rows['topotorch (Taylor adjoint)']:.2f}×")


if __name__ == "__main__":
    main()
