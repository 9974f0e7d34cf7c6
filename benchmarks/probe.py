"""The probe's map statistics on one sheet, side by side with the per-map code they replace: a category probe
(Welch t per category, each t-map's Moran's I raw and smoothed against shuffled positions) and TDANN's
correlation-vs-distance curve. Both versions must give the same numbers to the last bit (checked here).

    python benchmarks/probe.py [--threads 1] [--categories 10] [--permutations 199]

Sheets: a 64×64 grid (All-TNN's tiled hypercolumns, TopoLM's sheets) and TDANN's first ResNet sheet at our recipe's
width (16 channels × 16×16 locations, retinotopic). The reference tests every map on its own — its own neighbour
weights and its own draw of the shuffles, raw and smoothed apart — and gathers coordinate rows for pair distances;
``morans_i_tests`` draws the shuffles once for all maps, ``pair_distance`` gathers one coordinate at a time.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from topotorch.layout import grid
from topotorch.probe import stats as S
from topotorch.probe.vision import category_selectivity, correlation_vs_distance
from topotorch.topography import retinotopic


def reference_morans_i_test(values, layout, permutations, seed, fwhm=None, radius=1.0, chunk=64) -> dict:
    """One map, its own weights and shuffles (the probe's code before ``morans_i_tests``)."""
    x = np.asarray(values, dtype=np.float64).ravel()
    c = S.coords_of(layout)
    W = S.neighbours(c, radius)
    obs = float(S._morans((S.smooth_map(x, c, fwhm) if fwhm else x)[:, None], W)[0])
    rs = np.random.RandomState(seed)
    K = None if not fwhm or S.is_grid(c) else S._gauss_kernel(c, fwhm / (2 * np.sqrt(2 * np.log(2))))
    null = []
    for start in range(0, permutations, chunk):
        Z = np.stack([x[rs.permutation(len(x))] for _ in range(min(chunk, permutations - start))], 1)
        if fwhm:
            Z = np.asarray(K @ Z) if K is not None else S._smooth_grid_columns(Z, c, fwhm)
        null.append(S._morans(Z, W))
    null = np.concatenate(null)
    return {"i": obs, "null_mean": float(null.mean()), "p_value": float((1 + (null >= obs - 1e-12).sum()) / (1 + len(null)))}


def reference_categories(resp, labels, layout, fwhm, permutations, seed) -> dict:
    out = {}
    for k in np.unique(labels):
        a, b = resp[labels == k], resp[labels != k]
        t, p = S.welch_t(a, b)
        S.fdr(p), S.dprime(a, b)  # the rest of a category probe's work, as category_selectivity does it
        c = S.coords_of(layout)
        S.patches(S.smooth_map(t, c, max(2.0, 0.04 * float(np.ptp(c, 0).max()))), c, 2.0, 10)
        raw = reference_morans_i_test(t, layout, permutations, seed)
        sm = reference_morans_i_test(t, layout, permutations, seed, fwhm)
        out[int(k)] = (raw["i"], raw["null_mean"], raw["p_value"], sm["i"], sm["null_mean"], sm["p_value"])
    return out


def reference_curve(resp, layout, bins=12, max_units=3000, seed=0) -> dict:
    r = torch.as_tensor(np.asarray(resp), dtype=torch.float64)
    c = S.coords_of(layout)
    keep = np.nonzero((r.std(0) > 0).numpy())[0]
    if len(keep) > max_units:
        keep = np.sort(np.random.RandomState(seed).choice(keep, max_units, replace=False))
    x = r[:, keep]
    x = (x - x.mean(0)) / x.std(0)
    R = (x.T @ x / (len(x) - 1)).numpy()
    i, j = np.triu_indices(len(keep), 1)
    cc = c[keep]
    return S.binned_curve(np.sqrt(((cc[i] - cc[j]) ** 2).sum(1)), R[i, j], bins)


def timed(fn, reps):
    best = []
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        best.append(time.perf_counter() - t)
    return float(np.median(best)), out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--categories", type=int, default=10)
    ap.add_argument("--images", type=int, default=40, help="images per category")
    ap.add_argument("--permutations", type=int, default=199)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"threads {args.threads}; {args.categories} categories × {args.images} images, {args.permutations} "
          f"permutations, fwhm 2; medians of {args.reps}")
    print(f"{'sheet':32s} {'categories: per map':>20s} {'shared':>8s} {'ratio':>6s} {'curve: rows':>12s} "
          f"{'columns':>8s} {'ratio':>6s}")
    for name, lay in (("grid 64×64 (4096 units)", grid(64, 64, spacing=1.0)),
                      ("retinotopic 16 ch × 16×16 (4096)", retinotopic(16, 16, 16, seed=0))):
        rs = np.random.RandomState(0)
        c = lay.unit_coords.numpy()
        labels = np.repeat(np.arange(args.categories), args.images)
        # category signals with spatial structure, under noise
        resp = rs.rand(len(labels), len(c)) + 0.3 * np.sin(c[:, 0] / 4 + labels[:, None])
        names = [str(k) for k in range(args.categories)]
        t_ref, ref = timed(lambda: reference_categories(resp, labels, lay, 2.0, args.permutations, 0), args.reps)
        t_new, new = timed(lambda: category_selectivity(resp, labels, names, lay, 2.0, args.permutations, 0), args.reps)
        for k, v in ref.items():
            got = new[str(k)]
            assert v == (got["morans_i"], got["morans_i_null"], got["p_value"], got["morans_i_smoothed"],
                         got["morans_i_smoothed_null"], got["p_value_smoothed"]), f"category {k} differs"
        nat = rs.rand(256, len(c))
        c_ref, cr = timed(lambda: reference_curve(nat, lay), args.reps)
        c_new, cn = timed(lambda: correlation_vs_distance(nat, lay), args.reps)
        assert cr == cn, "the curves differ"
        print(f"{name:32s} {t_ref:19.2f}s {t_new:7.2f}s {t_ref / t_new:5.1f}× {c_ref:11.2f}s {c_new:7.2f}s "
              f"{c_ref / c_new:5.1f}×")


if __name__ == "__main__":
    main()
