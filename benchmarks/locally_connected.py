"""LocallyConnected2d (one kernel per location: unfold + one batched product) vs an equal-shape nn.Conv2d, forward
and forward + backward, measured side by side; also a naive per-location loop as the reference the layer replaces.

    python benchmarks/locally_connected.py [--threads 2] [--batch 64]

Shapes: All-TNN's first layer at our recipe's scale (1 → 16 channels, 16×16, 5×5) and a larger one (16 → 32
channels, 32×32, 3×3). A locally connected layer does the same multiply-adds as the conv but reads H_out·W_out
times more weights, so a ratio above 1 is inherent; the loop shows what the batched product saves.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from relocate import timed  # the benchmarks' one median-of-repeats timer
from topotorch.locally_connected import LocallyConnected2d


def loop_forward(lc: LocallyConnected2d, x: torch.Tensor) -> torch.Tensor:
    """The layer written as a loop over output locations (what users of the TensorFlow original port by hand)."""
    (kh, kw), (sh, sw), (ph, pw) = lc.kernel_size, lc.stride, lc.padding
    xp = F.pad(x, (pw, pw, ph, ph))
    Ho, Wo = lc.output_size
    out = x.new_empty(x.shape[0], lc.out_channels, Ho, Wo)
    for i in range(Ho):
        for j in range(Wo):
            patch = xp[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw].reshape(x.shape[0], -1)
            out[:, :, i, j] = patch @ lc.weight[i * Wo + j].T
    return out + lc.bias


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"threads {args.threads}, batch {args.batch}; medians of {args.reps}")
    print(f"{'shape':34s} {'conv fwd':>9s} {'LC fwd':>9s} {'ratio':>6s} {'conv f+b':>9s} {'LC f+b':>9s} {'ratio':>6s} "
          f"{'loop fwd':>9s} {'LC vs loop':>10s}")
    for cin, cout, size, k in ((1, 16, 16, 5), (16, 32, 32, 3)):
        torch.manual_seed(0)
        lc = LocallyConnected2d(cin, cout, size, k, padding=k // 2)
        conv = torch.nn.Conv2d(cin, cout, k, padding=k // 2)
        x = torch.randn(args.batch, cin, size, size)
        with torch.no_grad():
            assert torch.allclose(lc(x), loop_forward(lc, x), atol=1e-4)
            fc = timed(lambda: conv(x), args.reps)
            fl = timed(lambda: lc(x), args.reps)
            floop = timed(lambda: loop_forward(lc, x), max(3, args.reps // 5))
        bc = timed(lambda: conv(x).square().mean().backward(), args.reps)
        bl = timed(lambda: lc(x).square().mean().backward(), args.reps)
        name = f"{cin}→{cout} ch, {size}×{size}, {k}×{k}"
        print(f"{name:34s} {fc * 1e3:8.2f}ms {fl * 1e3:8.2f}ms {fl / fc:6.2f} {bc * 1e3:8.2f}ms {bl * 1e3:8.2f}ms "
              f"{bl / bc:6.2f} {floop * 1e3:8.2f}ms {floop / fl:9.1f}×")


if __name__ == "__main__":
    main()
