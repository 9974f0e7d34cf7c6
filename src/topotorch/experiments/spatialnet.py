"""Spatial Neural Networks (seed 002): learnable neuron positions, transport and proximity costs, two tasks
in one network, and the ``record / plot / split / score`` workflow on a run directory.

A run directory holds ``model.safetensors`` (the MLP and its positions) and ``config.json``; the data are
regenerated from the config (all offline datasets are deterministic). The workflow writes ``record.*``,
``positions.png``, ``specificity.png``, ``split/`` and ``scores.json`` next to them.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import hooks
from ..config import ConfigError, from_dict
from ..costs import proximity_cost, transport_cost
from ..data import DATASETS, load_dataset
from ..io import atomic_save_file, load_model, read_json, read_tensors, save_model, write_json
from ..models import MLP, SpatialNet
from ..train import Batches, fit, make_optimizer
from . import kind
from ..registry import Claim, claims, command
from .common import arm_steps, check_length, start_run

__all__ = ["SpatialConfig", "TwoTask", "two_task_data", "train_spatial", "load_run", "record",
           "plot_run", "split", "score", "task_separation", "RunError"]


class RunError(FileNotFoundError):
    """A run directory that lacks what a workflow step needs."""


@dataclass
class SpatialConfig:
    recipe: str = "spatial-two-task"
    seed: int = 0
    tasks: list[str] = field(default_factory=lambda: ["digits", "mnist1d"])
    combine: Literal["concatenate", "mix", "sequential"] = "concatenate"
    hidden: list[int] = field(default_factory=lambda: [150, 100])
    activation: str = "sigmoid"
    dim: int = 2                          # dimension of the position space
    alpha: float = 0.3                    # proximity weight
    beta: float = 10.0                    # transport weight
    phi: Literal["l1", "l2"] = "l2"
    input_layout: Literal["tasks", "none"] = "tasks"  # "tasks": each task's inputs fixed on a patch of its own
    transport_layers: list[int] | None = None   # weight layers; default: all (all but the first with input_layout none)
    proximity_layers: list[int] | None = None   # neuron layers; default: hidden and output
    optimizer: Literal["adam", "adamw", "sgd", "rmsprop"] = "adam"
    lr: float = 5e-3
    weight_decay: float = 0.0
    epochs: int = 150
    steps: int | None = None              # optimizer steps per arm; default: epochs × batches per epoch
    batch_size: int = 256
    checkpoint_interval: int = 500
    split_method: Literal["greedy", "probability"] = "greedy"
    data_dir: str = "data/mnist"
    threads: int = 1

    def validate(self):
        if len(self.tasks) < 2:
            raise ValueError(f"two (or more) tasks are needed, got {self.tasks}")
        check_length(self)
        known = set(DATASETS)
        bad = [t for t in self.tasks if t not in known]
        if bad:
            raise ValueError(f"unknown task dataset(s) {bad}; choose from {sorted(known)}")
        if not self.hidden or min(self.hidden) < 1:
            raise ValueError(f"hidden sizes must be positive, got {self.hidden}")
        if self.batch_size < 1 or self.dim < 1 or self.threads < 1 or self.checkpoint_interval < 1:
            raise ValueError("batch_size, dim, checkpoint_interval and threads must be ≥ 1")
        if self.alpha < 0 or self.beta < 0:
            raise ValueError("alpha and beta must be non-negative")


@dataclass
class TwoTask:
    """Inputs and labels of several tasks combined into one stream.

    ``y`` is ``(N, tasks)`` for concatenate/mix (every sample carries every task) and ``(N, 2)`` =
    (label, task) for sequential. ``probe[t]`` are test inputs in which only task ``t`` is present.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    probe: list[torch.Tensor]
    probe_labels: list[torch.Tensor]
    combine: str
    classes: int
    slices: list[tuple[int, int]]  # input columns of each task (concatenate), else the padded range
    repair: object = None          # epoch -> (x, y): the training tasks paired afresh (concatenate/mix)

    def epoch_data(self, epoch: int):
        """Training inputs of one epoch. Paired combinators draw new partners every epoch: with a fixed
        pairing a network memorises one task's labels through the other task's input."""
        return (self.x_train, self.y_train) if self.repair is None else self.repair(epoch)


def _standardise(tr: torch.Tensor, te: torch.Tensor):
    m, s = tr.mean(0), tr.std(0).clamp_min(1e-6)
    return (tr - m) / s, (te - m) / s


def two_task_data(tasks: list[str], combine: str, seed: int, data_dir: str = "data/mnist") -> TwoTask:
    """Load each task (flattened, standardised) and combine them: concatenate, mix (sum) or sequential."""
    splits = [load_dataset(t, seed, data_dir, flat=True) for t in tasks]
    xs = [_standardise(s.x_train.flatten(1), s.x_test.flatten(1)) for s in splits]
    classes = max(len(s.output_names) for s in splits)
    g = torch.Generator().manual_seed(seed)
    T = len(tasks)
    dims = [x[0].shape[1] for x in xs]

    def pad(x, d):
        return F.pad(x, (0, d - x.shape[1]))

    if combine == "concatenate":
        offs = np.cumsum([0] + dims)
        slices = [(int(offs[t]), int(offs[t + 1])) for t in range(T)]
        D = int(offs[-1])
        place = lambda x, t: F.pad(x, (slices[t][0], D - slices[t][1]))
    elif combine in ("mix", "sequential"):
        D = max(dims)
        slices = [(0, d) for d in dims]
        place = lambda x, t: pad(x, D)
    else:
        raise ValueError(f"unknown combine {combine!r}; choose concatenate, mix or sequential")

    def paired(which: int, gen=g):
        n = max(len(x[which]) for x in xs)
        idx = [torch.arange(n) % len(xs[0][which])] + [torch.randperm(n, generator=gen) % len(x[which]) for x in xs[1:]]
        x = sum(place(xs[t][which][idx[t]], t) for t in range(T))
        ys = [splits[t].y_train if which == 0 else splits[t].y_test for t in range(T)]
        return x, torch.stack([ys[t][idx[t]] for t in range(T)], 1)

    if combine == "sequential":
        def stream(which):
            x = torch.cat([place(xs[t][which], t) for t in range(T)])
            ys = [splits[t].y_train if which == 0 else splits[t].y_test for t in range(T)]
            y = torch.cat([torch.stack([ys[t], torch.full_like(ys[t], t)], 1) for t in range(T)])
            return x, y
        xtr, ytr = stream(0)
        xte, yte = stream(1)
    else:
        xtr, ytr = paired(0)
        xte, yte = paired(1)
    probe = [place(xs[t][1], t) for t in range(T)]
    repair = None if combine == "sequential" else (
        lambda epoch: paired(0, torch.Generator().manual_seed(seed * 100_003 + epoch + 1)))
    return TwoTask(xtr, ytr, xte, yte, probe, [s.y_test for s in splits], combine, classes, slices, repair)


def _loss(model: SpatialNet, combine: str):
    def fn(m, xb, yb):
        logits = m(xb)
        if combine == "sequential":
            z = logits.view(len(xb), model.tasks, model.classes)[torch.arange(len(xb)), yb[:, 1]]
            return F.cross_entropy(z, yb[:, 0])
        return sum(F.cross_entropy(model.task_logits(logits, t), yb[:, t]) for t in range(model.tasks))
    return fn


def _default_layers(cfg: SpatialConfig, n_layers: int):
    first = 0 if cfg.input_layout == "tasks" else 1
    tl = cfg.transport_layers if cfg.transport_layers is not None else list(range(first, n_layers - 1))
    pl = cfg.proximity_layers if cfg.proximity_layers is not None else list(range(1, n_layers))
    return tl, pl


def spatial_loss(model: SpatialNet, cfg: SpatialConfig):
    """``α·proximity + β·transport`` over the configured layers, or ``None`` when both weights are 0."""
    if cfg.alpha == 0 and cfg.beta == 0:
        return None
    tl, pl = _default_layers(cfg, len(model.positions))
    pos = list(model.positions)

    def fn():
        total = 0.0
        if cfg.alpha:
            total = total + cfg.alpha * proximity_cost(pos, pl)
        if cfg.beta:
            total = total + cfg.beta * transport_cost(pos, model.graph, cfg.phi, tl)
        return total
    return fn


def input_positions(data: TwoTask, dim: int) -> torch.Tensor:
    """Fixed input positions ``(d_in, dim)``: task t's input units evenly along y ∈ [−1, 1] at x = 4t − 2(T−1)
    (separate patches, as separate sensory areas); shared inputs (mix/sequential) sit on one line at x = 0."""
    D = data.x_train.shape[1]
    pos = torch.zeros(D, dim)
    T = len(data.slices)
    for t, (a, b) in enumerate(data.slices):
        if data.combine != "concatenate":
            a, b, x = 0, D, 0.0
        else:
            x = 4.0 * t - 2.0 * (T - 1)
        pos[a:b, 0] = x
        if dim > 1:
            pos[a:b, 1] = torch.linspace(-1, 1, b - a)
    return pos


def build_model(cfg: SpatialConfig, data: TwoTask) -> SpatialNet:
    torch.manual_seed(cfg.seed)
    T = len(cfg.tasks)
    model = SpatialNet([data.x_train.shape[1]] + list(cfg.hidden) + [T * data.classes], cfg.activation, cfg.dim, T)
    if cfg.input_layout == "tasks":
        with torch.no_grad():
            model.positions[0].copy_(input_positions(data, cfg.dim))
        model.positions[0].requires_grad_(False)  # inputs stay where they arrive
    return model


def train_spatial(cfg: SpatialConfig, out, progress: bool = True, data: TwoTask | None = None,
                  resume: bool = False) -> dict:
    """Train one arm into run directory ``out`` (resumable); returns ``{"steps", "seconds"}``."""
    out = start_run(cfg, out, resume)
    data = data or two_task_data(cfg.tasks, cfg.combine, cfg.seed, cfg.data_dir)
    model = build_model(cfg, data)
    opt = make_optimizer(model.parameters(), cfg.optimizer, cfg.lr, cfg.weight_decay)
    batches = Batches(len(data.x_train), cfg.batch_size, cfg.seed)
    steps = arm_steps(cfg, batches.per_epoch)
    task_loss, extra = _loss(model, cfg.combine), spatial_loss(model, cfg)
    epoch_cache: dict = {}

    def loss_fn(step, micro):
        e = batches.epoch(step)
        if e not in epoch_cache:  # this epoch's pairing of the tasks (a function of the epoch)
            epoch_cache.clear()
            epoch_cache[e] = data.epoch_data(e)
        x, y = epoch_cache[e]
        idx = batches(step)
        loss = task_loss(model, x[idx], y[idx])
        return loss + extra() if extra is not None else loss

    info = fit(model, opt, loss_fn, steps, out=out, resume=resume, log_every=batches.per_epoch,
               checkpoint_every=cfg.checkpoint_interval, progress=progress,
               desc=f"{cfg.recipe}[α={cfg.alpha:g},β={cfg.beta:g}]")
    save_model(model, out / "model.safetensors")
    return {"steps": steps, "seconds": info["seconds"]}


def load_run(run) -> tuple[SpatialConfig, SpatialNet, TwoTask]:
    """Config, trained model and data of a spatial-network run directory (clear errors if incomplete)."""
    run = Path(run)
    if not run.is_dir():
        raise RunError(f"{run}: no such run directory")
    arms = [a for a in ("spatial", "control") if (run / a / "model.safetensors").is_file()]
    if arms and not (run / "model.safetensors").is_file():
        raise RunError(f"{run} holds a two-arm run; pass one arm's directory: "
                       + " or ".join(str(run / a) for a in arms))
    if not (run / "config.json").is_file():
        raise RunError(f"{run}: no config.json — not a spatial-network run directory")
    conf = read_json(run / "config.json", "run config").get("config")
    if not isinstance(conf, dict):
        raise RunError(f"{run / 'config.json'}: no 'config' object — not a spatial-network run directory")
    if not (run / "model.safetensors").is_file():
        raise RunError(f"{run}: no model.safetensors — train first (topotorch run spatial-two-task)")
    try:
        cfg = from_dict(SpatialConfig, conf)
    except (ConfigError, ValueError) as e:
        raise RunError(f"{run / 'config.json'} is not a spatial-network config ({e})") from None
    data = two_task_data(cfg.tasks, cfg.combine, cfg.seed, cfg.data_dir)
    model = build_model(cfg, data)
    load_model(model, run / "model.safetensors")
    model.eval()
    return cfg, model, data


def _hidden_activations(model: SpatialNet, x: torch.Tensor) -> list[torch.Tensor]:
    """Post-activation outputs of every hidden layer, ``[(N, n_l)]``."""
    acts = [m for m in model.net if not isinstance(m, nn.Linear)]
    with torch.no_grad(), hooks.record(acts) as got:
        model(x)
    return [got[str(k)][0] for k in range(len(acts))]


def record(run, loaded=None) -> dict:
    """Per-task mean |activation| and variance of every hidden neuron; writes ``record.safetensors``.
    ``loaded`` (from :func:`load_run`) skips reading the run again; the same holds for the other steps.

    Task ``t`` is probed with its test inputs alone (the other tasks' inputs absent), so a neuron's
    variance under task ``t`` measures how much task ``t`` drives it.
    """
    run = Path(run)
    cfg, model, data = loaded or load_run(run)
    out = {}
    for t in range(len(cfg.tasks)):
        for l, a in enumerate(_hidden_activations(model, data.probe[t])):
            out.setdefault(f"layer{l}/mean_abs", []).append(a.abs().mean(0))
            out.setdefault(f"layer{l}/variance", []).append(a.var(0))
    tensors = {k: torch.stack(v).contiguous() for k, v in out.items()}
    atomic_save_file(tensors, run / "record.safetensors")
    return tensors


def _load_record(run) -> dict:
    p = Path(run) / "record.safetensors"
    return read_tensors(p)[0] if p.is_file() else record(run)


def specificity(rec: dict) -> list[torch.Tensor]:
    """Per hidden layer ``(tasks, n)``: each task's share of a neuron's activation variance."""
    out, l = [], 0
    while f"layer{l}/variance" in rec:
        v = rec[f"layer{l}/variance"]
        out.append(v / v.sum(0, keepdim=True).clamp_min(1e-12))
        l += 1
    return out


def task_separation(model: SpatialNet, rec: dict) -> float:
    """Silhouette score of hidden-neuron positions labelled by preferred task, averaged over hidden layers
    (weighted by size; layers where one task owns every neuron are skipped)."""
    from sklearn.metrics import silhouette_score
    scores, weights = [], []
    for l, s in enumerate(specificity(rec)):
        labels = s.argmax(0).numpy()
        pos = model.positions[l + 1].detach().numpy()
        if len(set(labels)) < 2 or len(labels) < 3:
            continue
        scores.append(silhouette_score(pos, labels))
        weights.append(len(labels))
    return float(np.average(scores, weights=weights)) if scores else 0.0


def plot_run(run, loaded=None) -> list[Path]:
    """``positions.png`` (neurons at their positions, coloured by task preference) and ``specificity.png``."""
    run = Path(run)
    cfg, model, _ = loaded or load_run(run)
    spec = specificity(_load_record(run))
    L = len(spec)
    fig, axes = plt.subplots(1, L, figsize=(3.4 * L, 3.3), squeeze=False)
    for l, s in enumerate(spec):
        p = model.positions[l + 1].detach().numpy()
        ax = axes[0, l]
        sc = ax.scatter(p[:, 0], p[:, 1], c=(s[0] - s[1]).numpy(), cmap="coolwarm", vmin=-1, vmax=1, s=14)
        ax.set_title(f"hidden layer {l + 1} ({len(p)} neurons)", fontsize=9)
        ax.set_xlabel("position x (a.u.)"); ax.set_ylabel("position y (a.u.)")
    fig.colorbar(sc, ax=axes[0, -1], label=f"preference: {cfg.tasks[0]} (+1) … {cfg.tasks[1]} (−1)")
    fig.suptitle(f"{run.name}: neuron positions coloured by task preference", fontsize=10)
    fig.tight_layout()
    paths = [run / "positions.png"]
    fig.savefig(paths[0], dpi=120)
    plt.close(fig)
    T = len(cfg.tasks)
    fig, axes = plt.subplots(T, L, figsize=(3.2 * L, 3.0 * T), squeeze=False)
    for t in range(T):
        for l, s in enumerate(spec):
            p = model.positions[l + 1].detach().numpy()
            ax = axes[t, l]
            sc = ax.scatter(p[:, 0], p[:, 1], c=s[t].numpy(), cmap="viridis", vmin=0, vmax=1, s=14)
            ax.set_title(f"{cfg.tasks[t]}, layer {l + 1}", fontsize=9)
            ax.set_xlabel("x (a.u.)"); ax.set_ylabel("y (a.u.)")
    fig.colorbar(sc, ax=axes, label="specificity (share of activation variance)")
    paths.append(run / "specificity.png")
    fig.savefig(paths[1], dpi=120)
    plt.close(fig)
    return paths


def split(run, method: str = "greedy", seed: int = 0, loaded=None) -> dict:
    """Assign hidden neurons to tasks by walking back from the outputs and write one model per task.

    ``greedy`` (the seed's method): output units belong to their head; a neuron of layer l goes to the task
    whose assigned neurons in layer l+1 it feeds most strongly (Σ|W|). ``probability``: the same strengths,
    the task drawn with probability proportional to them. Every task keeps at least one neuron per layer.
    Writes ``split/assignment.json`` and ``split/task{t}.safetensors`` (+ ``.json`` with the shape).
    """
    if method not in ("greedy", "probability"):
        raise ValueError(f"unknown split method {method!r}; use greedy or probability")
    run = Path(run)
    cfg, model, _ = loaded or load_run(run)
    T, C = model.tasks, model.classes
    linears = [m for m in model.net if isinstance(m, nn.Linear)]
    gen = torch.Generator().manual_seed(seed)
    # owner[l] for neuron layers 1..L-1 (hidden); the output layer is owned by heads.
    owner_next = torch.arange(T * C) // C
    owners: list[torch.Tensor] = []
    strengths: list[torch.Tensor] = []
    for k in range(len(linears) - 1, 0, -1):
        W = linears[k].weight.detach().abs()          # (n_next, n_here)
        S = torch.stack([W[owner_next == t].sum(0) for t in range(T)])  # (T, n_here)
        if method == "greedy":
            own = S.argmax(0)
        else:
            P = S / S.sum(0, keepdim=True).clamp_min(1e-12)
            own = torch.multinomial(P.T.clamp_min(1e-12), 1, generator=gen).flatten()
        for t in range(T):  # keep every task's path open
            if not (own == t).any():
                own[S[t].argmax()] = t
        owners.insert(0, own)
        strengths.insert(0, S)
        owner_next = own
    sd = run / "split"
    sd.mkdir(exist_ok=True)
    for t in range(T):
        keep = [torch.arange(linears[0].in_features)] + [torch.nonzero(o == t).flatten() for o in owners] + \
               [torch.arange(t * C, (t + 1) * C)]
        shape = [len(k) for k in keep]
        sub = MLP(shape, cfg.activation)
        with torch.no_grad():
            for lin, src, k_in, k_out in zip([m for m in sub if isinstance(m, nn.Linear)], linears, keep, keep[1:]):
                lin.weight.copy_(src.weight[k_out][:, k_in])
                lin.bias.copy_(src.bias[k_out])
        save_model(sub, sd / f"task{t}.safetensors")
        write_json(sd / f"task{t}.json", {"task": cfg.tasks[t], "shape": shape, "activation": cfg.activation})
    assignment = {"method": method, "layers": [o.tolist() for o in owners]}
    write_json(sd / "assignment.json", assignment)
    return assignment


def load_split_model(run, t: int) -> MLP:
    sd = Path(run) / "split"
    meta_p = sd / f"task{t}.json"
    if not meta_p.is_file():
        raise RunError(f"{run}: no split models — run `topotorch split {run}` first")
    meta = read_json(meta_p, "split model description")
    sub = MLP(meta["shape"], meta["activation"])
    load_model(sub, sd / f"task{t}.safetensors")
    return sub.eval()


@torch.no_grad()
def score(run, loaded=None) -> dict:
    """Per-task test accuracy of the full model and of each split model; writes ``scores.json``."""
    run = Path(run)
    loaded = loaded or load_run(run)
    cfg, model, data = loaded
    T = model.tasks
    if not (run / "split" / "task0.json").is_file():
        split(run, cfg.split_method, loaded=loaded)
    logits = model(data.x_test)
    full, parts = [], []
    for t in range(T):
        if data.combine == "sequential":
            sel = data.y_test[:, 1] == t
            x, y = data.x_test[sel], data.y_test[sel, 0]
            z = model.task_logits(logits[sel], t)
        else:
            x, y = data.x_test, data.y_test[:, t]
            z = model.task_logits(logits, t)
        full.append(float((z.argmax(1) == y).float().mean()))
        parts.append(float((load_split_model(run, t)(x).argmax(1) == y).float().mean()))
    scores = {"tasks": cfg.tasks, "accuracy": full, "split_accuracy": parts,
              "split_retention": [p / f if f else 0.0 for p, f in zip(parts, full)]}
    write_json(run / "scores.json", scores)
    return scores


# task figure and topography figure of a sweep over this recipe
SWEEP_FIGURES = ("mean task accuracy", lambda m: float(np.mean(m["accuracy"])),
                          "task separation (silhouette)", lambda m: m["task_separation"]["spatial"])


@kind("spatial-two-task", SpatialConfig, figures=SWEEP_FIGURES)
def run_two_task(cfg: SpatialConfig, out, resume: bool = False, progress: bool = True) -> dict:
    """The ``spatial-two-task`` recipe: a spatial arm and an unregularised control (α = β = 0, positions
    fixed at their random start) with the same seed, each recorded, split and scored."""
    out = start_run(cfg, out, resume)
    data = two_task_data(cfg.tasks, cfg.combine, cfg.seed, cfg.data_dir)
    res, seconds = {}, 0.0
    for arm, c in (("spatial", cfg), ("control", dataclasses.replace(cfg, alpha=0.0, beta=0.0))):
        info = train_spatial(c, out / arm, progress, data, resume=resume)
        seconds += info["seconds"]
        loaded = load_run(out / arm)  # the saved model, read back once for the whole workflow
        rec = record(out / arm, loaded)
        split(out / arm, cfg.split_method, loaded=loaded)
        sc = score(out / arm, loaded)
        plot_run(out / arm, loaded)
        res[arm] = {**sc, "task_separation": task_separation(loaded[1], rec), "steps": info["steps"]}
    metrics = {
        "recipe": cfg.recipe, "seed": cfg.seed, "steps": res["spatial"]["steps"],
        "seconds": round(seconds, 2), "tasks": cfg.tasks, "combine": cfg.combine,
        "accuracy": res["spatial"]["accuracy"], "accuracy_control": res["control"]["accuracy"],
        "split_accuracy": {arm: res[arm]["split_accuracy"] for arm in res},
        "split_retention": {arm: res[arm]["split_retention"] for arm in res},
        "task_separation": {arm: res[arm]["task_separation"] for arm in res},
    }
    write_json(out / "metrics.json", metrics)
    return metrics


# ---- what `topotorch reproduce` checks ------------------------------------------------------------

claims(
    Claim("Spatial Neural Networks (seed 002)", "spatial-two-task",
          "with transport and proximity costs, neurons split into task clusters; task split networks keep their task",
          lambda m: f"task separation {m['task_separation']['spatial']:.2f} vs {m['task_separation']['control']:.2f} (control); "
                    f"split accuracy {[round(a, 3) for a in m['split_accuracy']['spatial']]} of full "
                    f"{[round(a, 3) for a in m['accuracy']]} vs control split {[round(a, 3) for a in m['split_accuracy']['control']]}",
          lambda m: m["task_separation"]["spatial"] >= 0.3 and m["task_separation"]["spatial"] > m["task_separation"]["control"]
          and all(s >= 0.9 * f and s > c for s, f, c in zip(m["split_accuracy"]["spatial"], m["accuracy"],
                                                          m["split_accuracy"]["control"])),
          "spatial/positions.png", {}, {},
          figures=lambda m: {"task separation spatial": m["task_separation"]["spatial"],
                             "task separation control": m["task_separation"]["control"],
                             **{f"split accuracy task {t + 1} spatial": a for t, a in enumerate(m["split_accuracy"]["spatial"])},
                             **{f"split accuracy task {t + 1} control": a for t, a in enumerate(m["split_accuracy"]["control"])}}),
)


# ---- the seed's workflow as subcommands: topotorch record / plot / split / score RUN ---------------------------

def _run_arg(p):
    p.add_argument("run", help="run directory of a spatial network (e.g. runs/spatial-two-task/spatial)")


def _split_args(p):
    _run_arg(p)
    p.add_argument("--method", choices=["greedy", "probability"], default="greedy")
    p.add_argument("--seed", type=int, default=0, help="seed of the probability method")


@command("record", "per-task mean |activation| and variance of every neuron of a run", _run_arg)
def _cmd_record(args) -> int:
    rec = record(args.run)
    print(f"recorded {len(rec) // 2} hidden layers → {args.run}/record.safetensors")
    return 0


@command("plot", "neuron positions coloured by task preference; per-task specificity maps", _run_arg)
def _cmd_plot(args) -> int:
    for p in plot_run(args.run):
        print(f"wrote {p}")
    return 0


@command("split", "assign neurons to tasks and write one task-specific model per task", _split_args)
def _cmd_split(args) -> int:
    a = split(args.run, args.method, args.seed)
    sizes = [[int(sum(1 for o in layer if o == t)) for layer in a["layers"]] for t in range(2)]
    print(f"split ({args.method}): neurons per hidden layer for each task {sizes} → {args.run}/split/")
    return 0


@command("score", "per-task accuracy of the full model and of each split model", _run_arg)
def _cmd_score(args) -> int:
    import json
    print(json.dumps(score(args.run), indent=1))
    return 0
