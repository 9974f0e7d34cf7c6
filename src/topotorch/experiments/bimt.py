"""BIMT (seeds 000, 003): the symbolic-formula experiments — an MLP on lines, the wiring cost, swaps, pruning.

``topotorch run independence|feature-sharing|compositionality`` trains one network with the notebook's
schedule and writes ``metrics.json``, ``network.png``, ``curves.png``, ``model.safetensors``, ``config.json``,
``log.csv`` and ``checkpoints/``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import math

import torch
import torch.nn.functional as F

from .. import data as D
from .. import metrics as M
from ..costs import WiringCost
from ..graph import embed
from ..io import save_model, write_json
from ..models import MLP
from ..plot import draw_network, plot_curves
from ..relocate import relocate
from ..train import Callback, Relocation, WiringPenalty, fit, piecewise
from . import kind
from .common import start_run

__all__ = ["BIMTConfig", "run_bimt", "VARIANTS"]

# BIMT's ablation (seed 003's train_type 1–5): (L1 on, distance term in training, swaps on).
VARIANTS = {
    "none": (False, False, False),
    "l1": (True, False, False),
    "l1-local": (True, True, False),
    "l1-swap": (True, False, True),
    "full": (True, True, True),
}


@dataclass
class BIMTConfig:
    """One BIMT run (defaults: seed 003's independence task)."""

    recipe: str = "independence"
    task: str = "independence"        # a key of topotorch.data.SYMBOLIC
    seed: int = 0
    shape: list[int] = field(default_factory=lambda: [4, 20, 20, 2])
    activation: str = "silu"
    in_fold: int = 1
    layout: Literal["line", "grid", "bio2d"] = "line"  # bio2d: BIMT's BioMLP2D — input image grid, square hidden grids, output ring
    p: float = 2.0                    # norm of distances in 2D layouts (BioMLP2D: 1, L1)
    data_dir: str = "data/mnist"      # task mnist: IDX files (downloaded if missing and a network is there)
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
    # Prune, then fine-tune (0 steps: the seed's procedure): weights at or below `threshold` are zeroed and the
    # others tried from the smallest up, each zeroed unless the train MSE would exceed `prune_budget` × the
    # unpruned one; the survivors train `finetune_steps` more with pruned weights held at zero (λ and swaps as
    # at the end), then relocation runs until no unit moves (`final_sweep`).
    finetune_steps: int = 0
    prune_budget: float = 2.0
    finetune_lam: float = 1.0           # λ of the fine-tune as a multiple of the last scheduled λ
    final_sweep: bool = False
    procedure: Literal["configured", "seed"] = "configured"  # "seed": the notebook's procedure exactly (no
    # pruning, fine-tune or final sweep, whatever the keys above say); ablation variants always run it
    log_interval: int = 200
    checkpoint_interval: int = 2000
    threads: int = 1
    tensorboard: bool = False         # also log to out/tb (pip install 'topotorch[tensorboard]')

    def validate(self) -> None:
        if self.task not in D.SYMBOLIC and self.task not in CLASSIFICATION:
            raise ValueError(f"task must be one of {sorted(D.SYMBOLIC) + sorted(CLASSIFICATION)}, got {self.task!r}")
        d_in, n_out = CLASSIFICATION[self.task] if self.task in CLASSIFICATION else (
            D.SYMBOLIC[self.task][0], D.symbolic(self.task, 0, 1, 1).y_train.shape[1])
        if self.layout == "bio2d":
            for n in [d_in] + self.shape[1:-1]:
                if math.isqrt(n) ** 2 != n:
                    raise ValueError(f"layout bio2d puts layers on square grids: {n} units is not a square")
        if len(self.shape) < 2 or self.shape[0] != d_in or self.shape[-1] != n_out:
            raise ValueError(f"shape {self.shape} does not fit task {self.task!r}: needs {d_in} inputs and "
                             f"{n_out} outputs")
        if self.finetune_steps < 0 or self.prune_budget < 1:
            raise ValueError("finetune_steps must be ≥ 0 and prune_budget ≥ 1")
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


# classification tasks: name → (inputs, classes). two-moon trains with cross-entropy; the images with MSE on
# one-hot targets, as BIMT's MNIST notebook.
CLASSIFICATION = {"two-moon": (2, 2), "digits": (64, 10), "mnist": (784, 10)}


def layouts(cfg: BIMTConfig):
    """Per neuron layer: ``line``/``grid`` for all, or BioMLP2D's input grid, square hidden grids, output ring."""
    if cfg.layout != "bio2d":
        return cfg.layout
    from .. import layout as L
    return [L.grid(math.isqrt(n)) for n in cfg.shape[:-1]] + [L.ring(cfg.shape[-1])]


def load_task(cfg: BIMTConfig) -> D.Split:
    """The task's data: a symbolic formula (regression), two-moon or an image set (classification)."""
    if cfg.task == "two-moon":
        return D.two_moon(cfg.seed, cfg.n_train, cfg.n_test)
    if cfg.task == "digits":
        return D.digits(cfg.seed, flat=True)
    if cfg.task == "mnist":
        return D.mnist(cfg.data_dir, cfg.seed, flat=True)
    return D.symbolic(cfg.task, cfg.seed, cfg.n_train, cfg.n_test)


def _onehot_mse(out, y):
    return F.mse_loss(out, F.one_hot(y, out.shape[-1]).to(out.dtype))


def task_loss(cfg: BIMTConfig):
    """Cross-entropy for two-moon, MSE on one-hot targets for the images (BIMT's), MSE for the formulas."""
    return {"two-moon": F.cross_entropy, "digits": _onehot_mse, "mnist": _onehot_mse}.get(cfg.task, F.mse_loss)


@kind("bimt", BIMTConfig)
def run_bimt(cfg: BIMTConfig, out, resume: bool = False, progress: bool = True) -> dict:
    """Train one BIMT model and write the run directory; returns the metrics dict."""
    data = load_task(cfg)
    lossf = task_loss(cfg)
    torch.manual_seed(cfg.seed)
    model = MLP(cfg.shape, cfg.activation)
    graph = embed(model, layouts(cfg), in_fold=cfg.in_fold)
    out = start_run(cfg, out, resume, layouts=[l.layout.to_dict() for l in graph.layers])
    l1_on, local_on, swap_on = VARIANTS[cfg.variant]
    penalize = [True] * (len(graph.weights) - 1) + [not cfg.no_penalize_last]
    cost_args = dict(l0=cfg.l0, exponent=cfg.exponent, reduction=cfg.reduction, penalize=penalize, p=cfg.p)
    cost = WiringCost(graph, A=cfg.A if local_on else 0.0, **cost_args)
    # Swaps use the training cost; only the l1-swap ablation (no distance term in training) needs the
    # geometry for relocation, or its swaps would all be no-ops.
    reloc_cost = cost if local_on else WiringCost(graph, A=cfg.A, **cost_args)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    lam_at = piecewise(cfg.lam if l1_on else 0.0, cfg.lam_schedule, cfg.steps)
    callbacks = [WiringPenalty(cost, lam_at, int(cfg.bias_penalty_start * cfg.steps))]
    if swap_on:
        callbacks.append(Relocation(graph, reloc_cost, opt, cfg.swap_interval, cfg.top_k, cfg.relocate_method))
    x, y, xt, yt = data.x_train, data.y_train, data.x_test, data.y_test

    def evaluate(step):
        with torch.no_grad():
            out = model(xt)
            row = {"test_loss": lossf(out, yt).item()}
            if cfg.task in CLASSIFICATION:
                row["test_accuracy"] = float((out.argmax(1) == yt).float().mean())
            return row

    loss_fn = lambda step, micro: lossf(model(x), y)  # noqa: E731
    info = fit(model, opt, loss_fn, cfg.steps, out=out, resume=resume,
               callbacks=callbacks, evaluate=evaluate, log_every=cfg.log_interval,
               checkpoint_every=cfg.checkpoint_interval, progress=progress, desc=f"{cfg.recipe}[{cfg.variant}]",
               tensorboard=cfg.tensorboard)
    seconds, extra = info["seconds"], {}
    beyond = cfg.procedure != "seed" and cfg.variant == "full"  # ablation variants keep the seed's procedure
    if cfg.finetune_steps and beyond:
        extra = prune_for_budget(graph, model, x, y, cfg.threshold, cfg.prune_budget, lossf)
        last = cfg.steps - 1
        tail = [WiringPenalty(cost, lambda step: cfg.finetune_lam * lam_at(last), 0), Masks(model)]
        if swap_on:
            tail.append(Relocation(graph, reloc_cost, opt, cfg.swap_interval, cfg.top_k, cfg.relocate_method))
        info = fit(model, opt, loss_fn, cfg.finetune_steps, out=out / "finetune", resume=resume, callbacks=tail,
                   evaluate=evaluate, log_every=cfg.log_interval, checkpoint_every=cfg.checkpoint_interval,
                   progress=progress, desc=f"{cfg.recipe}[{cfg.variant}] fine-tune")
        seconds += info["seconds"]
    if cfg.final_sweep and swap_on and beyond:
        extra["wiring_cost_before_sweep"] = float(reloc_cost.value().detach())
        extra["wiring_cost_after_sweep"] = final_sweep(model, graph, reloc_cost)
    return finish_bimt(cfg, out, model, graph, data, seconds, extra)


@torch.no_grad()
def prune_for_budget(graph, model, x, y, start: float, budget: float, lossf=F.mse_loss) -> dict:
    """Greedy magnitude pruning to a loss budget: every weight with ``|w| <= start`` is zeroed, then the others
    are tried from the smallest up and each is zeroed unless that takes the train MSE above ``budget`` × the
    unpruned loss (a weight the function needs is skipped, the next one tried). Returns
    ``{"pruned_weights", "train_loss_before_prune", "train_loss_after_prune"}``."""
    base = lossf(model(x), y).item()
    pruned = 0
    entries = []
    for w in graph.weights:
        W = w.weight
        small = (W.abs() <= start) & (W != 0)
        pruned += int(small.sum())
        W.masked_fill_(small, 0.0)
        for idx in torch.nonzero(W).tolist():
            entries.append((abs(float(W[tuple(idx)])), W, tuple(idx)))
    limit = budget * max(base, lossf(model(x), y).item() if pruned else base)
    for _, W, idx in sorted(entries, key=lambda e: e[0]):
        old = W[idx].item()
        W[idx] = 0.0
        if lossf(model(x), y).item() > limit:
            W[idx] = old
        else:
            pruned += 1
    return {"pruned_weights": pruned, "train_loss_before_prune": base,
            "train_loss_after_prune": lossf(model(x), y).item()}


@torch.no_grad()
def final_sweep(model, graph, cost, rounds: int = 50) -> float:
    """Lower the wiring cost by relocation from several starts and keep the cheapest placement.

    Starts: the current placement, and one per ordering of the pruned network's modules (connected
    components holding an output) in which every movable layer's units are sorted by module, keeping their
    order within it. From each, whole-layer optimal assignments run until a round moves nothing. Every step
    is a function-preserving permutation; the placement with the lowest ``cost`` wins. Returns that cost.
    """
    import itertools
    comp, offs = M._components(graph, 0.0)
    out_comps = list(dict.fromkeys(int(comp[offs[-2] + u]) for u in range(graph.layers[-1].n)))
    start = {k: v.clone() for k, v in model.state_dict().items()}
    orders = [None] + [list(p) for p in itertools.permutations(out_comps)][:24] if len(out_comps) > 1 else [None]
    best, best_cost = None, float("inf")
    for order in orders:
        model.load_state_dict(start)
        if order is not None:
            rank = {c: r for r, c in enumerate(order)}
            for i, layer in enumerate(graph.layers):
                if not graph.is_movable(i) or layer.layout.fold != 1 or layer.layout.dim != 1:
                    continue
                labels = comp[offs[i]:offs[i + 1]]
                key = [(rank.get(int(c), len(order)), s) for s, c in enumerate(labels)]
                graph.permute(i, torch.tensor(sorted(range(len(key)), key=key.__getitem__)))
        for _ in range(rounds):
            if not relocate(graph, cost, 1, "assignment"):
                break
        c = float(cost.value())
        if c < best_cost - 1e-12:
            best, best_cost = {k: v.clone() for k, v in model.state_dict().items()}, c
    model.load_state_dict(best)
    return best_cost


class Masks(Callback):
    """Holds the parameter entries that are zero now at zero: gradients masked, values re-zeroed after steps."""

    def __init__(self, model):
        self.items = [(p, p.detach() != 0) for p in model.parameters() if p.is_floating_point()]

    def before_step(self, step: int) -> None:
        for p, m in self.items:
            if p.grad is not None:
                p.grad.mul_(m)

    def after_step(self, step: int) -> None:
        with torch.no_grad():
            for p, m in self.items:
                p.mul_(m)


@torch.no_grad()
def finish_bimt(cfg: BIMTConfig, out: Path, model, graph, data: D.Split, seconds: float, extra: dict | None = None) -> dict:
    """Evaluate, prune at ``cfg.threshold``, analyse and write every artefact of a BIMT run."""
    lossf = task_loss(cfg)
    train_loss = lossf(model(data.x_train), data.y_train).item()
    test_loss = lossf(model(data.x_test), data.y_test).item()
    acc = lambda: float((model(data.x_test).argmax(1) == data.y_test).float().mean())  # noqa: E731
    if cfg.task in CLASSIFICATION:
        extra = {**(extra or {}), "test_accuracy": acc()}
    save_model(model, out / "model.safetensors")
    snap = M.threshold(model, cfg.threshold)
    pruned_test = lossf(model(data.x_test), data.y_test).item()
    if cfg.task in CLASSIFICATION:
        extra["test_accuracy_pruned"] = acc()
        if cfg.layout == "bio2d":
            extra["digit_sheets"] = plot_digit_sheets(graph, out / "sheets.png", data.output_names)
    q, _ = M.modularity(graph, 0.0, "louvain", seed=cfg.seed)
    q_eig, _ = M.modularity(graph, 0.0, "eigenvector")
    mods = M.modules(graph, 0.0)
    metrics = {
        "recipe": cfg.recipe, "variant": cfg.variant, "seed": cfg.seed, "steps": cfg.steps,
        "seconds": round(seconds, 2), "train_loss": train_loss, "test_loss": test_loss,
        "test_loss_pruned": pruned_test, "params_total": snap.total, "params_kept": snap.kept,
        "threshold": cfg.threshold, "wiring_length": M.wiring_length(graph, 0.0, gap=cfg.l0),
        "modularity_q": q, "modularity_q_eigenvector": q_eig, "dependencies": M.dependencies(graph, 0.0), "modules": mods,
        "module_extents": M.module_extents(graph, 0.0), **(extra or {}),
    }
    draw_network(graph, out / "network.png", data.input_names, data.output_names, gap=cfg.l0,
                 title=f"{cfg.recipe} [{cfg.variant}] pruned at {cfg.threshold:g}: test "
                       + (f"accuracy {extra['test_accuracy_pruned']:.3f}" if cfg.task in CLASSIFICATION else f"MSE {pruned_test:.2e}"))
    snap.revert()
    plot_curves(out / "log.csv", out / "curves.png", title=f"{cfg.recipe} [{cfg.variant}], seed {cfg.seed}",
                loss_label="loss (cross-entropy)" if cfg.task == "two-moon" else "loss (MSE)")
    write_json(out / "metrics.json", metrics)
    return metrics


def plot_digit_sheets(graph, path, class_names) -> dict:
    """Each hidden sheet drawn as its 2D grid, a unit coloured by the output class its kept paths feed most
    (``|W|`` products to the outputs); units with no kept path to an output are left grey. Returns, per hidden
    layer, the number of units serving each class."""
    import matplotlib.pyplot as plt
    op = graph.output_perm()
    reach = torch.eye(graph.layers[-1].n, dtype=torch.float64)     # (units of the layer, outputs)
    hidden = {}
    for i in range(len(graph.layers) - 2, 0, -1):
        W = next(w for w in graph.weights if w.src == i).weight.detach().abs().double()
        reach = W.T @ reach
        hidden[i] = reach.clone()
    fig, axes = plt.subplots(1, len(hidden), figsize=(3.6 * len(hidden), 3.6), squeeze=False)
    counts = {}
    for ax, i in zip(axes[0], sorted(hidden)):
        r = hidden[i]
        cls = r.argmax(1)
        cls = op[cls].cpu() if op is not None else cls  # output slot → the model's own class index
        alive = r.sum(1) > 0
        c = graph.layers[i].layout.unit_coords.numpy()
        ax.scatter(c[~alive.numpy(), 0], c[~alive.numpy(), 1], c="lightgrey", s=30)
        sc = ax.scatter(c[alive.numpy(), 0], c[alive.numpy(), 1], c=cls[alive].numpy(), cmap="tab10", vmin=-0.5,
                        vmax=9.5, s=60)
        ax.set_title(f"{graph.layers[i].name}: class each unit feeds most", fontsize=9)
        ax.set_aspect("equal"); ax.set_xticks([]); ax.set_yticks([])
        counts[graph.layers[i].name] = [int(((cls == k) & alive).sum()) for k in range(len(class_names))]
    fig.colorbar(sc, ax=list(axes[0]), ticks=range(len(class_names)), label="class")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return counts
