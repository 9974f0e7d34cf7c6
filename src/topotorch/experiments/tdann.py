"""TDANN-style topographic CNN: the spatial correlation loss on conv feature maps whose every
channel × location unit sits on a retinotopic sheet, positions swap-pre-optimised, vs a control (α = 0)
with the same initial weights and positions."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import matplotlib.pyplot as plt
import numpy as np
import torch.nn.functional as F

from ..layout import split_positions
from ..models import TopoCNN
from .. import metrics as M
from ..data import load_dataset
from ..hooks import responses
from ..io import save_model, write_json
from ..plot import read_log
from ..probe.plots import plot_maps
from ..probe.run import Protocol, Subject, vision_report
from ..probe.load import register_run_loader
from ..probe.sheets import Sheet
from ..topography import attach
from ..train import Batches, accuracy, fit, make_optimizer
from . import kind
from ..registry import Claim, claims, data_claims, front
from .common import arm_steps, check_length, optimize_once, run_arms, start_run


@dataclass
class TDANNConfig:
    recipe: str = "tdann-cnn"
    seed: int = 0
    data: Literal["digits", "mnist"] = "digits"
    data_dir: str = "data/mnist"
    channels: list[int] = field(default_factory=lambda: [16, 32])
    stride: int = 1                 # of the first conv; 2 for MNIST (see TopoCNN)
    alpha: float = 2.0
    mode: Literal["exact", "sampled"] = "exact"
    preopt_windows: int = 50
    preopt_swaps: int = 50
    optimizer: Literal["adam", "adamw", "sgd", "rmsprop"] = "adam"
    lr: float = 2e-3
    epochs: int = 15
    steps: int | None = None        # optimizer steps per arm; default: epochs × batches per epoch
    batch_size: int = 64
    checkpoint_interval: int = 100
    threads: int = 1
    permutations: int = 199         # shuffled-position permutations per map (category probes; p ≥ 1/200)

    def validate(self):
        check_length(self)
        if len(self.channels) != 2 or min(self.channels) < 1:
            raise ValueError(f"channels needs two positive entries, got {self.channels}")
        if self.permutations < 1:
            raise ValueError(f"permutations must be ≥ 1, got {self.permutations}")
        if self.batch_size < 1 or self.alpha < 0 or self.checkpoint_interval < 1 or self.stride < 1:
            raise ValueError("batch_size, checkpoint_interval and stride must be ≥ 1, alpha ≥ 0")


SHEETS = ("conv1", "conv2")


def _responses(model, x, name):
    """Post-ReLU responses ``(N, C·H·W)`` of sheet ``name`` (read in eval mode; the mode is restored)."""
    return F.relu(responses(model, {name: getattr(model, name)}, [x], units="locations")[name])


# task figure and topography figure of a sweep over this recipe
SWEEP_FIGURES = ("test accuracy (topographic arm)", lambda m: m["accuracy_topo"],
                   "smoothness index (TDANN)", lambda m: m["smoothness_topo"])


def _summary(r: dict) -> dict:
    """One arm's figures (metrics.json names them with the arm as suffix)."""
    g, cats = r["probe"]["gratings"], r["probe"]["categories"]["by_category"]
    return {
        "accuracy": r["accuracy"],
        "smoothness": float(np.mean([l["smoothness"] for l in r["layers"].values()])),
        "smoothness_per_layer": {k: l["smoothness"] for k, l in r["layers"].items()},
        "corr_vs_distance": {k: l["corr_vs_distance"] for k, l in r["layers"].items()},
        "preopt": r["preopt"],
        "orientation_smoothness": g["orientation_smoothness"], "orientation_local": g["orientation_local"],
        "osi": g["osi"], "pinwheel_density": g["pinwheel_density"],
        "category_morans_i": float(np.mean([c["morans_i"] for c in cats.values()])),
        "category_morans_i_null": float(np.mean([c["morans_i_null"] for c in cats.values()])),
        "category_p_value": {k: c["p_value"] for k, c in cats.items()},
        "category_patches": float(np.mean([c["patches"] for c in cats.values()])),
        "wiring_ratio": r["probe"]["wiring"]["conv1->conv2"]["ratio"]}


@kind("tdann-cnn", TDANNConfig, figures=SWEEP_FIGURES)
def run_tdann(cfg: TDANNConfig, out, resume: bool = False, progress: bool = True) -> dict:
    """Both arms from the same initial weights, positions and minibatches; each arm's run in ``out/ARM``."""
    out = start_run(cfg, out, resume)
    data = load_dataset(cfg.data, cfg.seed, cfg.data_dir)
    size = data.x_train.shape[-1]
    batches = Batches(len(data.x_train), cfg.batch_size, cfg.seed)
    steps = arm_steps(cfg, batches.per_epoch)

    searched = {}

    def one(arm):
        model = TopoCNN(data.x_train.shape[1], size, tuple(cfg.channels), len(data.output_names), cfg.stride)
        topo = attach(model, list(SHEETS), units="locations", example_input=data.x_train[:2],
                      alpha=cfg.alpha if arm == "topo" else 0.0, mode=cfg.mode, seed=cfg.seed)
        # the same positions in both arms: same weights, same responses (searched once)
        pre = optimize_once(searched, topo, lambda: topo.optimize_positions(
            data.x_train[:256], windows=cfg.preopt_windows, swaps=cfg.preopt_swaps, seed=cfg.seed))
        opt = make_optimizer(model.parameters(), cfg.optimizer, cfg.lr)
        spatial = topo if arm == "topo" and cfg.alpha > 0 else None  # α = 0: the topo arm is a second control

        def loss_fn(step, micro, model=model, spatial=spatial):
            idx = batches(step)
            loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
            return loss + spatial() if spatial is not None else loss

        gens = {"windows": topo.correlation.generator} if topo.correlation is not None else {}
        info = fit(model, opt, loss_fn, steps, out=out / arm, resume=resume, generators=gens,
                   log_every=batches.per_epoch, checkpoint_every=cfg.checkpoint_interval, progress=progress,
                   desc=f"tdann-cnn[{arm}]",
                   evaluate=lambda step, model=model: {"test_accuracy": accuracy(model, data.x_test, data.y_test)})
        save_model(model, out / f"{arm}.safetensors")
        layers = {}
        for name in SHEETS:
            r = _responses(model, data.x_test, name).numpy()
            lay = topo.positions(name)
            tuning = np.stack([r[data.y_test.numpy() == c].mean(0) for c in range(len(data.output_names))], 1)
            layers[name] = {"smoothness": M.smoothness_index(tuning, lay),
                            "corr_vs_distance": M.correlation_vs_distance(r, lay),
                            "preferred": tuning.argmax(1).tolist(), "coords": lay.unit_coords.tolist()}
        sub = Subject(arm, model, [Sheet(n, getattr(model, n), topo.positions(n), "locations") for n in SHEETS],
                      input_shape=tuple(data.x_test.shape[1:]))
        probe = vision_report(sub, Protocol(gratings=True, categories=(data.x_test, data.y_test.numpy(),
                                                                        list(data.output_names)),
                                            per_category=None, wiring=[("conv1", "conv2")],
                                            permutations=cfg.permutations, seed=cfg.seed))
        hist = read_log(out / arm / "log.csv")
        result = {"accuracy": accuracy(model, data.x_test, data.y_test), "layers": layers, "probe": probe,
                  "history": {k: v.tolist() for k, v in hist.items()},
                  "preopt": {k: {kk: v[kk] for kk in ("loss_before", "loss_after", "accepted")} for k, v in pre.items()}}
        topo.remove()
        return result, _summary(result), info["seconds"]

    res, flat, seconds = run_arms(("topo", "control"), cfg.seed, one)
    metrics = {"recipe": cfg.recipe, "seed": cfg.seed, "steps": steps, "seconds": round(seconds, 2), "data": cfg.data,
               **flat}
    _plot(res, out)
    _plot_probe(res, out)
    write_json(out / "probe.json", {arm: r["probe"] for arm, r in res.items()}, indent=None)
    write_json(out / "metrics.json", metrics)
    return metrics


def _plot(res, out):
    fig, axes = plt.subplots(1, len(SHEETS), figsize=(5 * len(SHEETS), 3.4))
    for ax, name in zip(axes, SHEETS):
        for arm, style in (("topo", "-"), ("control", "--")):
            cd = res[arm]["layers"][name]["corr_vs_distance"]
            ax.plot(cd["distance"], cd["correlation"], style, marker="o", ms=3,
                    label=f"{arm} (smoothness {res[arm]['layers'][name]['smoothness']:.2f})")
        ax.set_title(f"{name}: response correlation vs distance", fontsize=10)
        ax.set_xlabel("distance on the sheet (cells)"); ax.set_ylabel("mean response correlation r")
        ax.grid(alpha=0.3); ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "corr_distance.png", dpi=120)
    plt.close(fig)
    fig, axes = plt.subplots(2, len(SHEETS), figsize=(4.2 * len(SHEETS), 7.6), squeeze=False)
    for r, arm in enumerate(("topo", "control")):
        for k, name in enumerate(SHEETS):
            L = res[arm]["layers"][name]
            c = np.asarray(L["coords"])
            sc = axes[r, k].scatter(c[:, 0], c[:, 1], c=L["preferred"], cmap="tab10", vmin=-0.5, vmax=9.5, s=6)
            axes[r, k].set_title(f"{arm} {name}: preferred class", fontsize=9)
            axes[r, k].set_xlabel("x (cells)"); axes[r, k].set_ylabel("y (cells)")
            axes[r, k].set_aspect("equal")
    fig.colorbar(sc, ax=axes, label="preferred digit", ticks=range(10))
    fig.savefig(out / "maps.png", dpi=110)
    plt.close(fig)


def _plot_probe(res, out):
    """Orientation preference maps and the selectivity map of one digit class, topographic arm vs control."""
    lay = {arm: {n: r["layers"][n]["coords"] for n in SHEETS} for arm, r in res.items()}
    maps = {arm: {n: (v["preferred"], lay[arm][n], f"S {v['orientation_smoothness']:.2f}, {v['pinwheels']} pinwheels")
                  for n, v in r["probe"]["gratings"]["sheets"].items()} for arm, r in res.items()}
    plot_maps(maps, out / "orientation_maps.png", "preferred orientation (sine gratings)", cmap="hsv", symmetric=False,
              vmin=0, vmax=180, label="°")
    cat = next(iter(res["topo"]["probe"]["categories"]["by_category"]))
    maps = {arm: {n: (v["t_map"], lay[arm][n], f"I {v['morans_i']:.2f} (p {v['p_value']:.3f})")
                  for n, v in r["probe"]["categories"]["by_category"][cat]["sheets"].items()} for arm, r in res.items()}
    plot_maps(maps, out / "category_maps.png", f"class {cat} vs the other classes: Welch t per unit")


@register_run_loader("tdann-cnn")
def probe_run(run) -> list[Subject]:
    """``topotorch probe`` on a tdann-cnn run directory: the topographic arm, then the control."""
    from ..config import from_dict
    from ..io import read_json, read_state
    from ..probe.sheets import saved_positions
    run = Path(run)
    cfg = from_dict(TDANNConfig, read_json(run / "config.json", "run config")["config"])
    data = load_dataset(cfg.data, cfg.seed, cfg.data_dir)
    subs = []
    for arm in ("topo", "control"):
        path = run / f"{arm}.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing — not a finished tdann-cnn run")
        model = TopoCNN(data.x_train.shape[1], data.x_train.shape[-1], tuple(cfg.channels), len(data.output_names),
                        cfg.stride)
        sd = read_state(path)
        pos = saved_positions(sd)
        model.load_state_dict(split_positions(sd)[1])
        subs.append(Subject(arm, model, [Sheet(n, getattr(model, n), pos[n], "locations") for n in SHEETS],
                            input_shape=tuple(data.x_train.shape[1:])))
    return subs


# ---- what `topotorch reproduce` checks ------------------------------------------------------------

CLAIM = Claim("TDANN (topographic CNN)", "tdann-cnn",
          "smooth topographic maps (smoothness ≈ 0.8, ImageNet ResNet-18) where a control has none, at a modest accuracy "
          "cost; category-selective patches (Margalit et al. 2024). Held here: class-tuning smoothness ≥ 0.15 above the "
          "control's, category-map Moran's I above the control's, accuracy within 3 points",
          lambda m: f"smoothness {m['smoothness_topo']:.2f} vs {m['smoothness_control']:.2f} (conv2: "
                    f"{m['smoothness_per_layer_topo']['conv2']:.2f}); category-map Moran's I {m['category_morans_i_topo']:.2f} "
                    f"vs {m['category_morans_i_control']:.2f}; orientation-map smoothness "
                    f"{m['orientation_smoothness_topo']:.2f} vs {m['orientation_smoothness_control']:.2f}; accuracy "
                    f"{100 * m['accuracy_topo']:.1f} vs {100 * m['accuracy_control']:.1f}",
          lambda m: m["smoothness_topo"] >= m["smoothness_control"] + 0.15 and abs(m["accuracy_topo"] - m["accuracy_control"]) <= 0.03
          and m["category_morans_i_topo"] > m["category_morans_i_control"],
          "corr_distance.png", {}, {},
          figures=lambda m: {"smoothness topo": m["smoothness_topo"], "smoothness control": m["smoothness_control"],
                             "category Moran's I topo": m["category_morans_i_topo"],
                             "category Moran's I control": m["category_morans_i_control"],
                             "orientation smoothness topo": m["orientation_smoothness_topo"],
                             "orientation smoothness control": m["orientation_smoothness_control"],
                             "pinwheels/Λ² topo": m["pinwheel_density_topo"],
                             "pinwheels/Λ² control": m["pinwheel_density_control"],
                             "accuracy topo": m["accuracy_topo"], "accuracy control": m["accuracy_control"]})
claims(CLAIM)


@data_claims
def _mnist_claims(folder) -> list[Claim]:
    """The same claim on MNIST IDX files in ``folder`` or ``folder/mnist-t10k`` (conv1 stride 2)."""
    from ..data import find_mnist
    mdir = find_mnist(folder)
    if mdir is None:
        return []
    over = {"data": "mnist", "data_dir": str(mdir.resolve()), "stride": 2, "mode": "exact", "epochs": 3}
    return [Claim("TDANN (topographic CNN) on MNIST", "tdann-cnn",
                  "on MNIST (conv1 stride 2: 16×14×14 and 32×7×7 location units, exact loss): " + CLAIM.published,
                  CLAIM.measured, CLAIM.holds, "maps.png", over, {**over, "epochs": 2}, run_as="tdann-cnn-mnist",
                  figures=CLAIM.figures, data=f"MNIST ({mdir.name}, IDX)")]


@front
def _alpha_front(quick: bool, folder) -> list[tuple]:
    """TDANN-CNN's α on sklearn's digits."""
    return [("tdann-cnn", "tdann-cnn", {"alpha": [0, 2] if quick else [0, 0.5, 2, 8]}, {}, "sklearn digits")]
