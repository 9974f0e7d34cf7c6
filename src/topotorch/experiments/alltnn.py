"""All-TNN (Lu, …, Kietzmann, Nature Human Behaviour 2025) at a small scale: locally connected layers whose units
lie on one sheet each (channels tiled as hypercolumns), trained with All-TNN's smoothness loss (neighbouring units'
kernels point the same way), against the same network without the loss and a CNN of the same shape.

Each arm starts from the same seed and sees the same minibatches; the maps are measured by the probe kit:
orientation preference of the first layer from sine gratings (smoothness, pinwheels), class selectivity of the
last layer (Moran's I against shuffled positions).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from ..models import TNN
from ..costs import CosineSmoothness, cosine_smoothness
from ..costs.cosine import _grid_of, unit_vectors
from ..data import load_dataset
from ..io import save_model, write_json
from ..locally_connected import LocallyConnected2d
from ..probe.plots import plot_maps
from ..probe.run import Protocol, Subject, vision_report
from ..probe.sheets import Sheet
from ..train import Batches, accuracy, fit, make_optimizer
from . import kind
from ..registry import Claim, claims
from .common import arm_steps, check_length, run_arms, start_run

__all__ = ["AllTNNConfig", "TNN", "run_alltnn"]

ARMS = ("alltnn", "lc", "cnn")


@dataclass
class AllTNNConfig:
    recipe: str = "all-tnn"
    seed: int = 0
    data: Literal["digits", "mnist"] = "digits"
    data_dir: str = "data/mnist"
    size: int = 16                   # images resized to size × size (digits are 8 × 8)
    channels: list[int] = field(default_factory=lambda: [16, 16])  # per layer; a 4 × 4 hypercolumn each
    kernels: list[int] = field(default_factory=lambda: [5, 3])
    alpha: float = 10.0              # All-TNN's smoothness weight (the paper: 1, 10, 100)
    neighbours: int = 4              # All-TNN's 4-neighbourhood (8: with diagonals)
    arms: list[str] = field(default_factory=lambda: list(ARMS))
    optimizer: Literal["adam", "adamw", "sgd", "rmsprop"] = "adam"
    lr: float = 1e-3
    epochs: int = 15
    steps: int | None = None         # optimizer steps per arm; default: epochs × batches per epoch
    batch_size: int = 64
    permutations: int = 199          # shuffled-position permutations per map
    checkpoint_interval: int = 200
    threads: int = 1

    def validate(self):
        check_length(self)
        if len(self.channels) != len(self.kernels) or not self.channels or min(self.channels + self.kernels) < 1:
            raise ValueError(f"channels and kernels need one positive entry per layer, got {self.channels}, {self.kernels}")
        if self.size < 2 ** len(self.channels) * 2:
            raise ValueError(f"size {self.size} is too small for {len(self.channels)} layers of 2×2 pooling")
        bad = [a for a in self.arms if a not in ARMS]
        if bad or not self.arms or len(set(self.arms)) != len(self.arms):
            raise ValueError(f"arms must be distinct names from {list(ARMS)}, got {self.arms}")
        if not self.alpha >= 0 or self.neighbours not in (4, 8) or self.batch_size < 1 or self.permutations < 1:
            raise ValueError("alpha must be ≥ 0, neighbours 4 or 8, batch_size and permutations ≥ 1")


def _data(cfg: AllTNNConfig):
    d = load_dataset(cfg.data, cfg.seed, cfg.data_dir)

    def resize(x):
        x = torch.as_tensor(x, dtype=torch.float32)
        return F.interpolate(x, size=(cfg.size, cfg.size), mode="bilinear", align_corners=False) \
            if x.shape[-1] != cfg.size else x
    return resize(d.x_train), d.y_train, resize(d.x_test), d.y_test, list(d.output_names)


def _kernel_smoothness(model: TNN, name: str, sheet: Sheet) -> float:
    """All-TNN's loss value of one layer, on its sheet (for the CNN: its channels' shared kernels per unit)."""
    mod = getattr(model, name)
    with torch.no_grad():
        v = unit_vectors(mod)
        if not isinstance(mod, LocallyConnected2d):  # a conv's unit (o, y, x) has channel o's kernel
            v = v.repeat_interleave(sheet.layout.n // v.shape[0], dim=0)
        return float(cosine_smoothness(v, _grid_of(sheet.layout.unit_coords)))


# task figure and topography figure of a sweep over this recipe
SWEEP_FIGURES = ("test accuracy (All-TNN arm)", lambda m: m["accuracy_alltnn"],
                 "orientation-map local smoothness, first layer", lambda m: m["orientation_local_alltnn"])


@kind("all-tnn", AllTNNConfig, figures=SWEEP_FIGURES)
def run_alltnn(cfg: AllTNNConfig, out, resume: bool = False, progress: bool = True) -> dict:
    out = start_run(cfg, out, resume)
    xtr, ytr, xte, yte, names = _data(cfg)
    batches = Batches(len(xtr), cfg.batch_size, cfg.seed)
    steps = arm_steps(cfg, batches.per_epoch)
    metrics = {"recipe": cfg.recipe, "seed": cfg.seed, "steps": steps, "data": cfg.data, "alpha": cfg.alpha}

    def one(arm):
        model = TNN(xtr.shape[1], cfg.size, cfg.channels, cfg.kernels, len(names), local=arm != "cnn")
        smooth = (CosineSmoothness([getattr(model, n) for n in model.names], neighbours=cfg.neighbours)
                  if arm == "alltnn" and cfg.alpha > 0 else None)
        opt = make_optimizer(model.parameters(), cfg.optimizer, cfg.lr)

        def loss_fn(step, micro, model=model, smooth=smooth):
            idx = batches(step)
            loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
            return loss + cfg.alpha * smooth() if smooth is not None else loss

        info = fit(model, opt, loss_fn, steps, out=out / arm, resume=resume, log_every=batches.per_epoch,
                   checkpoint_every=cfg.checkpoint_interval, progress=progress, desc=f"all-tnn[{arm}]",
                   evaluate=lambda step, model=model: {"test_accuracy": accuracy(model, xte, yte)})
        save_model(model, out / f"{arm}.safetensors")
        sheets = model.sheets()
        probe = vision_report(Subject(arm, model, sheets, input_shape=(xtr.shape[1], cfg.size, cfg.size)),
                              Protocol(gratings=True, categories=(xte, yte.numpy(), names), per_category=None,
                                       wiring=list(zip(model.names, model.names[1:])),
                                       permutations=cfg.permutations, seed=cfg.seed))
        first, last = sheets[0].name, sheets[-1].name
        cats = probe["categories"]["by_category"]
        g = probe["gratings"]["sheets"][first]
        summary = {
            "accuracy": accuracy(model, xte, yte),
            "orientation_smoothness": g["orientation_smoothness"],
            "orientation_local": g["orientation_local"],
            "pinwheel_density": g["pinwheel_density"], "osi": g["osi"],
            "category_morans_i": float(np.mean([c["sheets"][last]["morans_i"] for c in cats.values()])),
            "category_morans_i_null": float(np.mean([c["sheets"][last]["morans_i_null"] for c in cats.values()])),
            "category_patches": float(np.mean([c["sheets"][last]["patches"] for c in cats.values()])),
            "kernel_smoothness": {s.name: _kernel_smoothness(model, s.name, s) for s in sheets},
            "params": sum(p.numel() for p in model.parameters()),
            "wiring_ratio": float(np.mean([w["ratio"] for w in probe["wiring"].values()])),
        }
        return {"probe": probe, "layouts": {s.name: s.layout for s in sheets}}, summary, info["seconds"]

    res, flat, seconds = run_arms(cfg.arms, cfg.seed, one)
    metrics.update(flat)
    metrics["seconds"] = round(seconds, 2)
    _plot(res, out, cfg)
    write_json(out / "probe.json", {arm: r["probe"] for arm, r in res.items()}, indent=None)
    write_json(out / "metrics.json", metrics)
    return metrics


def _plot(res, out, cfg):
    first = next(iter(res.values()))
    names = list(first["layouts"])
    maps = {arm: {names[0]: (r["probe"]["gratings"]["sheets"][names[0]]["preferred"], r["layouts"][names[0]],
                             f"S {r['probe']['gratings']['sheets'][names[0]]['orientation_smoothness']:.2f}")}
            for arm, r in res.items()}
    plot_maps(maps, out / "orientation_maps.png", "first layer: preferred orientation (sine gratings)", cmap="hsv",
              symmetric=False, vmin=0, vmax=180, label="°")
    cat = next(iter(first["probe"]["categories"]["by_category"]))
    maps = {arm: {names[-1]: (r["probe"]["categories"]["by_category"][cat]["sheets"][names[-1]]["t_map"],
                              r["layouts"][names[-1]],
                              f"I {r['probe']['categories']['by_category'][cat]['sheets'][names[-1]]['morans_i']:.2f}")}
            for arm, r in res.items()}
    plot_maps(maps, out / "category_maps.png", f"last layer: class {cat} vs the others, Welch t per unit")


# ---- what `topotorch reproduce` checks ------------------------------------------------------------

claims(Claim(
    "All-TNN (locally connected, smoothness loss)", "all-tnn",
    "smooth orientation maps in early layers and category clusters in late ones, where a CNN and an unconstrained "
    "locally connected network have none, at some accuracy cost (Lu et al. 2025, ecoset). Held here: first-layer "
    "orientation-map local smoothness (1 − neighbours' |Δθ| / random pairs') and last-layer class-map Moran's I of the "
    "All-TNN arm above both controls'",
    lambda m: f"orientation local smoothness {m['orientation_local_alltnn']:.2f} vs {m['orientation_local_lc']:.2f} "
              f"(LC) vs {m['orientation_local_cnn']:.2f} (CNN); TDANN's index {m['orientation_smoothness_alltnn']:.2f} vs "
              f"{m['orientation_smoothness_lc']:.2f} vs {m['orientation_smoothness_cnn']:.2f}; class-map Moran's I "
              f"{m['category_morans_i_alltnn']:.2f} "
              f"vs {m['category_morans_i_lc']:.2f} vs {m['category_morans_i_cnn']:.2f}; accuracy "
              f"{100 * m['accuracy_alltnn']:.1f} vs {100 * m['accuracy_lc']:.1f} vs {100 * m['accuracy_cnn']:.1f}",
    lambda m: m["orientation_local_alltnn"] > max(m["orientation_local_lc"], m["orientation_local_cnn"])
    and m["category_morans_i_alltnn"] > max(m["category_morans_i_lc"], m["category_morans_i_cnn"]),
    "orientation_maps.png", {}, {"epochs": 5},
    figures=lambda m: {f"{k} {a}": m[f"{k}_{a}"] for k in ("accuracy", "orientation_local", "orientation_smoothness",
                                                            "category_morans_i",
                                                            "pinwheel_density")
                       for a in ARMS}))
