"""Training-step time of a tiny GPT with the spatial correlation loss ÷ without it, and swap
pre-optimisation speed (incremental O(n) vs naive O(n²) per candidate), measured side by side.

    python benchmarks/spatial_loss.py          # the tiny GPT of the issue / research baseline: 4L 4H d256 T256 B16
    python benchmarks/spatial_loss.py --layers 2 --embd 100 --block 32 --batch 32 --radius 2   # the topolm recipe's GPT
    python benchmarks/spatial_loss.py --device cuda             # TopoLM's shape: 12L 16H d784 T1024 B16, bf16 autocast
    python benchmarks/spatial_loss.py --device cuda --batch 48  # TopoLM's micro-batch
"""
from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from topotorch import layout as L
from topotorch.costs import SpatialCorrelationLoss, correlation_matrix
from topotorch.gpt import GPT, GPTConfig
from topotorch.swaps import swap_optimize, swap_optimize_batched


class TopoLMReference:
    """TopoLM's spatial loss as released, for comparison only: per sheet, ``k`` random sup-norm windows; per
    window ``torch.corrcoef`` of the masked activations (inside autocast), ``1/(1+d)`` of the window's
    coordinates, and ½(1 − Pearson) of the two lower triangles. Hooks record each sheet's output."""

    def __init__(self, sheets, alpha=2.5, k=5, radius=4.0, seed=0):
        self.items = []
        for _name, mod, lay in sheets:
            c = lay.unit_coords.float()
            self.items.append({"coords": c, "acts": None})
            mod.register_forward_hook(lambda m, a, o, it=self.items[-1]: it.__setitem__("acts", o) if self.enabled else None)
        self.alpha, self.k, self.radius = alpha, k, radius
        self.g = torch.Generator().manual_seed(seed)
        self.enabled = True

    def __call__(self):
        total = 0.0
        for it in self.items:
            x = it["acts"].reshape(-1, it["acts"].shape[-1])
            c = it["coords"].to(x.device)
            for _ in range(self.k):
                centre = c[torch.randint(len(c), (1,), generator=self.g).item()]
                mask = (c - centre).abs().amax(1) <= self.radius
                idx = torch.nonzero(mask).flatten()
                r = torch.corrcoef(x[:, idx].T)
                d = 1.0 / (1.0 + torch.cdist(c[idx], c[idx]))
                tri = torch.tril_indices(len(idx), len(idx), -1, device=x.device)
                a, b = r[tri[0], tri[1]], d[tri[0], tri[1]].to(r.dtype)
                corr = torch.corrcoef(torch.stack([a, b]))[0, 1]
                total = total + self.alpha * 0.5 * (1 - corr) / self.k
            it["acts"] = None
        return total


def step_times(args, device):
    torch.manual_seed(0)
    cfg = GPTConfig(args.block, 256, args.layers, args.heads, args.embd)
    model = GPT(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    side = math.isqrt(args.embd)
    hooked = [(n, m) for n, m in model.sheets() if args.where == "outputs" or n.endswith(".mlp")]
    sheets = [(n, m, L.grid(side, side, spacing=1.0).random_permutation(torch.Generator().manual_seed(i)))
              for i, (n, m) in enumerate(hooked)]
    losses = {
        "plain": None,
        "sampled": SpatialCorrelationLoss(sheets, alpha=2.5, mode="sampled", neighbourhoods=5, radius=args.radius),
        "exact": SpatialCorrelationLoss(sheets, alpha=2.5, mode="exact"),
        "topolm-code": TopoLMReference(sheets, alpha=2.5, k=5, radius=args.radius),
    }
    x = torch.randint(0, 256, (args.batch, args.block), device=device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)

    def step(mode):
        sl = losses[mode]
        for other in losses.values():  # only the measured loss records activations
            if other is not None:
                other.enabled = other is sl
        opt.zero_grad(set_to_none=True)
        with amp:
            _, loss = model(x, x)
            if mode == "topolm-code":  # TopoLM computes its loss inside autocast
                loss = loss + sl()
        if sl is not None and mode != "topolm-code":
            loss = loss + sl()
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    modes = list(losses)
    for _ in range(3):
        for m in modes:
            step(m)
    times = {m: [] for m in modes}
    for i in range(args.steps):
        for m in modes[i % len(modes):] + modes[:i % len(modes)]:
            t = time.perf_counter()
            step(m)
            times[m].append(time.perf_counter() - t)
    return {m: statistics.median(v) for m, v in times.items()}


def swap_speed(n, device):
    side = math.isqrt(n)
    lay = L.grid(side, side, spacing=1.0).random_permutation(torch.Generator().manual_seed(0))
    acts = torch.randn(512, 8) @ torch.randn(8, n) + 0.3 * torch.randn(512, n)
    r = correlation_matrix(acts)
    out = {}
    for naive in (False, True):
        swaps = 20 if naive and n > 300 else 200
        _, info = swap_optimize(r, lay, windows=1 if naive else 5, swaps_per_window=swaps, radius=5, naive=naive)
        out["naive" if naive else "fast"] = info["tried"] / info["seconds"]
    big = device.type != "cpu"
    _, info = swap_optimize_batched(r.to(device), lay, candidates=2_000_000 if big else 200_000, radius=5)
    out["batched"] = info["swaps_per_second"]
    return out


def _device_name(device):
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--heads", type=int, default=None)
    ap.add_argument("--embd", type=int, default=None)
    ap.add_argument("--block", type=int, default=None)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--radius", type=float, default=4.0, help="sup-norm radius: 4 gives TopoLM's 9×9 windows")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--no-swaps", action="store_true")
    ap.add_argument("--where", choices=["outputs", "mlp"], default="outputs",
                    help="outputs: attention and MLP output of every block (TopoLM); mlp: MLP outputs only")
    args = ap.parse_args()
    # CPU default: the tiny GPT (4L 4H d256 T256 B16); CUDA default: TopoLM's shape (12L 16H d784 T1024) at B16
    big = args.device.startswith("cuda")
    for k, cpu, gpu in (("layers", 4, 12), ("heads", 4, 16), ("embd", 256, 784), ("block", 256, 1024), ("batch", 16, 16)):
        if getattr(args, k) is None:
            setattr(args, k, gpu if big else cpu)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    t = step_times(args, device)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {device} ({_device_name(device)}); GPT {args.layers}L d{args.embd} "
          f"B{args.batch} T{args.block}; {(2 if args.where == 'outputs' else 1) * args.layers} sheets "
          f"({'attention and MLP' if args.where == 'outputs' else 'MLP'} outputs), α = 2.5 each")
    print(f"plain step                       {t['plain'] * 1e3:8.1f} ms")
    print(f"+ sampled loss (5 windows, r={args.radius:g})  {t['sampled'] * 1e3:8.1f} ms   ratio {t['sampled'] / t['plain']:.3f}")
    print(f"+ exact whole-sheet loss          {t['exact'] * 1e3:8.1f} ms   ratio {t['exact'] / t['plain']:.3f}")
    print(f"+ TopoLM's released loss code     {t['topolm-code'] * 1e3:8.1f} ms   ratio {t['topolm-code'] / t['plain']:.3f}"
          f"   (ours sampled: {t['topolm-code'] / t['sampled']:.2f}× faster per step)")
    if not args.no_swaps:
        for n in (100, 256, 784):
            s = swap_speed(n, device)
            print(f"swap pre-optimisation, n = {n:3d}: {s['batched']:9.0f} candidate swaps/s batched ({device.type}), "
                  f"{s['fast']:7.0f} incremental one at a time (cpu), {s['naive']:5.0f} naive recompute (cpu) "
                  f"({s['batched'] / s['fast']:.0f}× / {s['fast'] / s['naive']:.0f}×)")


if __name__ == "__main__":
    main()
