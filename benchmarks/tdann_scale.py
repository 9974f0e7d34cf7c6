"""TDANN at its own shape: a ResNet-18 with retinotopic sheets on the four stages' outputs (``layer1.1`` … ``layer4.1``,
every channel × location a unit), a training step with the spatial correlation loss ÷ the same step without it, and
each case's peak memory, measured side by side.

    python benchmarks/tdann_scale.py [--threads 2] [--size 64] [--width 64] [--batch 16] [--device cpu]

Each case runs in its own process (peak memory is per process: resident set size on CPU, the allocator's peak
on a GPU); inside it, steps with and without the loss alternate, so the ratio compares like with like. Cases:
``plain`` (no loss), ``sampled`` (attach's TDANN defaults: one window of ≈500 units per sheet per step), ``exact``
(the whole sheet; refused by name above 8192 units, then the message is printed) and ``preopt`` (TDANN's swap
pre-optimisation on sine gratings, 50 windows × 50 swaps per sheet). At 64×64 the sheets hold 16,384 + 8,192 +
4,096 + 2,048 units; at 224×224, TDANN's own sizes, 200,704 + 100,352 + 50,176 + 25,088.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

SHEETS = ["layer1.1", "layer2.1", "layer3.1", "layer4.1"]


def case(args) -> dict:
    import torch
    import torch.nn.functional as F
    from topotorch.models import ResNet18
    from topotorch.topography import attach
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    torch.manual_seed(0)
    model = ResNet18(classes=10, width=args.width).to(dev)
    x = torch.rand(args.batch, 3, args.size, args.size, device=dev)
    y = torch.randint(10, (args.batch,), device=dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    out = {"case": args.case}
    topo = None

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    if args.case != "plain":
        try:
            topo = attach(model, SHEETS, units="locations", example_input=x[:2],
                          mode="exact" if args.case == "exact" else "sampled")
        except ValueError as e:
            return {**out, "refused": str(e), "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20}
        out["sheets"] = {s.name: {"units": s.layout.n, "radius": round(s.radius, 2)} for s in topo.correlation.sheets}
    if args.case == "preopt":
        from topotorch.probe.vision import gratings
        g = gratings(args.size)
        t = time.perf_counter()
        info = topo.optimize_positions(g.images.to(dev), windows=50, swaps=50)
        out["seconds"] = time.perf_counter() - t
        out["per_sheet"] = {k: {kk: v[kk] for kk in ("loss_before", "loss_after", "accepted", "seconds")}
                            for k, v in info.items()}
    else:
        amp = dev.type == "cuda"

        def step(on: bool):
            if topo is not None:
                topo.correlation.enabled = on
            opt.zero_grad(set_to_none=True)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                loss = F.cross_entropy(model(x), y)
            if on:
                loss = loss + topo()
            loss.backward()
            opt.step()

        on = topo is not None
        for _ in range(3):
            step(False), step(on)
        plain, loss = [], []
        for _ in range(args.steps):  # alternate: both see the same machine state
            sync(); t = time.perf_counter(); step(False); sync(); plain.append(time.perf_counter() - t)
            sync(); t = time.perf_counter(); step(on); sync(); loss.append(time.perf_counter() - t)
        out["plain_ms"] = 1e3 * statistics.median(plain)
        out["step_ms"] = 1e3 * statistics.median(loss)
        out["ratio"] = out["step_ms"] / out["plain_ms"]
    out["peak_gb"] = (torch.cuda.max_memory_allocated() / 2 ** 30 if dev.type == "cuda"
                      else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cases", default="plain,sampled,exact,preopt")
    ap.add_argument("--case", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        print(json.dumps(case(args)))
        return
    print(f"ResNet-18 shape, width {args.width}, {args.size}×{args.size} inputs, batch {args.batch}, "
          f"{args.device}, {args.threads} threads; sheets {', '.join(SHEETS)}")
    mem = "peak GPU memory" if args.device != "cpu" else "peak RSS"
    for name in args.cases.split(","):
        cmd = [sys.executable, __file__, "--case", name, "--threads", str(args.threads), "--size", str(args.size),
               "--width", str(args.width), "--batch", str(args.batch), "--steps", str(args.steps),
               "--device", args.device]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode:
            print(f"{name:8s} FAILED (exit {res.returncode}): {res.stderr.strip().splitlines()[-1:]}")
            continue
        r = json.loads(res.stdout.strip().splitlines()[-1])
        if "refused" in r:
            print(f"{name:8s} refused: {r['refused']}  ({mem} {r['peak_gb']:.2f} GB)")
        elif name == "preopt":
            per = ", ".join(f"{k} {v['loss_before']:.4f}→{v['loss_after']:.4f} ({v['seconds']:.1f} s)"
                            for k, v in r["per_sheet"].items())
            print(f"{name:8s} 50 windows × 50 swaps per sheet in {r['seconds']:.1f} s; {mem} {r['peak_gb']:.2f} GB; {per}")
        elif name == "plain":
            print(f"{name:8s} step {r['plain_ms']:.1f} ms; {mem} {r['peak_gb']:.2f} GB")
        else:
            print(f"{name:8s} step {r['step_ms']:.1f} ms vs plain {r['plain_ms']:.1f} ms: ratio {r['ratio']:.3f}; "
                  f"{mem} {r['peak_gb']:.2f} GB")


if __name__ == "__main__":
    main()
