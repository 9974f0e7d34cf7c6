"""Seed 001: a LeNet with a locality-prior layer vs an identical control (P = 1); spatial variance of the
LP layer's activation maps, compared per test image with a paired t-test."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats

from ..data import load_dataset
from ..hooks import responses
from ..io import save_model, write_json
from ..metrics import spatial_variance
from ..models import LeNet
from ..plot import read_log
from ..train import Batches, accuracy, fit, make_optimizer
from . import kind
from ..registry import Claim, claims, data_claims
from .common import arm_steps, check_length, run_arms, start_run


@dataclass
class LocalityConfig:
    recipe: str = "locality-prior"
    seed: int = 0
    data: Literal["digits", "mnist"] = "digits"
    data_dir: str = "data/mnist"
    download: bool = True
    side: int = 12                  # the LP sheet is side × side (seed: 7×7 = 49 units on MNIST)
    channels: list[int] = field(default_factory=lambda: [16, 32])
    decay: str = "inverse"          # inverse | inverse-sqrt | inverse-square | linear
    radius: float | None = None     # for the linear decay, in cells
    normalize: bool = False
    strength: float = 1.0           # P = decay(d) ** strength: 0 = no prior (the control), the sweep's knob
    optimizer: Literal["rmsprop", "adam", "adamw", "sgd"] = "sgd"
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 0.01
    epochs: int = 60
    steps: int | None = None        # optimizer steps per arm; default: epochs × batches per epoch
    batch_size: int = 64
    checkpoint_interval: int = 200
    threads: int = 1

    def validate(self):
        check_length(self)
        if self.batch_size < 1 or self.side < 1 or self.threads < 1 or self.checkpoint_interval < 1:
            raise ValueError("batch_size, side, checkpoint_interval and threads must be ≥ 1")
        if len(self.channels) != 2:
            raise ValueError(f"channels needs two entries (conv1, conv2), got {self.channels}")
        if not self.strength >= 0:
            raise ValueError(f"strength must be ≥ 0, got {self.strength}")
        if self.decay == "linear" and not self.radius:
            raise ValueError("decay 'linear' needs --set radius=R (cells)")


def lp_maps(model: LeNet, x: torch.Tensor, batch: int = 1024) -> torch.Tensor:
    """Post-ReLU LP activation maps ``(N, side²)`` of ``model`` (read in eval mode; the mode is restored)."""
    return responses(model, {"act2": model.act2}, (x[i:i + batch] for i in range(0, len(x), batch)))["act2"]


# task figure and topography figure of a sweep over this recipe
SWEEP_FIGURES = ("test accuracy (LP arm)", lambda m: m["accuracy_local"],
                        "spatial variance of LP maps (cells², lower = more local)", lambda m: m["variance_local"])


@kind("locality-prior", LocalityConfig, figures=SWEEP_FIGURES)
def run_locality(cfg: LocalityConfig, out, resume: bool = False, progress: bool = True) -> dict:
    """Both arms from the same initial weights and the same minibatches; each arm's run in ``out/ARM``."""
    out = start_run(cfg, out, resume)
    data = load_dataset(cfg.data, cfg.seed, cfg.data_dir, cfg.download)
    size = data.x_train.shape[-1]
    batches = Batches(len(data.x_train), cfg.batch_size, cfg.seed)
    steps = arm_steps(cfg, batches.per_epoch)

    def one(arm):
        model = LeNet(size, data.x_train.shape[1], tuple(cfg.channels), cfg.side, len(data.output_names),
                      cfg.decay, cfg.radius, cfg.normalize, prior=arm == "local", strength=cfg.strength)
        opt = make_optimizer(model.parameters(), cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.momentum)

        def loss_fn(step, micro, model=model):
            idx = batches(step)
            return F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])

        info = fit(model, opt, loss_fn, steps, out=out / arm, resume=resume, log_every=batches.per_epoch,
                   checkpoint_every=cfg.checkpoint_interval, progress=progress, desc=f"locality-prior[{arm}]",
                   evaluate=lambda step, model=model: {"test_accuracy": accuracy(model, data.x_test, data.y_test)})
        result = {"model": model, "hist": read_log(out / arm / "log.csv"), "maps": lp_maps(model, data.x_test)}
        save_model(model, out / f"{arm}.safetensors")
        return result, {}, info["seconds"]

    res, _, seconds = run_arms(("local", "control"), cfg.seed, one)  # identical initial weights in both arms
    arms = {a: r["model"] for a, r in res.items()}
    hist = {a: r["hist"] for a, r in res.items()}
    maps = {a: r["maps"] for a, r in res.items()}
    coords = arms["local"].sheet.unit_coords
    v = {arm: spatial_variance(maps[arm], coords) for arm in arms}
    ok = torch.isfinite(v["local"]) & torch.isfinite(v["control"])
    t, p = stats.ttest_rel(v["local"][ok].numpy(), v["control"][ok].numpy())
    classes = range(len(data.output_names))
    per_class = {arm: [float(spatial_variance(maps[arm][data.y_test == c].mean(0), coords)) for c in classes]
                 for arm in arms}
    tc, pc = stats.ttest_rel(per_class["local"], per_class["control"])
    if cfg.strength == 0:  # the LP arm is the control: no difference to test (null, not NaN, in the JSON)
        t = p = tc = pc = None
    metrics = {
        "recipe": cfg.recipe, "seed": cfg.seed, "steps": steps, "seconds": round(seconds, 2),
        "data": cfg.data, "decay": cfg.decay,
        "accuracy_local": accuracy(arms["local"], data.x_test, data.y_test),
        "accuracy_control": accuracy(arms["control"], data.x_test, data.y_test),
        "variance_local": float(v["local"][ok].mean()), "variance_control": float(v["control"][ok].mean()),
        "t_statistic": _num(t), "p_value": _num(p), "n_pairs": int(ok.sum()),
        "variance_per_class_local": per_class["local"], "variance_per_class_control": per_class["control"],
        "t_statistic_per_class": _num(tc), "p_value_per_class": _num(pc),
    }
    _plot_maps(maps, data.y_test, cfg.side, out / "maps.png", metrics)
    _plot_variance(v, ok, hist, out / "variance.png", metrics)
    write_json(out / "metrics.json", metrics)
    return metrics


def _plot_maps(maps, y, side, path, m):
    classes = sorted(set(y.tolist()))
    fig, axes = plt.subplots(2, len(classes), figsize=(1.3 * len(classes), 3.2))
    for r, arm in enumerate(("local", "control")):
        for c in classes:
            ax = axes[r, c]
            ax.imshow(maps[arm][y == c].mean(0).reshape(side, side).numpy(), cmap="viridis")
            ax.set_xticks([]); ax.set_yticks([])
            if r == 0:
                ax.set_title(f"class {c}", fontsize=8)
        axes[r, 0].set_ylabel(f"{arm}\nV={m[f'variance_{arm}']:.2f}", fontsize=8)
    test = (f"paired t = {m['t_statistic']:.2f}, p = {m['p_value']:.1e}" if m["t_statistic"] is not None
            else "strength 0: the LP arm is the control")
    fig.suptitle(f"class-mean LP activation maps ({side}×{side} cells); {test}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_variance(v, ok, hist, path, m):
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    bins = np.linspace(float(min(v["local"][ok].min(), v["control"][ok].min())),
                       float(max(v["local"][ok].max(), v["control"][ok].max())), 40)
    for arm in ("local", "control"):
        a.hist(v[arm][ok].numpy(), bins=bins, alpha=0.6, label=f"{arm} (mean {m[f'variance_{arm}']:.2f})")
    a.set_xlabel("spatial variance V of a test image's LP map (cells²)"); a.set_ylabel("test images"); a.legend()
    for arm in ("local", "control"):
        b.plot(hist[arm]["step"], 100 * hist[arm]["test_accuracy"], label=arm)
    b.set_xlabel("step"); b.set_ylabel("test accuracy (%)"); b.legend(); b.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _num(x):
    return None if x is None else float(x)


# ---- what `topotorch reproduce` checks ------------------------------------------------------------

CLAIM = Claim("Locality prior (seed 001)", "locality-prior",
          "accuracy 97.9 (local) vs 98.1 (control); LP-output spatial variance 8.46 vs 8.67, paired t = −6.5",
          lambda m: f"accuracy {100 * m['accuracy_local']:.1f} vs {100 * m['accuracy_control']:.1f}; variance "
                    f"{m['variance_local']:.2f} vs {m['variance_control']:.2f} (12×12 sheet), t = {m['t_statistic']:.1f}, "
                    f"p = {m['p_value']:.1e}, {m['n_pairs']} pairs",
          lambda m: abs(m["accuracy_local"] - m["accuracy_control"]) <= 0.02 and m["variance_local"] < m["variance_control"]
          and m["p_value"] < 0.01, "maps.png", {}, {},
          figures=lambda m: {"accuracy local": m["accuracy_local"], "accuracy control": m["accuracy_control"],
                             "variance local": m["variance_local"], "variance control": m["variance_control"],
                             "paired t": m["t_statistic"]})
claims(CLAIM)


@data_claims
def _mnist_claims(folder) -> list[Claim]:
    """The seed's MNIST setting (7×7 LP sheet) on MNIST IDX files in ``folder`` or ``folder/mnist-t10k``."""
    from ..data import find_mnist
    mdir = find_mnist(folder)
    if mdir is None:
        return []
    over = {"data": "mnist", "data_dir": str(mdir.resolve()), "download": False, "side": 7, "epochs": 10}
    return [Claim(
        "Locality prior on MNIST (seed 001)", "locality-prior", "the seed's MNIST setting (7×7 LP sheet): " + CLAIM.published,
        lambda m: f"accuracy {100 * m['accuracy_local']:.1f} vs {100 * m['accuracy_control']:.1f}; variance "
                  f"{m['variance_local']:.2f} vs {m['variance_control']:.2f} (7×7), t = {m['t_statistic']:.1f}, "
                  f"p = {m['p_value']:.1e}",
        CLAIM.holds, "maps.png", over, {**over, "epochs": 3}, run_as="locality-prior-mnist",
        figures=CLAIM.figures, data=f"MNIST ({mdir.name}, IDX)")]
