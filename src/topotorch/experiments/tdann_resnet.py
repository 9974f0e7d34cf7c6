"""TDANN at its own shape (Margalit et al., Neuron 2024): a ResNet-18 whose four stages' outputs (``layer1.1`` …
``layer4.1``) are retinotopic sheets — every channel × location a unit, channels scattered within each location's
cell — trained with the spatial correlation loss (one window of ≈500 units per sheet per step, TDANN's setting),
positions swap-pre-optimised on sine gratings, against a control (α = 0) with the same weights, positions and
minibatches.

Measured by the probe kit, as TDANN measures them: orientation preference from sine gratings in the early sheets
(map smoothness, pinwheels per column-spacing²) and category selectivity in the late ones (Welch t-maps; Moran's I
of the face map against shuffled positions; patches).

What differs from TDANN, and why: TDANN trains a full-width ResNet-18 on ImageNet (SimCLR, 200 epochs, 224×224).
Offline on a CPU this recipe trains a narrowed one (``width``) at ``size``×``size`` on the best real images that
need no download — faces and non-faces (LFW), characters (digits), scenes (photograph crops), 100 of each, with
random crops and flips — supervised, for a few hundred steps. Sheet sizes at the defaults: 4096, 2048, 1024, 512
units (TDANN's first: 200,704). Positions are pre-optimised on the initial network's grating responses (TDANN uses
a trained network's).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from ..layout import split_positions
from ..io import save_model, write_json
from ..models import ResNet18
from ..plot import read_log
from ..probe.load import register_run_loader
from ..probe.plots import plot_maps
from ..probe.run import Protocol, Subject, vision_report
from ..probe.sheets import Sheet
from ..probe.vision import gratings, offline_categories
from ..registry import Claim, claims
from ..topography import attach
from ..train import Batches, accuracy, fit, make_optimizer
from . import kind
from .common import arm_steps, check_length, optimize_once, run_arms, start_run

__all__ = ["TDANNResNetConfig", "run_tdann_resnet", "SHEETS"]

SHEETS = ("layer1.1", "layer2.1", "layer3.1", "layer4.1")
EARLY, LATE = ("layer1.1", "layer2.1"), ("layer3.1", "layer4.1")


@dataclass
class TDANNResNetConfig:
    recipe: str = "tdann"
    seed: int = 0
    width: int = 16                 # channels of the first stage (ResNet-18: 64)
    size: int = 64                  # input side (TDANN: 224)
    per_category: int = 100         # images per category (faces: at most 100)
    test_fraction: float = 0.2
    alpha: float = 1.0              # per sheet
    mode: Literal["sampled", "exact"] = "sampled"
    preopt_windows: int = 50
    preopt_swaps: int = 50
    optimizer: Literal["adam", "adamw", "sgd", "rmsprop"] = "adam"
    lr: float = 2e-3                # peak; cosine decay to 0 over the run
    epochs: int = 60
    steps: int | None = None        # optimizer steps per arm; default: epochs × batches per epoch
    batch_size: int = 32
    checkpoint_interval: int = 100
    threads: int = 2
    permutations: int = 199         # shuffled-position permutations per selectivity map (p ≥ 1/200)
    channels_last: bool = True      # NHWC activations: a ~20 % faster step on CPU (last bits differ from NCHW)

    def validate(self):
        check_length(self)
        if self.width < 1 or self.size < 32:
            raise ValueError(f"width must be ≥ 1 and size ≥ 32 (the last sheet needs a map), got {self.width}, {self.size}")
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        if self.batch_size < 1 or self.alpha < 0 or self.checkpoint_interval < 1 or self.permutations < 1:
            raise ValueError("batch_size, checkpoint_interval and permutations must be ≥ 1, alpha ≥ 0")
        if self.preopt_windows < 0 or self.preopt_swaps < 0:
            raise ValueError("preopt_windows and preopt_swaps must be ≥ 0")


def image_split(cfg: TDANNResNetConfig):
    """The four offline categories at ``cfg.size``, split per category (seeded): train and test tensors."""
    x, y, names = offline_categories(cfg.size, cfg.per_category, cfg.seed)
    rs = np.random.RandomState(cfg.seed)
    test = np.concatenate([rs.permutation(np.nonzero(y == c)[0])[:max(1, int(round(cfg.test_fraction * (y == c).sum())))]
                           for c in range(len(names))])
    is_test = np.zeros(len(y), dtype=bool)
    is_test[test] = True
    y = torch.as_tensor(y)
    return x[~is_test], y[~is_test], x[is_test], y[is_test], x, y, names


def augment(x: torch.Tensor, step: int, seed: int) -> torch.Tensor:
    """Random crops (8-pixel reflected padding) and horizontal flips, drawn from ``(seed, step)``: a resumed run
    sees the same images without checkpointing a sampler."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step + 17)
    B, _, H, W = x.shape
    pad = F.pad(x, (8, 8, 8, 8), mode="reflect")
    oy, ox = torch.randint(17, (B,), generator=g), torch.randint(17, (B,), generator=g)
    rows = (oy[:, None] + torch.arange(H))[:, None, :, None].expand(B, x.shape[1], H, W + 16)
    out = pad.gather(2, rows)
    cols = (ox[:, None] + torch.arange(W))[:, None, None, :].expand(B, x.shape[1], H, W)
    out = out.gather(3, cols)
    flip = torch.rand(B, generator=g) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(3), out)


SWEEP_FIGURES = ("test accuracy (topographic arm)", lambda m: m["accuracy_topo"],
                 "face-map Moran's I, late sheets (topographic arm)", lambda m: m["face_morans_i_topo"])


def _summary(r: dict) -> dict:
    """One arm's figures (metrics.json names them with the arm as suffix): early sheets' orientation maps, late
    sheets' face maps."""
    gs, cats = r["probe"]["gratings"]["sheets"], r["probe"]["categories"]["by_category"]
    face = cats["face"]["sheets"]
    return {
        "accuracy": r["accuracy"],
        "orientation_smoothness": float(np.mean([gs[n]["orientation_smoothness"] for n in EARLY])),
        "orientation_local": float(np.mean([gs[n]["orientation_local"] for n in EARLY])),
        "pinwheel_density": float(np.nanmean([gs[n]["pinwheel_density"] for n in EARLY])),
        "osi": float(np.nanmean([gs[n]["osi"] for n in EARLY])),
        "face_morans_i": float(np.mean([face[n]["morans_i"] for n in LATE])),
        "face_morans_i_null": float(np.mean([face[n]["morans_i_null"] for n in LATE])),
        "face_p_value": {n: face[n]["p_value"] for n in LATE},
        "face_patches": float(np.mean([face[n]["patches"] for n in LATE])),
        "category_morans_i": float(np.mean([c["sheets"][n]["morans_i"] for c in cats.values() for n in LATE])),
        "per_sheet": {n: {"orientation_smoothness": gs[n]["orientation_smoothness"],
                          "orientation_local": gs[n]["orientation_local"],
                          "pinwheel_density": gs[n]["pinwheel_density"], "pinwheels": gs[n]["pinwheels"],
                          "face_morans_i": face[n]["morans_i"], "face_p_value": face[n]["p_value"],
                          "face_patches": face[n]["patches"]} for n in SHEETS},
        "preopt": r["preopt"]}


@kind("tdann", TDANNResNetConfig, figures=SWEEP_FIGURES)
def run_tdann_resnet(cfg: TDANNResNetConfig, out, resume: bool = False, progress: bool = True) -> dict:
    """Both arms from the same initial weights, positions and minibatches; each arm's run in ``out/ARM``."""
    out = start_run(cfg, out, resume)
    xtr, ytr, xte, yte, xall, yall, names = image_split(cfg)
    batches = Batches(len(xtr), cfg.batch_size, cfg.seed)
    steps = arm_steps(cfg, batches.per_epoch)
    g = gratings(cfg.size, channels=1)
    # cosine decay to 0: with batch norm on 320 images a constant rate leaves the eval-mode accuracy swinging
    # by tens of points from one step to the next
    cosine = lambda step: cfg.lr * 0.5 * (1 + math.cos(math.pi * step / steps))

    searched = {}  # the control arm reuses the topographic arm's search (same start, same result)

    def one(arm):
        model = ResNet18(classes=len(names), width=cfg.width, in_channels=1)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        topo = attach(model, list(SHEETS), units="locations", example_input=xtr[:2],
                      alpha=cfg.alpha if arm == "topo" else 0.0, mode=cfg.mode, seed=cfg.seed)
        # the same positions in both arms: same initial weights, same grating responses, same seeded search
        pre = (optimize_once(searched, topo, lambda: topo.optimize_positions(
            g.images, windows=cfg.preopt_windows, swaps=cfg.preopt_swaps, seed=cfg.seed))
               if cfg.preopt_windows and cfg.preopt_swaps else {})
        opt = make_optimizer(model.parameters(), cfg.optimizer, cfg.lr)
        spatial = topo if arm == "topo" and cfg.alpha > 0 else None

        def loss_fn(step, micro, model=model, spatial=spatial):
            idx = batches(step)
            loss = F.cross_entropy(model(augment(xtr[idx], step, cfg.seed)), ytr[idx])
            return loss + spatial() if spatial is not None else loss

        gens = {"windows": topo.correlation.generator} if topo.correlation is not None else {}
        info = fit(model, opt, loss_fn, steps, out=out / arm, resume=resume, generators=gens, lr_at=cosine,
                   log_every=max(1, steps // 10), checkpoint_every=cfg.checkpoint_interval, progress=progress,
                   desc=f"tdann[{arm}]", evaluate=lambda step, model=model: {"test_accuracy": accuracy(model, xte, yte)})
        save_model(model, out / f"{arm}.safetensors")
        sub = Subject(arm, model, [Sheet(n, model.get_submodule(n), topo.positions(n), "locations") for n in SHEETS],
                      input_shape=(1, cfg.size, cfg.size))
        probe = vision_report(sub, Protocol(gratings=True, categories=(xall, yall.numpy(), names), per_category=None,
                                            permutations=cfg.permutations, seed=cfg.seed))
        hist = read_log(out / arm / "log.csv")
        result = {"accuracy": accuracy(model, xte, yte), "probe": probe,
                  "coords": {n: topo.positions(n).unit_coords.tolist() for n in SHEETS},
                  "history": {k: v.tolist() for k, v in hist.items()},
                  "preopt": {k: {kk: v[kk] for kk in ("loss_before", "loss_after", "accepted")} for k, v in pre.items()},
                  "last_loss": topo.last}
        topo.remove()
        return result, _summary(result), info["seconds"]

    res, flat, seconds = run_arms(("topo", "control"), cfg.seed, one)
    metrics = {"recipe": cfg.recipe, "seed": cfg.seed, "steps": steps, "seconds": round(seconds, 2),
               "sheet_units": {n: len(res["topo"]["coords"][n]) for n in SHEETS}, **flat}
    _plot(res, out)
    write_json(out / "probe.json", {arm: r["probe"] for arm, r in res.items()}, indent=None)
    write_json(out / "metrics.json", metrics)
    return metrics


def _plot(res, out: Path):
    """Orientation maps of every sheet and face-selectivity t-maps, topographic arm vs control."""
    lay = {arm: r["coords"] for arm, r in res.items()}
    maps = {arm: {n: (v["preferred"], lay[arm][n], f"S {v['orientation_smoothness']:.2f}, {v['pinwheels']} pinwheels")
                  for n, v in r["probe"]["gratings"]["sheets"].items()} for arm, r in res.items()}
    plot_maps(maps, out / "orientation_maps.png", "preferred orientation (sine gratings)", cmap="hsv", symmetric=False,
              vmin=0, vmax=180, label="°")
    maps = {arm: {n: (v["t_map"], lay[arm][n], f"I {v['morans_i']:.2f} (p {v['p_value']:.3f})")
                  for n, v in r["probe"]["categories"]["by_category"]["face"]["sheets"].items()}
            for arm, r in res.items()}
    plot_maps(maps, out / "face_maps.png", "faces vs the other categories: Welch t per unit")


@register_run_loader("tdann")
def probe_run(run) -> list[Subject]:
    """``topotorch probe`` on a tdann run directory: the topographic arm, then the control."""
    from ..config import from_dict
    from ..io import read_json, read_state
    from ..probe.sheets import saved_positions
    run = Path(run)
    cfg = from_dict(TDANNResNetConfig, read_json(run / "config.json", "run config")["config"])
    subs = []
    for arm in ("topo", "control"):
        path = run / f"{arm}.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing — not a finished tdann run")
        model = ResNet18(classes=4, width=cfg.width, in_channels=1)
        sd = read_state(path)
        pos = saved_positions(sd)
        model.load_state_dict(split_positions(sd)[1])
        subs.append(Subject(arm, model, [Sheet(n, model.get_submodule(n), pos[n], "locations") for n in SHEETS],
                            input_shape=(1, cfg.size, cfg.size)))
    return subs


# ---- what `topotorch reproduce` checks ------------------------------------------------------------

claims(Claim(
    "TDANN (ResNet-18 shape, retinotopic sheets)", "tdann",
    "orientation pinwheels in the early sheets (density ≈ π per column-spacing², smooth maps) and category-selective "
    "patches (faces) in the late ones, from a swap-pre-optimised ResNet-18, where a control has neither (Margalit et "
    "al. 2024, ImageNet, 224×224). Held here: early-sheet orientation-map smoothness and late-sheet face-map Moran's I "
    "both above the control's",
    lambda m: f"early orientation smoothness {m['orientation_smoothness_topo']:.2f} vs {m['orientation_smoothness_control']:.2f}, "
              f"local {m['orientation_local_topo']:.2f} vs {m['orientation_local_control']:.2f}; pinwheels/Λ² "
              f"{m['pinwheel_density_topo']:.2f} vs {m['pinwheel_density_control']:.2f} (π = 3.14); late face-map Moran's I "
              f"{m['face_morans_i_topo']:.2f} vs {m['face_morans_i_control']:.2f}, patches {m['face_patches_topo']:.1f} vs "
              f"{m['face_patches_control']:.1f}; accuracy {100 * m['accuracy_topo']:.1f} vs {100 * m['accuracy_control']:.1f}",
    lambda m: m["orientation_smoothness_topo"] > m["orientation_smoothness_control"]
    and m["face_morans_i_topo"] > m["face_morans_i_control"],
    "face_maps.png", {}, {"epochs": 30, "permutations": 99},
    data="LFW faces/non-faces, digits, photograph crops (offline)",
    figures=lambda m: {f"{k} {a}": m[f"{k}_{a}"] for k in ("orientation_smoothness", "orientation_local",
                                                          "pinwheel_density", "face_morans_i", "face_patches", "accuracy")
                       for a in ("topo", "control")}))
