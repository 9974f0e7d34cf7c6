"""BIMT's in-context linear regression (notebook 3.4): a small transformer reads ``(0, x_1), (y_1, 0), (0, x_2)``
and predicts ``y_2 = w·x_2`` from the pair in its context, trained with the wiring cost over every projection.

``topotorch run in-context`` trains the wiring arm and a control (no cost) from the same initial weights on the
same batches and writes ``metrics.json`` (test MSE of the in-context prediction before and after pruning at
``threshold``; which residual-stream units, heads and MLP units keep a connection; Newman's Q; wiring length),
``circuit.png`` (each block's surviving circuit, per arm), ``predictions.png`` and ``curves.png``.

As the notebook: linear read-in and read-out, no token or position embedding, one head of 32 units, GELU,
biases, no LayerNorm in the blocks (``layernorm: true`` adds pre-LN), per-layer mean costs with A = 2 and l0 = 0.5,
λ 1e-3 ×10 at ¼ and ×10 at ¾, no swaps (``swap_interval: 0``; any positive value relocates the residual stream
and MLP units).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import matplotlib.pyplot as plt
import torch
from torch import nn

from ..models import RegressionTransformer
from .. import data as D
from .. import layout as L
from .. import metrics as M
from ..costs import WiringCost
from ..gpt import GPTConfig, add_blocks
from ..graph import NeuronGraph
from ..io import save_model, write_json
from ..plot import plot_arm_curves
from ..train import Relocation, WiringPenalty, fit, piecewise
from . import kind
from ..registry import Claim, claims
from .common import flatten_arms, start_run
from .gptbimt import draw_block

__all__ = ["InContextConfig", "RegressionTransformer", "incontext_graph", "run_in_context"]


def incontext_graph(model: RegressionTransformer) -> NeuronGraph:
    """Input tokens (fixed) → residual stream (shared by the blocks) → outputs (fixed), on lines."""
    g = NeuronGraph()
    g.model = model
    i = g.add_layer("input", L.line(model.l_in.in_features), movable=False, owner=model)
    s = g.add_layer("stream", L.line(model.config.n_embd), owner=model.l_in)
    g.connect(model.l_in, i, s, name="l_in")
    add_blocks(g, s, model.blocks)
    o = g.add_layer("output", L.line(model.l_out.out_features), movable=False, owner=model.l_out)
    g.connect(model.l_out, s, o, name="l_out")
    return g


@dataclass
class InContextConfig:
    recipe: str = "in-context"
    seed: int = 0
    d: int = 1
    pairs: int = 2
    n_tasks: int = 10000
    train_fraction: float = 0.8
    n_embd: int = 32
    n_head: int = 1
    n_layer: int = 2
    layernorm: bool = False
    steps: int | None = 40000
    batch_size: int = 64
    lr: float = 1e-3
    lam: float = 1e-3
    lam_schedule: list[list[float]] = field(default_factory=lambda: [[0.25, 10.0], [0.75, 10.0]])
    A: float = 2.0
    l0: float = 0.5
    reduction: str = "mean"
    swap_interval: int = 0           # 0: no relocation (the notebook's); n > 0: every n steps
    top_k: int = 20
    threshold: float = 1e-2
    arms: list[str] = field(default_factory=lambda: ["bimt", "control"])
    eval_interval: int = 1000
    checkpoint_interval: int = 5000
    threads: int = 1
    quick: bool = False              # a < 1 minute variant for tests

    def validate(self):
        if not self.arms or any(a not in ("bimt", "control") for a in self.arms):
            raise ValueError(f"arms must be a non-empty subset of ['bimt', 'control'], got {self.arms}")
        if self.steps is None:
            self.steps = 40000
        for k in ("d", "pairs", "n_embd", "n_head", "n_layer", "steps", "batch_size", "eval_interval",
                  "checkpoint_interval", "threads", "top_k"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k} must be ≥ 1, got {getattr(self, k)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}")
        if self.swap_interval < 0 or self.lam < 0 or self.threshold < 0 or self.reduction not in ("sum", "mean"):
            raise ValueError("swap_interval, lam and threshold must be ≥ 0 and reduction 'sum' or 'mean'")

    def resolved(self) -> "InContextConfig":
        if not self.quick:
            return self
        return dataclasses.replace(self, steps=min(self.steps, 3000), eval_interval=500, quick=False)


def _mse_last(model, x, y) -> float:
    with torch.no_grad():
        return float(((model(x)[:, -1, 0] - y[:, -1, 0]) ** 2).mean())


@torch.no_grad()
def survivors(model, graph, thr: float) -> dict:
    """Units that keep at least one connection with ``|w| > thr``: residual-stream units, per block its
    heads (any q/k/v row or c_proj column of the head) and MLP hidden units."""
    conn = M.connectivity(graph, thr)
    stream = graph.layers.index(next(l for l in graph.layers if l.name == "stream"))
    alive = torch.zeros(graph.layers[stream].n, dtype=torch.bool)
    for w, C in zip(graph.weights, conn):
        if w.dst == stream:
            alive |= C.any(1)
        if w.src == stream:
            alive |= C.any(0)
    H, hd = model.config.n_head, model.config.n_embd // model.config.n_head
    heads, mlp = [], []
    for b in model.blocks:
        rows = sum((getattr(b.attn, p).weight.abs() > thr).any(1).float() for p in ("q", "k", "v"))
        cols = (b.attn.c_proj.weight.abs() > thr).any(0).float()
        heads.append([int(((rows + cols).reshape(H, hd) > 0).any(1)[h]) for h in range(H)])
        mlp.append(int(((b.mlp.c_fc.weight.abs() > thr).any(1) | (b.mlp.c_proj.weight.abs() > thr).any(0)).sum()))
    return {"stream_units_alive": int(alive.sum()), "stream_units": len(alive),
            "stream_alive_slots": torch.nonzero(alive).flatten().tolist(), "heads_alive": heads,
            "mlp_units_alive": mlp}


# task figure and topography figure of a sweep over this recipe
SWEEP_FIGURES = ("test MSE of the in-context y after pruning (wiring arm)",
                    lambda m: m["test_mse_last_pruned_bimt"], "Newman's Q (Louvain), wiring arm",
                    lambda m: m["modularity_q_bimt"])


def _build(cfg: InContextConfig):
    """A run's data and, per arm, its model, graph and wiring cost, from the random state a run always uses."""
    data = D.in_context_regression(cfg.seed, cfg.n_tasks, cfg.d, cfg.pairs, cfg.train_fraction)
    gcfg = GPTConfig(block_size=2 * cfg.pairs, vocab_size=1, n_layer=cfg.n_layer, n_head=cfg.n_head,
                     n_embd=cfg.n_embd, bias=True)
    built = {}
    for arm in cfg.arms:
        torch.manual_seed(cfg.seed)
        model = RegressionTransformer(gcfg, cfg.d + 1, cfg.d + 1, cfg.layernorm)
        for b in model.blocks:       # GELU as the notebook's tanh approximation
            b.mlp.gelu = nn.GELU(approximate="tanh")
        graph = incontext_graph(model)
        built[arm] = (model, graph, WiringCost(graph, A=cfg.A, l0=cfg.l0, reduction=cfg.reduction))
    return data, built


def _batches(cfg: InContextConfig) -> torch.Generator:
    return torch.Generator().manual_seed(cfg.seed * 7919 + 1)  # each arm the same minibatches


def _arm_result(cfg: InContextConfig, model, graph, data, out: Path, seconds: float) -> dict:
    """One trained arm's figures (before and after pruning at the threshold); its model saved in ``out``."""
    x, y, xt, yt = data.x_train, data.y_train, data.x_test, data.y_test
    save_model(model, out / "model.safetensors")
    r = {"test_mse_last": _mse_last(model, xt, yt), "train_mse_last": _mse_last(model, x, y),
         "seconds": round(seconds, 1)}
    snap = M.threshold(model, cfg.threshold)
    r.update({"test_mse_last_pruned": _mse_last(model, xt, yt), "params_kept": snap.kept,
              "params_total": snap.total, "modularity_q": M.modularity(graph, 0.0, "louvain", seed=cfg.seed)[0],
              "wiring_length": M.wiring_length(graph, 0.0, gap=cfg.l0), **survivors(model, graph, 0.0)})
    snap.revert()
    return r


def _finish(cfg: InContextConfig, out: Path, data, models: dict, arms: dict) -> dict:
    """The run's figures and ``metrics.json`` from its trained arms (``models``: arm → (model, graph))."""
    xt, yt = data.x_test, data.y_test
    # the context-free baseline: predicting y_last without its context (w is symmetric about 0: predict 0)
    baseline = float((yt[:, -1, 0] ** 2).mean())
    _draw(models, arms, cfg, out / "circuit.png")
    _predictions(models, xt, yt, out / "predictions.png")
    plot_arm_curves({a: out / a / "log.csv" for a in cfg.arms}, "test_mse_last", out / "curves.png",
                    "test MSE of the in-context y", hline=(baseline, "no context (predict 0)"), logy=True)
    metrics = {"recipe": cfg.recipe, "seed": cfg.seed, "steps": cfg.steps, "baseline_mse_no_context": baseline,
               "arms": arms}
    metrics.update(flatten_arms(arms, ("test_mse_last", "test_mse_last_pruned", "params_kept", "stream_units_alive",
                                       "modularity_q", "wiring_length")))
    write_json(out / "metrics.json", metrics)
    return metrics


def incontext_batchable(cfgs: list[InContextConfig]) -> str | None:
    """Why these configs cannot train as one batch of replicas (``None``: they can)."""
    base = dataclasses.replace(cfgs[0], seed=0)
    if any(dataclasses.replace(c, seed=0) != base for c in cfgs):
        return "the configs differ in more than the seed"
    if len({c.seed for c in cfgs}) != len(cfgs):
        return "two replicas share a seed"
    if base.layernorm:
        return "layernorm: true gives every replica LayerNorm parameters, which the stacked model does not hold"
    if base.swap_interval:
        return "swap_interval > 0 relocates each replica's stream and MLP units, which the stacked model does not do"
    return None


def run_in_context_replicas(cfgs: list[InContextConfig], outs: list, root, resume: bool = False,
                            progress: bool = True) -> list[dict]:
    """Several seeds of one in-context config — both arms of each — trained as one batched program
    (:class:`~topotorch.replicas.StackedModule`: every Linear stacked, the replicas' batches one after another
    through the attention); each seed's initial weights, data, minibatches and wiring penalty are its own, and each
    run directory is what a single run writes (each arm's ``log.csv`` split from the batch's)."""
    from ..io import atomic_write_text
    from ..plot import read_log
    from ..registry import NotBatchable
    from ..replicas import RunningLosses, StackedModule, StackedPenalty, unstack
    why = incontext_batchable(cfgs)
    if why:
        raise NotBatchable(why)
    cfgs = [c.resolved() for c in cfgs]
    cfg = cfgs[0]
    outs = [start_run(c, o, resume) for c, o in zip(cfgs, outs)]
    runs = [_build(c) for c in cfgs]
    reps = [(i, arm) for arm in cfg.arms for i in range(len(cfgs))]  # the wiring arm's replicas first
    R, B = len(reps), cfg.batch_size
    stacked = StackedModule([runs[i][1][arm][0] for i, arm in reps])
    opt = torch.optim.AdamW(stacked.parameters(), lr=cfg.lr, weight_decay=0.0, foreach=True)
    running = RunningLosses(R)
    callbacks = [running]
    n_wiring = sum(arm == "bimt" for _, arm in reps)
    if n_wiring:
        graph0 = runs[0][1]["bimt"][1]
        names = {id(m): n for n, m in runs[0][1]["bimt"][0].named_modules()}
        layers = [stacked.stacked(names[id(w.module)]) for w in graph0.weights]
        callbacks.insert(0, StackedPenalty(SimpleNamespace(weights=[x.weight for x in layers],
                                                           biases=[x.bias for x in layers]),
                                           [runs[i][1]["bimt"][2] for i, arm in reps if arm == "bimt"],
                                           piecewise(cfg.lam, cfg.lam_schedule, cfg.steps), rows=slice(0, n_wiring)))
    gens = [_batches(cfgs[i]) for i, _ in reps]
    xs, ys = [runs[i][0].x_train for i, _ in reps], [runs[i][0].y_train for i, _ in reps]
    xt, yt = torch.cat([runs[i][0].x_test for i, _ in reps]), torch.cat([runs[i][0].y_test for i, _ in reps])

    def loss_fn(step, micro):
        idx = [torch.randint(len(x), (B,), generator=g) for x, g in zip(xs, gens)]
        xb, yb = torch.cat([x[j] for x, j in zip(xs, idx)]), torch.cat([y[j] for y, j in zip(ys, idx)])
        losses = ((stacked(xb)[:, ::2, 0] - yb[:, ::2, 0]) ** 2).view(R, -1).mean(1)
        running.add(losses)
        return losses.sum()

    def evaluate(step):
        with torch.no_grad():
            err = ((stacked(xt)[:, -1, 0] - yt[:, -1, 0]) ** 2).view(R, -1).mean(1)
        return {f"test_mse_last/{r}": float(v) for r, v in enumerate(err)}
    info = fit(stacked, opt, loss_fn, cfg.steps, out=root, resume=resume, callbacks=callbacks,
               generators={f"data/{r}": g for r, g in enumerate(gens)}, evaluate=evaluate,
               log_every=cfg.eval_interval, checkpoint_every=cfg.checkpoint_interval, progress=progress,
               desc=f"in-context × {len(cfgs)} seeds × {len(cfg.arms)} arms")
    unstack(stacked)
    log = read_log(root / "log.csv")
    results = []
    for i, (c, o) in enumerate(zip(cfgs, outs)):
        data, built = runs[i]
        arms, models = {}, {}
        for arm in c.arms:
            r = reps.index((i, arm))
            cols = {"step": log["step"], "train_loss": log[f"train_loss/{r}"], "test_mse_last": log[f"test_mse_last/{r}"]}
            if arm == "bimt":  # the columns (and order) of a single run's log
                cols.update({"cost": log[f"cost/{r}"], "lam": log[f"lam/{r}"]})
            (o / arm).mkdir(parents=True, exist_ok=True)
            lines = [",".join(cols)] + [",".join(str(int(v)) if k == "step" else repr(float(v)) for k, v in
                                                 ((k, cols[k][n]) for k in cols)) for n in range(len(log["step"]))]
            atomic_write_text(o / arm / "log.csv", "\n".join(lines) + "\n")
            model, graph, _ = built[arm]
            arms[arm] = _arm_result(c, model, graph, data, o / arm, info["seconds"] / R)
            models[arm] = (model, graph)
        m = _finish(c, o, data, models, arms)
        m.update({"replicas": R, "batch_seconds": round(info["seconds"], 2)})
        write_json(o / "metrics.json", m)
        results.append(m)
    return results


run_in_context_replicas.batchable = incontext_batchable


@kind("in-context", InContextConfig, figures=SWEEP_FIGURES, replicas=run_in_context_replicas)
def run_in_context(cfg: InContextConfig, out, resume: bool = False, progress: bool = True) -> dict:
    cfg = cfg.resolved()
    out = start_run(cfg, out, resume)
    data, built = _build(cfg)
    x, y, xt, yt = data.x_train, data.y_train, data.x_test, data.y_test
    arms, models = {}, {}
    for arm in cfg.arms:
        model, graph, cost = built[arm]
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0, foreach=True)
        callbacks = []
        if arm == "bimt":
            callbacks.append(WiringPenalty(cost, piecewise(cfg.lam, cfg.lam_schedule, cfg.steps)))
            if cfg.swap_interval:
                callbacks.append(Relocation(graph, cost, opt, cfg.swap_interval, cfg.top_k, "greedy"))
        gen = _batches(cfg)

        def loss_fn(step, micro, model=model, gen=gen):
            idx = torch.randint(len(x), (cfg.batch_size,), generator=gen)
            return ((model(x[idx])[:, ::2, 0] - y[idx][:, ::2, 0]) ** 2).mean()

        res = fit(model, opt, loss_fn, cfg.steps, out=out / arm, resume=resume, generators={"data": gen},
                  callbacks=callbacks, evaluate=lambda step, model=model: {"test_mse_last": _mse_last(model, xt, yt)},
                  log_every=cfg.eval_interval, checkpoint_every=cfg.checkpoint_interval, progress=progress,
                  desc=f"in-context[{arm}]")
        arms[arm] = _arm_result(cfg, model, graph, data, out / arm, res["seconds"])
        models[arm] = (model, graph)
    return _finish(cfg, out, data, models, arms)


def _draw(models, arms, cfg, path):
    n_layer = cfg.n_layer
    fig, axes = plt.subplots(len(models), n_layer, figsize=(4.2 * n_layer, 3.6 * len(models)), squeeze=False)
    for row, (arm, (model, graph)) in zip(axes, models.items()):
        for blk, ax in enumerate(row):   # draws the weights above the threshold: the pruned circuit
            draw_block(ax, model, graph, cfg.threshold, blk,
                       f"{arm}, block {blk}: {arms[arm]['stream_units_alive']}/{cfg.n_embd} stream units alive, "
                       f"test MSE {arms[arm]['test_mse_last_pruned']:.1e}")
    fig.suptitle(f"in-context regression, pruned at |w| > {cfg.threshold:g}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _predictions(models, xt, yt, path):
    fig, ax = plt.subplots(figsize=(4, 4))
    for arm, (model, _) in models.items():
        with torch.no_grad():
            ax.scatter(yt[:, -1, 0].numpy(), model(xt)[:, -1, 0].numpy(), s=2, alpha=0.5, label=arm)
    lim = float(yt[:, -1, 0].abs().max())
    ax.plot([-lim, lim], [-lim, lim], "k--", lw=0.8)
    ax.set_xlabel("true y (last pair)"); ax.set_ylabel("predicted y"); ax.legend(); ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---- what `topotorch reproduce` checks ------------------------------------------------------------

claims(
    Claim("BIMT in-context linear regression", "in-context",
          "a 2-block transformer learns y2 = w·x2 from the pair in its context, and pruned at 1e-2 a small circuit "
          "remains (notebook 3.4). Held here: test MSE of the in-context prediction ≤ 1e-2 after pruning (1.42 "
          "without context), ≤ 5 % of weights kept, fewer residual-stream units alive than the control's",
          lambda m: f"test MSE {m['test_mse_last_pruned_bimt']:.1e} pruned (control {m['test_mse_last_pruned_control']:.1e}, "
                    f"no context {m['baseline_mse_no_context']:.2f}); {m['params_kept_bimt']} vs "
                    f"{m['params_kept_control']} weights kept; stream units alive {m['stream_units_alive_bimt']} vs "
                    f"{m['stream_units_alive_control']}; Q {m['modularity_q_bimt']:.2f} vs {m['modularity_q_control']:.2f}",
          lambda m: m["test_mse_last_pruned_bimt"] <= 1e-2 and m["params_kept_bimt"] <= 0.05 * m["arms"]["bimt"]["params_total"]
          and m["stream_units_alive_bimt"] < m["stream_units_alive_control"],
          "circuit.png", {}, {}, full_only=True,
          figures=lambda m: {f"{k} {a}": m[f"{k}_{a}"] for k in ("test_mse_last_pruned", "params_kept",
                                                                  "stream_units_alive", "modularity_q")
                             for a in ("bimt", "control")}),
)
