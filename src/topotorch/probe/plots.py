"""Maps of one value per unit on its sheet: an image on a grid of cells, a scatter elsewhere."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from .stats import coords_of, is_grid

__all__ = ["draw_map", "plot_maps", "plot_curves"]


def draw_map(ax, values, layout, cmap="RdBu_r", symmetric=True, vmin=None, vmax=None, label=""):
    """One map on ``ax``; returns the artist for a colour bar."""
    v = np.asarray(values, dtype=np.float64)
    c = coords_of(layout)[:, :2]
    if symmetric and vmin is None:
        lim = np.nanmax(np.abs(v)) if np.isfinite(v).any() else 1.0
        vmin, vmax = -(lim or 1.0), (lim or 1.0)
    if is_grid(c):
        g = np.rint(c).astype(int)
        g -= g.min(0)
        img = np.full(g.max(0)[::-1] + 1, np.nan)
        img[g[:, 1], g[:, 0]] = v
        art = ax.imshow(img, cmap=cmap, vmin=vmin, vmax=vmax, origin="lower", interpolation="nearest")
    else:
        s = max(0.2, min(20.0, 6000.0 / len(v)))
        art = ax.scatter(c[:, 0], c[:, 1], c=v, cmap=cmap, vmin=vmin, vmax=vmax, s=s, linewidths=0)
        ax.set_aspect("equal")
    ax.set_xlabel("x (cells)", fontsize=7)
    ax.set_ylabel("y (cells)", fontsize=7)
    ax.tick_params(labelsize=6)
    return art


def plot_maps(maps: dict, path, title: str, cmap="RdBu_r", symmetric=True, vmin=None, vmax=None, label="t"):
    """``maps = {row label: {sheet: (values, layout, subtitle)}}`` as a grid of panels (rows × sheets)."""
    rows = list(maps)
    cols = list(dict.fromkeys(k for r in rows for k in maps[r]))
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(2.8 * len(cols), 2.8 * len(rows)), squeeze=False)
    for i, r in enumerate(rows):
        for j, name in enumerate(cols):
            ax = axes[i, j]
            if name not in maps[r]:
                ax.axis("off")
                continue
            v, lay, sub = maps[r][name]
            art = draw_map(ax, v, lay, cmap, symmetric, vmin, vmax)
            ax.set_title(f"{r} {name}\n{sub}", fontsize=7)
            fig.colorbar(art, ax=ax, fraction=0.046, label=label)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_curves(curves: dict, path, xlabel: str, ylabel: str, title: str = ""):
    """``curves = {label: {"distance": [...], "value": [...]}}`` on one axis."""
    fig, ax = plt.subplots(figsize=(5.2, 3.5))
    styles = ["-", "--", ":", "-."]
    for k, (lab, cd) in enumerate(curves.items()):
        ax.plot(cd["distance"], cd["value"], styles[(k // 10) % 4], marker="o", ms=2, alpha=0.8, label=lab)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
