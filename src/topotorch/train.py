"""Training: BIMT's loop (AdamW, piecewise λ, swaps, bias-penalty start) with logs, checkpoints, resume.

``train_bimt(config, out)`` runs one BIMT experiment end to end and writes ``metrics.json``,
``network.png``, ``curves.png``, ``model.safetensors``, ``config.json`` and ``log.csv`` into ``out``.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import data as D
from . import metrics as M
from .checkpoint import Checkpointer, check_same_config, save_model
from .costs import WiringCost
from .graph import embed
from .layout import atomic_write_text
from .models import MLP
from .plot import draw_network, plot_curves
from .relocate import relocate

__all__ = ["make_optimizer", "tensorboard_writer", "accuracy", "fit_classifier", "BIMTConfig", "train_bimt", "TrainingDiverged", "finish_bimt", "piecewise", "CSVLog", "VARIANTS"]

# BIMT's ablation (seed 003's train_type 1–5): (L1 on, distance term in training, swaps on).
VARIANTS = {
    "none": (False, False, False),
    "l1": (True, False, False),
    "l1-local": (True, True, False),
    "l1-swap": (True, False, True),
    "full": (True, True, True),
}


OPTIMIZERS = {
    "adam": lambda p, c: torch.optim.Adam(p, lr=c["lr"], weight_decay=c["weight_decay"]),
    "adamw": lambda p, c: torch.optim.AdamW(p, lr=c["lr"], weight_decay=c["weight_decay"]),
    "rmsprop": lambda p, c: torch.optim.RMSprop(p, lr=c["lr"], weight_decay=c["weight_decay"], momentum=c["momentum"]),
    "sgd": lambda p, c: torch.optim.SGD(p, lr=c["lr"], weight_decay=c["weight_decay"], momentum=c["momentum"]),
}


def make_optimizer(params, name: str, lr: float, weight_decay: float = 0.0, momentum: float = 0.0):
    """An optimizer by name: adam, adamw, rmsprop, sgd."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose from {sorted(OPTIMIZERS)}")
    return OPTIMIZERS[name](params, {"lr": lr, "weight_decay": weight_decay, "momentum": momentum})


@torch.no_grad()
def accuracy(model, x: torch.Tensor, y: torch.Tensor, batch: int = 2048) -> float:
    """Top-1 accuracy of ``model`` (in eval mode) on ``x``, ``y``."""
    was = model.training
    model.eval()
    correct = sum(int((model(x[i:i + batch]).argmax(-1) == y[i:i + batch]).sum()) for i in range(0, len(x), batch))
    model.train(was)
    return correct / len(x)


def fit_classifier(model, x, y, epochs: int, batch_size: int, optimizer, seed: int = 0, extra_loss=None,
                   loss_fn=None, progress: bool = True, desc: str = "train", x_test=None, y_test=None,
                   on_step=None, epoch_data=None) -> list[dict]:
    """Minibatch training with cross-entropy (or ``loss_fn(model, xb, yb)``) plus ``extra_loss()``.

    Shuffles with its own seeded generator; ``epoch_data(epoch) -> (x, y)``, when given, supplies each
    epoch's training set (e.g. freshly paired tasks). Returns one ``{epoch, train_loss, test_accuracy}``
    per epoch. A non-finite loss raises :class:`TrainingDiverged`.
    """
    gen = torch.Generator().manual_seed(seed)
    loss_fn = loss_fn or (lambda m, xb, yb: F.cross_entropy(m(xb), yb))
    history = []
    steps = epochs * ((len(x) + batch_size - 1) // batch_size)
    bar = tqdm(total=steps, disable=not progress, desc=desc, unit="step", mininterval=0.5)
    step = 0
    for epoch in range(epochs):
        model.train()
        if epoch_data is not None:
            x, y = epoch_data(epoch)
        perm = torch.randperm(len(x), generator=gen)
        tot, n = 0.0, 0
        for i in range(0, len(x), batch_size):
            idx = perm[i:i + batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model, x[idx], y[idx])
            if extra_loss is not None:
                loss = loss + extra_loss()
            if not torch.isfinite(loss):
                raise TrainingDiverged(f"{desc}: loss became {loss.item()} in epoch {epoch}; stopped")
            loss.backward()
            optimizer.step()
            if on_step is not None:
                on_step(step)
            step += 1
            tot += loss.item() * len(idx)
            n += len(idx)
            bar.update(1)
        rec = {"epoch": epoch, "train_loss": tot / n}
        if x_test is not None:
            rec["test_accuracy"] = accuracy(model, x_test, y_test)
        bar.set_postfix({k: f"{v:.3g}" for k, v in rec.items() if k != "epoch"})
        history.append(rec)
    bar.close()
    return history


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def piecewise(base: float, schedule, steps: int):
    """λ(step) = base × Π factor over milestones ``int(frac·steps) ≤ step`` (BIMT: ×10 at ¼, ×0.1 at ¾)."""
    marks = [(int(frac * steps), factor) for frac, factor in schedule]

    def at(step: int) -> float:
        v = base
        for s, f in marks:
            if step >= s:
                v *= f
        return v
    return at


def tensorboard_writer(out, enabled: bool):
    """A TensorBoard ``SummaryWriter`` under ``out/tb`` when ``enabled`` (needs the optional extra)."""
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ImportError("TensorBoard logging needs the optional extra: pip install 'topotorch[tensorboard]'") from None
    return SummaryWriter(str(Path(out) / "tb"))


class CSVLog:
    """Append-only CSV log (mirrored to TensorBoard when a writer is given); on resume, rows after the
    restart step are dropped first."""

    def __init__(self, path, fields: list[str], resume_step: int | None = None, tensorboard=None):
        self.path, self.fields, self.tb = Path(path), fields, tensorboard
        if resume_step is not None and self.path.exists():
            with open(self.path, newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if int(float(r["step"])) < resume_step]
        else:
            rows = []
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fields)
            w.writeheader()
            w.writerows(rows)
        tmp.replace(self.path)
        self._fh = open(self.path, "a", newline="")
        self._w = csv.DictWriter(self._fh, fields)

    def write(self, row: dict) -> None:
        self._w.writerow(row)
        self._fh.flush()
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, int(row["step"]))

    def close(self) -> None:
        self._fh.close()
        if self.tb is not None:
            self.tb.close()


@dataclass
class BIMTConfig:
    """One BIMT run (defaults: seed 003's independence task)."""

    recipe: str = "independence"
    task: str = "independence"        # a key of topotorch.data.SYMBOLIC
    seed: int = 0
    shape: list[int] = field(default_factory=lambda: [4, 20, 20, 2])
    activation: str = "silu"
    in_fold: int = 1
    layout: Literal["line", "grid"] = "line"
    n_train: int = 100
    n_test: int = 100
    steps: int = 20000
    lr: float = 2e-3
    weight_decay: float = 0.0
    lam: float = 1e-3                 # λ before the schedule
    lam_schedule: list[list[float]] = field(default_factory=lambda: [[0.25, 10.0], [0.75, 0.1]])
    bias_penalty_start: float = 0.75  # fraction of steps after which biases are penalised
    swap_interval: int = 200
    top_k: int = 5
    relocate_method: Literal["greedy", "assignment"] = "greedy"
    A: float = 1.0
    l0: float = 0.1
    exponent: float = 1.0
    reduction: Literal["sum", "mean"] = "sum"
    no_penalize_last: bool = False
    variant: Literal["none", "l1", "l1-local", "l1-swap", "full"] = "full"
    threshold: float = 1e-2
    log_interval: int = 200
    checkpoint_interval: int = 2000
    threads: int = 1
    tensorboard: bool = False         # also log to out/tb (pip install 'topotorch[tensorboard]')

    def validate(self) -> None:
        if self.task not in D.SYMBOLIC:
            raise ValueError(f"task must be one of {sorted(D.SYMBOLIC)}, got {self.task!r}")
        d_in, f, _ = D.SYMBOLIC[self.task]
        n_out = D.symbolic(self.task, 0, 1, 1).y_train.shape[1]
        if len(self.shape) < 2 or self.shape[0] != d_in or self.shape[-1] != n_out:
            raise ValueError(f"shape {self.shape} does not fit task {self.task!r}: needs {d_in} inputs and "
                             f"{n_out} outputs")
        for k in ("steps", "swap_interval", "top_k", "log_interval", "checkpoint_interval", "threads"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k} must be ≥ 1, got {getattr(self, k)}")
        if self.lr <= 0 or self.lam < 0 or self.threshold < 0:
            raise ValueError("lr must be positive, lam and threshold non-negative")
        for item in self.lam_schedule:
            if len(item) != 2 or not 0 <= item[0] <= 1:
                raise ValueError(f"lam_schedule entries are [fraction in 0..1, factor], got {item}")
        if self.shape[0] % self.in_fold:
            raise ValueError(f"in_fold {self.in_fold} does not divide the input size {self.shape[0]}")


def _finite(x: torch.Tensor) -> bool:
    return bool(torch.isfinite(x).all())


def train_bimt(cfg: BIMTConfig, out, resume: bool = False, progress: bool = True) -> dict:
    """Train one BIMT model and write the run directory; returns the metrics dict."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    conf = dataclasses.asdict(cfg)
    ckpt = Checkpointer(out)
    if resume:
        check_same_config(out, conf)
    last = ckpt.resume_point(resume)

    t0 = time.time()
    data = D.symbolic(cfg.task, cfg.seed, cfg.n_train, cfg.n_test)
    torch.manual_seed(cfg.seed)
    model = MLP(cfg.shape, cfg.activation)
    graph = embed(model, cfg.layout, in_fold=cfg.in_fold)
    l1_on, local_on, swap_on = VARIANTS[cfg.variant]
    penalize = [True] * (len(graph.weights) - 1) + [not cfg.no_penalize_last]
    cost_args = dict(l0=cfg.l0, exponent=cfg.exponent, reduction=cfg.reduction, penalize=penalize)
    cost = WiringCost(graph, A=cfg.A if local_on else 0.0, **cost_args)
    # Swaps use the training cost; only the l1-swap ablation (no distance term in training) needs the
    # geometry for relocation, or its swaps would all be no-ops.
    reloc_cost = cost if local_on else WiringCost(graph, A=cfg.A, **cost_args)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    lam_at = piecewise(cfg.lam if l1_on else 0.0, cfg.lam_schedule, cfg.steps)
    bias_start = int(cfg.bias_penalty_start * cfg.steps)

    start, elapsed_before = 0, 0.0
    if last is not None:
        st = ckpt.load(last, model, opt)
        start, elapsed_before = st["step"], st["extra"].get("seconds", 0.0)
    atomic_write_text(out / "config.json", json.dumps({"config": conf, "layouts": graph.state_dict()}, indent=1))
    log = CSVLog(out / "log.csv", ["step", "train_loss", "test_loss", "cost", "lam", "swaps"],
                 resume_step=start if resume else None, tensorboard=tensorboard_writer(out, cfg.tensorboard))
    x, y, xt, yt = data.x_train, data.y_train, data.x_test, data.y_test
    swaps = 0
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, disable=not progress,
               desc=f"{cfg.recipe}[{cfg.variant}]", unit="step", mininterval=0.5)
    try:
        for step in bar:
            lam = lam_at(step)
            opt.zero_grad(set_to_none=False)
            loss = F.mse_loss(model(x), y)
            if not _finite(loss):
                last = ckpt.latest()
                raise TrainingDiverged(f"loss became {loss.item()} at step {step}; stopped. Last good "
                                       f"checkpoint: {last if last else 'none (diverged before the first)'}")
            loss.backward()
            cost.add_grad_(lam, bias=step >= bias_start)
            opt.step()
            if swap_on and (step + 1) % cfg.swap_interval == 0:
                swaps += relocate(graph, reloc_cost, cfg.top_k, cfg.relocate_method, optimizer=opt)
            if step % cfg.log_interval == 0 or step == cfg.steps - 1:
                with torch.no_grad():
                    tl = F.mse_loss(model(xt), yt).item()
                    cv = cost.value(bias=step >= bias_start).item()
                log.write({"step": step, "train_loss": loss.item(), "test_loss": tl, "cost": cv, "lam": lam,
                           "swaps": swaps})
                bar.set_postfix(train=f"{loss.item():.2e}", test=f"{tl:.2e}", cost=f"{cv:.3g}")
            if (step + 1) % cfg.checkpoint_interval == 0 and step + 1 < cfg.steps:
                ckpt.save(step + 1, model, opt, {"seconds": elapsed_before + time.time() - t0})
    finally:
        log.close()
        bar.close()
    seconds = elapsed_before + time.time() - t0
    ckpt.save(cfg.steps, model, opt, {"seconds": seconds})
    return finish_bimt(cfg, out, model, graph, data, seconds)


@torch.no_grad()
def finish_bimt(cfg: BIMTConfig, out: Path, model, graph, data: D.Split, seconds: float) -> dict:
    """Evaluate, prune at ``cfg.threshold``, analyse and write every artefact of a BIMT run."""
    train_loss = F.mse_loss(model(data.x_train), data.y_train).item()
    test_loss = F.mse_loss(model(data.x_test), data.y_test).item()
    save_model(model, out / "model.safetensors")
    snap = M.threshold(model, cfg.threshold)
    pruned_test = F.mse_loss(model(data.x_test), data.y_test).item()
    q, _ = M.modularity(graph, 0.0)
    mods = M.modules(graph, 0.0)
    metrics = {
        "recipe": cfg.recipe, "variant": cfg.variant, "seed": cfg.seed, "steps": cfg.steps,
        "seconds": round(seconds, 2), "train_loss": train_loss, "test_loss": test_loss,
        "test_loss_pruned": pruned_test, "params_total": snap.total, "params_kept": snap.kept,
        "threshold": cfg.threshold, "wiring_length": M.wiring_length(graph, 0.0, gap=cfg.l0),
        "modularity_q": q, "dependencies": M.dependencies(graph, 0.0), "modules": mods,
        "module_extents": M.module_extents(graph, 0.0),
    }
    draw_network(graph, out / "network.png", data.input_names, data.output_names, gap=cfg.l0,
                 title=f"{cfg.recipe} [{cfg.variant}] pruned at {cfg.threshold:g}: test MSE {pruned_test:.2e}")
    snap.revert()
    plot_curves(out / "log.csv", out / "curves.png", title=f"{cfg.recipe} [{cfg.variant}], seed {cfg.seed}")
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=1))
    return metrics

