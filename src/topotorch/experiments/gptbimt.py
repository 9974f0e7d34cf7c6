"""BIMT on a language model (seed 000's proposal): a GPT trained with the wiring cost over its projections and
relocation of residual-stream and MLP units, against a control (no cost) and an L1-only arm.

``topotorch run gpt-bimt [--set data=FILE]`` trains the three arms from the same initial weights on the same
batches, then measures for each: validation loss; the weights kept at ``threshold`` and the validation loss
after pruning there; the share of weights kept when pruning by magnitude until the validation loss rises by
``budget``; Newman's Q (Louvain) of the pruned weight graph; its total wiring length; and how local each MLP
unit's and each head's stream connections are (|w|-weighted spread of the stream positions it reads and
writes, 0.29 for connections spread uniformly over the line). It writes ``metrics.json`` (the arms side by
side), ``circuit.png`` (one block's surviving circuit per arm: stream → heads → stream → MLP → stream) and
``curves.png``.

The L1 arm's λ is scaled so that its penalty at initialisation equals the wiring arm's: both arms press on
the weights equally hard; only the wiring arm's pressure depends on distance (``lam_l1`` sets it directly, e.g. to
match the wiring arm's validation loss).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.collections import LineCollection

from ..pruning import prune_quantile
from .. import data as D
from .. import metrics as M
from ..costs import WiringCost
from ..gpt import GPT, GPTConfig, gpt_graph
from ..io import save_model, write_json
from ..plot import plot_arm_curves
from ..train import Relocation, WiringPenalty, fit, piecewise
from . import kind
from ..registry import Claim, claims, data_claims
from .common import flatten_arms, start_run
from .topolm import evaluate, load_tokens, lr_at

__all__ = ["GPTBIMTConfig", "run_gpt_bimt", "ARMS"]

ARMS = ("bimt", "l1", "control")


@dataclass
class GPTBIMTConfig:
    recipe: str = "gpt-bimt"
    seed: int = 0
    data: str = "grammar"            # grammar (offline, word-level) | fineweb | a text file or folder (byte-level)
    n_sentences: int = 20000
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64
    block_size: int = 64
    dropout: float = 0.0
    batch_size: int = 32
    steps: int | None = 2000
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup: int = 100
    beta2: float = 0.99
    grad_clip: float = 1.0
    lam: float = 3e-4                # λ of the wiring cost (sum over weights)
    lam_schedule: list[list[float]] = field(default_factory=lambda: [[0.25, 3.0]])  # BIMT-style: stronger later
    lam_l1: float | None = None      # the L1 arm's λ (None: its penalty equals the wiring arm's at initialisation)
    A: float = 1.0
    l0: float = 0.1
    swap_interval: int = 100
    top_k: int = 16
    relocate_method: str = "assignment"
    threshold: float = 1e-2
    budget: float = 0.05             # magnitude pruning until the validation loss rises by this fraction
    arms: list[str] = field(default_factory=lambda: list(ARMS))
    eval_interval: int = 250
    eval_batches: int = 20
    checkpoint_interval: int = 500
    threads: int = 2
    quick: bool = False              # a < 1 minute variant for tests

    def validate(self):
        bad = [a for a in self.arms if a not in ARMS]
        if bad or not self.arms:
            raise ValueError(f"arms must be a non-empty subset of {list(ARMS)}, got {self.arms}")
        if self.steps is None:
            self.steps = 2000
        for k in ("steps", "batch_size", "block_size", "eval_interval", "eval_batches", "checkpoint_interval",
                  "threads", "swap_interval", "top_k"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k} must be ≥ 1, got {getattr(self, k)}")
        if self.lam_l1 is not None and self.lam_l1 < 0:
            raise ValueError(f"lam_l1 must be ≥ 0, got {self.lam_l1}")
        if self.lam < 0 or self.A < 0 or self.l0 <= 0 or self.threshold < 0 or not 0 < self.budget < 1:
            raise ValueError("lam, A, threshold must be ≥ 0, l0 > 0 and budget in (0, 1)")
        if self.relocate_method not in ("greedy", "assignment"):
            raise ValueError(f"relocate_method must be 'greedy' or 'assignment', got {self.relocate_method!r}")

    def resolved(self) -> "GPTBIMTConfig":
        if not self.quick:
            return self
        return dataclasses.replace(self, steps=min(self.steps, 200), n_sentences=min(self.n_sentences, 4000),
                                   eval_interval=100, eval_batches=4, warmup=20, swap_interval=50, quick=False)



def train_arm(cfg: GPTBIMTConfig, arm: str, tokens: D.TokenData, out: Path, resume: bool, progress: bool):
    """Train one arm; returns (model, graph, cost, seconds). Same initial weights and batches in every arm."""
    torch.manual_seed(cfg.seed)
    model = GPT(GPTConfig(cfg.block_size, tokens.vocab_size, cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.dropout))
    graph = gpt_graph(model)
    cost = WiringCost(graph, A=cfg.A, l0=cfg.l0, bias=False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, cfg.beta2), weight_decay=0.0, foreach=True)
    callbacks = []
    if arm != "control":
        lam = cfg.lam
        pen = cost
        if arm == "l1":
            # same pressure at initialisation, none of it dependent on distance
            pen = WiringCost(graph, A=0.0, l0=cfg.l0, bias=False)
            with torch.no_grad():
                lam = cfg.lam * float(cost.value()) / float(pen.value()) if cfg.lam_l1 is None else cfg.lam_l1
        callbacks.append(WiringPenalty(pen, piecewise(lam, cfg.lam_schedule, cfg.steps)))
        if arm == "bimt":
            callbacks.append(Relocation(graph, cost, opt, cfg.swap_interval, cfg.top_k, cfg.relocate_method))
    gen = torch.Generator().manual_seed(cfg.seed * 7919)

    def loss_fn(step, micro):
        x, y = tokens.batch("train", cfg.batch_size, cfg.block_size, gen)
        return model(x, y)[1]

    res = fit(model, opt, loss_fn, cfg.steps, out=out, resume=resume, generators={"data": gen},
              callbacks=callbacks, evaluate=lambda step: {"val_loss": evaluate(model, tokens, cfg, "cpu")},
              log_every=cfg.eval_interval, checkpoint_every=cfg.checkpoint_interval, grad_clip=cfg.grad_clip,
              lr_at=lambda step: lr_at(step, cfg), progress=progress, desc=f"gpt-bimt[{arm}]")
    return model, graph, cost, res["seconds"]


@torch.no_grad()
def locality(graph, model, thr: float) -> dict:
    """|w|-weighted spread (std) of the stream positions each MLP unit and each head connects to, over the kept
    weights; mean over units/heads. Uniform connections over [0, 1] give ≈ 0.29."""
    x = graph.layers[0].layout.coords[:, 0].double()   # stream slots

    keep = lambda a: a.double() * (a > thr)  # noqa: E731

    def spread(W):        # (units, stream) kept |w| → spread per unit (none kept: nan)
        tot = W.sum(1)
        mu = (W * x).sum(1) / tot
        var = (W * (x[None] - mu[:, None]) ** 2).sum(1) / tot
        return torch.where(tot > 0, var.clamp_min(0).sqrt(), torch.nan)
    mlp, heads = [], []
    H = model.config.n_head
    for b in model.blocks:
        mlp.append(spread(keep(b.mlp.c_fc.weight.abs()) + keep(b.mlp.c_proj.weight.abs().T)))
        # a head's stream connections: its rows of q, k, v and its columns of c_proj, pooled per head
        per_head = [a.reshape(H, -1, len(x)) for a in (b.attn.q.weight.abs(), b.attn.k.weight.abs(),
                                                        b.attn.v.weight.abs(), b.attn.c_proj.weight.abs().T)]
        kept = [keep(a).sum(1) for a in per_head]
        heads.append(spread(sum(kept)))
    mlp, heads = torch.cat(mlp), torch.cat(heads)
    alive = ~torch.isnan(mlp)
    return {"mlp_unit_spread": float(mlp[alive].mean()) if alive.any() else float("nan"),
            "mlp_units_alive": int(alive.sum()), "mlp_units": len(mlp),
            "head_spread": float(heads[~torch.isnan(heads)].mean()) if (~torch.isnan(heads)).any() else float("nan"),
            "head_spread_each": [round(float(v), 4) for v in heads]}


@torch.no_grad()
def analyse_arm(model, graph, cost, tokens, cfg) -> dict:
    val = evaluate(model, tokens, cfg, "cpu")
    res = {"val_loss": val, "wiring_cost": float(cost.value())}
    res.update(prune_quantile(graph, lambda: evaluate(model, tokens, cfg, "cpu"), cfg.budget))
    saved = [w.weight.clone() for w in graph.weights]
    kept = total = 0
    for w in graph.weights:
        m = w.weight.abs() > cfg.threshold
        kept, total = kept + int(m.sum()), total + m.numel()
        w.weight.mul_(m)
    res.update({"weights_kept": kept, "weights_total": total, "kept_fraction": kept / total,
                "val_loss_pruned": evaluate(model, tokens, cfg, "cpu"),
                "modularity_q": M.modularity(graph, 0.0, "louvain", seed=cfg.seed)[0],
                "wiring_length": M.wiring_length(graph, 0.0, gap=cfg.l0), **locality(graph, model, 0.0)})
    for w, S in zip(graph.weights, saved):
        w.weight.copy_(S)
    return res


def draw_block(ax, model, graph, thr: float, block: int = 0, title: str = "", max_edges: int = 1500):
    """One block's surviving circuit at the positions the wiring cost uses, bottom to top: stream → q, k, v
    units (three rows close together, coloured by head) → stream → MLP hidden units → stream; line width ∝
    |w| / the block's largest kept weight; at most ``max_edges`` (the strongest) drawn."""
    b = model.blocks[block]
    n = model.config.n_embd
    hd = n // model.config.n_head
    pos = {l.name: l.layout.coords[:, 0].numpy() for l in graph.layers}
    xs, xh = pos["stream"], pos[f"block{block}.hidden"]
    yq = {"q": 0.8, "k": 1.0, "v": 1.2}
    segs, ws = [], []

    def add(W, x_src, y_src, x_dst, y_dst):
        W = W.detach().abs().numpy()
        d, s = np.nonzero(W > thr)
        segs.append(np.stack([np.stack([x_dst[d], np.full(len(d), y_dst)], 1),
                              np.stack([x_src[s], np.full(len(s), y_src)], 1)], 1))
        ws.append(W[d, s])
    for part in ("q", "k", "v"):
        add(getattr(b.attn, part).weight, xs, 0, pos[f"block{block}.{part}"], yq[part])
    add(b.attn.c_proj.weight, pos[f"block{block}.v"], yq["v"], xs, 2)
    add(b.mlp.c_fc.weight, xs, 2, xh, 3)
    add(b.mlp.c_proj.weight, xh, 3, xs, 4)
    S, Wv = np.concatenate(segs), np.concatenate(ws)
    total = len(Wv)
    if total > max_edges:
        keep = np.argsort(Wv)[-max_edges:]
        S, Wv = S[keep], Wv[keep]
    if len(Wv):
        ax.add_collection(LineCollection(S, linewidths=1.2 * Wv / Wv.max(), colors="tab:blue", alpha=0.7))
    for y in (0, 2, 4):
        ax.scatter(xs, np.full(len(xs), y), s=6, c="black", zorder=3)
    for part, y in yq.items():
        ax.scatter(pos[f"block{block}.{part}"], np.full(n, y), s=5, c=np.arange(n) // hd, cmap="tab10", vmin=0,
                   vmax=9, zorder=3)
    ax.scatter(xh, np.full(len(xh), 3), s=3, c="gray", zorder=3)
    ax.set_yticks([0, 0.8, 1.0, 1.2, 2, 3, 4], ["stream", "q", "k", "v (colour: head)", "stream", "MLP", "stream"],
                  fontsize=7)
    ax.set_xticks([])
    ax.set_xlim(-0.02, 1.02); ax.set_ylim(-0.3, 4.3)
    ax.set_title(f"{title}\n{min(total, max_edges)} of {total} kept connections drawn (the strongest)", fontsize=8)


# task figure and topography figure of a sweep over this recipe
SWEEP_FIGURES = ("validation loss, wiring arm (nats/token)", lambda m: m["val_loss_bimt"],
                  "Newman's Q (Louvain), wiring arm", lambda m: m["modularity_q_bimt"])


@kind("gpt-bimt", GPTBIMTConfig, figures=SWEEP_FIGURES)
def run_gpt_bimt(cfg: GPTBIMTConfig, out, resume: bool = False, progress: bool = True) -> dict:
    cfg = cfg.resolved()
    out = start_run(cfg, out, resume)
    tokens = load_tokens(cfg)
    arms = {}
    fig, axes = plt.subplots(1, len(cfg.arms), figsize=(4.2 * len(cfg.arms), 3.6), squeeze=False)
    for ax, arm in zip(axes[0], cfg.arms):
        model, graph, cost, sec = train_arm(cfg, arm, tokens, out / arm, resume, progress)
        save_model(model, out / arm / "model.safetensors")
        arms[arm] = analyse_arm(model, graph, cost, tokens, cfg)
        arms[arm]["seconds"] = round(sec, 1)
        draw_block(ax, model, graph, cfg.threshold, 0,
                   f"{arm}: val loss {arms[arm]['val_loss']:.3f}, Q {arms[arm]['modularity_q']:.2f}")
    fig.suptitle(f"block 0 after pruning at |w| > {cfg.threshold:g} ({cfg.data if cfg.data == 'grammar' else Path(cfg.data).name})",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "circuit.png", dpi=130)
    plt.close(fig)
    plot_arm_curves({a: out / a / "log.csv" for a in cfg.arms}, "val_loss", out / "curves.png",
                    "validation loss (nats/token)")
    metrics = {"recipe": cfg.recipe, "seed": cfg.seed, "steps": cfg.steps, "data": cfg.data, "arms": arms}
    metrics.update(flatten_arms(arms, ("val_loss", "kept_fraction", "kept_at_budget", "modularity_q", "wiring_length",
                                       "mlp_unit_spread", "head_spread", "val_loss_pruned")))
    if "bimt" in arms and "control" in arms:
        b, c = arms["bimt"], arms["control"]
        metrics["verdict"] = (
            f"wiring arm vs control: validation loss {b['val_loss']:.3f} vs {c['val_loss']:.3f} "
            f"({100 * (b['val_loss'] / c['val_loss'] - 1):+.1f} %); weights kept at +{100 * cfg.budget:g} % loss "
            f"{100 * b['kept_at_budget']:.1f} % vs {100 * c['kept_at_budget']:.1f} %; Q {b['modularity_q']:.2f} vs "
            f"{c['modularity_q']:.2f}; head spread {b['head_spread']:.3f} vs {c['head_spread']:.3f}; MLP unit spread "
            f"{b['mlp_unit_spread']:.3f} vs {c['mlp_unit_spread']:.3f}")
    write_json(out / "metrics.json", metrics)
    return metrics


# ---- what `topotorch reproduce` checks ------------------------------------------------------------

CLAIM = Claim("BIMT on a language model (seed 000's proposal)", "gpt-bimt",
          "the seed's question: with the wiring cost a GPT's circuits become simpler than without it (control) and "
          "than with L1 alone. Held here: validation loss within 5 % of the control's, fewer weights needed at +5 % "
          "loss and higher Newman Q than the control, more local MLP units and heads than the L1 arm",
          lambda m: m["verdict"] + f"; L1 arm: val loss {m['val_loss_l1']:.3f}, MLP unit spread {m['mlp_unit_spread_l1']:.3f}",
          lambda m: m["val_loss_bimt"] <= 1.05 * m["val_loss_control"]
          and m["kept_at_budget_bimt"] < m["kept_at_budget_control"] and m["modularity_q_bimt"] > m["modularity_q_control"]
          and m["mlp_unit_spread_bimt"] < m["mlp_unit_spread_l1"] and m["head_spread_bimt"] < m["head_spread_l1"],
          "circuit.png", {}, {}, full_only=True,
          figures=lambda m: {f"{k} {a}": m[f"{k}_{a}"] for k in ("val_loss", "kept_at_budget", "modularity_q",
                                                                  "mlp_unit_spread", "head_spread")
                             for a in ("bimt", "l1", "control")})
claims(CLAIM)


@data_claims
def _text_claims(folder: Path) -> list[Claim]:
    """BIMT on a GPT trained on the first text corpus (``*.txt``) in ``folder``."""
    texts = sorted(Path(folder).glob("*.txt"))
    if not texts:
        return []
    over = {"data": str(texts[0].resolve()), "lam": 3e-5}
    return [Claim("BIMT on a language model, real text (seed 000's proposal)", "gpt-bimt",
                  "byte-level real text, λ = 3e-5 (λ = 3e-4, the grammar default, costs 14 % validation loss on text): "
                  + CLAIM.published, CLAIM.measured, CLAIM.holds, "circuit.png", over, over, run_as="gpt-bimt-text",
                  figures=CLAIM.figures, data=texts[0].name, full_only=True)]
