"""Figures: the BIMT network drawing and training curves (PNG files, headless)."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.collections import LineCollection

from .graph import NeuronGraph

__all__ = ["draw_network", "plot_curves", "plot_arm_curves", "read_log"]


def _unit_xy(graph: NeuronGraph, i: int, gap: float) -> np.ndarray:
    """Drawing coordinates ``(n, 2)`` of layer ``i``: x from the layout, y = layer index · gap.

    2D layouts are drawn in oblique projection (second coordinate lifts the unit a little), and fold
    groups are stacked slightly apart, as in BIMT's drawings.
    """
    lay = graph.layers[i].layout
    c = lay.unit_coords.numpy()
    x = c[:, 0].copy()
    y = np.full(lay.n, i * gap)
    if lay.dim > 1:
        y += c[:, 1] * gap * 0.6
        x += c[:, 1] * 0.15
    if lay.fold > 1:
        y += (np.repeat(np.arange(lay.fold), lay.m) - (lay.fold - 1) / 2) * gap * 0.15
    return np.stack([x, y], 1)


def draw_network(graph: NeuronGraph, path=None, input_names: Sequence[str] | None = None,
                 output_names: Sequence[str] | None = None, gap: float = 0.1, title: str | None = None,
                 ax=None, max_edges: int = 3000):
    """BIMT's network drawing: neurons at their positions, line width ∝ ``|w|`` (per layer, relative to its
    largest weight), blue = positive, red = negative. Labels follow the input/output permutations.

    Connections under 1e-3 of their layer's largest are not drawn; of the rest, at most ``max_edges``, the
    strongest (relative to their layer's largest) — the rule is written under the drawing."""
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(4.5 if max(graph.shape) <= 40 else 7, 1.2 + 0.9 * len(graph.layers)))
    xy = [_unit_xy(graph, i, gap) for i in range(len(graph.layers))]
    edges = []   # (segments, relative weights) per weight layer
    for w in graph.weights:
        W = w.weight.detach().float().cpu()
        W = W.flatten(2).sum(-1) if W.dim() > 2 else W
        mx = W.abs().max()
        if mx <= 0:
            continue
        rel = (W / mx).numpy()
        d, s = np.nonzero(np.abs(rel) > 1e-3)
        edges.append((np.stack([xy[w.dst][d], xy[w.src][s]], 1), rel[d, s]))
    total = sum(len(r) for _, r in edges)
    cut = np.sort(np.concatenate([np.abs(r) for _, r in edges]))[-max_edges] if total > max_edges else 0.0
    for segs, r in edges:
        keep = np.abs(r) >= cut
        ax.add_collection(LineCollection(segs[keep], linewidths=1.5 * np.abs(r[keep]),
                                         colors=np.where(r[keep] > 0, "tab:blue", "tab:red"), zorder=1))
    shown = sum(int((np.abs(r) >= cut).sum()) for _, r in edges)
    ax.text(0.5, -0.02, f"line width ∝ |w| / its layer's largest; {shown} of {total} connections ≥ 1e-3 of it drawn"
            + (f" (the {max_edges} strongest)" if total > max_edges else ""),
            transform=ax.transAxes, ha="center", va="top", fontsize=7, color="dimgray")
    for p in xy:
        ax.scatter(p[:, 0], p[:, 1], s=max(4, 200 / max(graph.shape)), c="black", zorder=2)
    ip, op = graph.input_perm(), graph.output_perm()
    if input_names is not None and len(input_names) == graph.layers[0].n:
        ip = torch.arange(graph.layers[0].n) if ip is None else ip.cpu()
        if len(xy[0]) <= 64:
            fs = 9 if len(xy[0]) <= 16 else 6
            for u, orig in enumerate(ip.tolist()):
                ax.text(xy[0][u, 0], xy[0][u, 1] - gap * 0.35, input_names[orig], ha="center", va="top", fontsize=fs,
                        rotation=0 if len(xy[0]) <= 16 else 90)
    if output_names is not None and len(output_names) == graph.layers[-1].n:
        op = torch.arange(graph.layers[-1].n) if op is None else op.cpu()
        if len(xy[-1]) <= 64:
            fs = 9 if len(xy[-1]) <= 16 else 6
            for u, orig in enumerate(op.tolist()):
                ax.text(xy[-1][u, 0], xy[-1][u, 1] + gap * 0.3, output_names[orig], ha="center", va="bottom",
                        fontsize=fs, rotation=0 if len(xy[-1]) <= 16 else 90)
    ax.set_xlim(-0.05, 1.05 + (0.15 if any(l.layout.dim > 1 for l in graph.layers) else 0))
    ax.set_ylim(-gap * 0.8, (len(graph.layers) - 1) * gap + gap * 0.9)
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=10)
    if own:
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=150)
            plt.close(fig)
        return fig
    return ax


def read_log(path) -> dict[str, np.ndarray]:
    """A log.csv as columns of floats."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return {}
    return {k: np.array([float(r[k]) if r[k] not in ("", None) else np.nan for r in rows]) for k in rows[0]}


def plot_arm_curves(logs: dict, key: str, path, ylabel: str, train_key: str | None = None,
                    hline: tuple[float, str] | None = None, logy: bool = False) -> None:
    """One line per arm of column ``key`` of each arm's ``log.csv`` (``{arm: path}``) against step; with
    ``train_key`` that column too (dotted), with ``hline`` a labelled reference level (dashed)."""
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for arm, p in logs.items():
        if not Path(p).exists():
            continue
        log = read_log(p)
        for k, style, label in ((key, "-", arm), (train_key, ":", f"{arm} train")):
            if k and k in log:
                ok = ~np.isnan(log[k])
                ax.plot(log["step"][ok], log[k][ok], style, label=label)
    if hline is not None:
        ax.axhline(hline[0], color="gray", ls="--", label=hline[1])
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("step"); ax.set_ylabel(ylabel); ax.grid(alpha=0.3); ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_curves(log: dict[str, np.ndarray] | str | Path, path=None, title: str | None = None,
                loss_label: str = "loss (MSE)"):
    """Training curves from a log: losses (log scale) and the wiring cost with λ, against step."""
    if not isinstance(log, dict):
        log = read_log(log)
    if "step" not in log:
        raise ValueError("log has no 'step' column")
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    for key, label in (("train_loss", "train"), ("test_loss", "test")):
        if key in log:
            a.plot(log["step"], log[key], label=label)
    a.set_yscale("log"); a.set_xlabel("step"); a.set_ylabel(loss_label); a.legend(); a.grid(alpha=0.3)
    if "cost" in log:
        b.plot(log["step"], log["cost"], color="tab:green", label="wiring cost")
        b.set_xlabel("step"); b.set_ylabel("wiring cost (Σ|w|·(A·d+l0))"); b.grid(alpha=0.3)
        if "lam" in log:
            b2 = b.twinx()
            b2.plot(log["step"], log["lam"], color="tab:gray", ls="--", label="λ")
            b2.set_ylabel("λ (dashed)")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
        plt.close(fig)
    return fig
