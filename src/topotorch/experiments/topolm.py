"""Topographic language models (TopoLM, seed 004): a GPT whose sheets carry 2D positions, trained with the
spatial correlation loss; analysis of the resulting maps; multi-process data-parallel training.

``topotorch run topolm`` trains a topographic arm and a control arm (α = 0) with the same seed on the
generated grammar corpus, then analyses both. Under ``torchrun --nproc_per_node=N`` every rank trains on its
own micro-batches and computes its own spatial loss (as TopoLM), gradients are averaged by DDP (gloo on CPU,
NCCL on GPU), and rank 0 writes the run directory.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.distributed as dist

from .. import data as D
from .. import layout as L
from .. import metrics as M
from ..gpt import GPT, GPTConfig
from ..probe import language as Lg
from ..probe.plots import plot_maps as draw
from ..probe.load import register_run_loader
from ..probe.run import Subject
from ..probe.sheets import Sheet
from ..hooks import record
from ..io import check_same_config, save_model, write_json
from ..plot import plot_arm_curves
from ..topography import attach
from ..train import Callback, distributed, fit, wrap_ddp
from . import kind
from ..registry import Claim, claims, data_claims, front

__all__ = ["TopoLMConfig", "train_lm", "analyse_lm", "run_topolm"]


@dataclass
class TopoLMConfig:
    recipe: str = "topolm"
    seed: int = 0
    data: str = "grammar"            # grammar | fineweb | stream | a text file or folder (byte-level)
    # data=stream: documents streamed from a Hugging Face dataset, tokenized on the fly (StreamTokens): the corpus is
    # never held; the position is checkpointed, so a resumed run reads the same tokens
    stream: str = "HuggingFaceFW/fineweb-edu"
    stream_config: str = "sample-10BT"
    stream_files: list[str] | None = None   # local files instead of the hub (stream: json, text, parquet…)
    tokenizer: str = "gpt2"          # gpt2 (BPE, vocabulary 50,304) | bytes | a saved tokenizer folder
    val_docs: int = 200              # the stream's first documents, held out for validation
    n_sentences: int = 20000
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 100                # a perfect square: every sheet is a √n × √n grid of cells
    block_size: int = 32
    dropout: float = 0.0
    batch_size: int = 32
    grad_accum: int = 1
    accum_over_ranks: bool = False   # grad_accum is the global count, divided among the ranks (nanoGPT, TopoLM)
    steps: int | None = 1500
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup: int = 100
    lr_decay_steps: int | None = None  # cosine decay length (default: steps); TopoLM's config decays over 600,000
    weight_decay: float = 0.1
    beta2: float = 0.99
    grad_clip: float = 1.0
    alpha: float = 2.0               # weight of each sheet's spatial loss in the topographic arm
    mode: str = "exact"              # exact | sampled
    kind: str = "relative"           # relative | absolute
    neighbourhoods: int = 5
    radius: float = 2.0              # sup-norm radius of sampled windows, in cells
    sheets: str = "outputs"          # outputs (attention/MLP before the residual add) | residual
    positions: str = "random"        # random (frozen permutation) | swap (TDANN pre-optimisation)
    preopt_radius: float | None = None  # sup-norm radius of the pre-optimisation's windows (default: max(radius, 2))
    preopt_windows: int = 50
    preopt_swaps: int = 50
    arms: list[str] = field(default_factory=lambda: ["topo", "control"])
    eval_interval: int = 250
    eval_batches: int = 20
    checkpoint_interval: int = 500
    device: str = "auto"             # auto | cpu | cuda
    dtype: str = "float32"           # float32 | bfloat16 (autocast)
    compile: bool = False
    threads: int = 2
    tensorboard: bool = False        # also log to <arm>/tb (pip install 'topotorch[tensorboard]')
    quick: bool = False              # a < 1 minute variant for tests
    blimp: str = ""                  # BLiMP minimal pairs (a folder of .jsonl, or nyu-mll/blimp): byte-level text only
    stimuli: str = ""                # TopoLM's stimulus tables: a folder holding them, or "download" (cached)
    blimp_phenomena: list[str] | None = None

    def validate(self):
        if math.isqrt(self.n_embd) ** 2 != self.n_embd:
            raise ValueError(f"n_embd must be a perfect square (sheets are square grids), got {self.n_embd}")
        for k in ("mode", "kind", "sheets", "positions", "device", "dtype"):
            allowed = {"mode": ("exact", "sampled"), "kind": ("relative", "absolute"),
                       "sheets": ("outputs", "residual"), "positions": ("random", "swap"),
                       "device": ("auto", "cpu", "cuda"), "dtype": ("float32", "bfloat16")}[k]
            if getattr(self, k) not in allowed:
                raise ValueError(f"{k} must be one of {list(allowed)}, got {getattr(self, k)!r}")
        bad = [a for a in self.arms if a not in ("topo", "control")]
        if bad or not self.arms:
            raise ValueError(f"arms must be a non-empty subset of ['topo', 'control'], got {self.arms}")
        if self.steps is None:
            self.steps = 1500
        for k in ("steps", "batch_size", "grad_accum", "block_size", "eval_interval", "eval_batches",
                  "checkpoint_interval", "threads"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k} must be ≥ 1")

    def resolved(self) -> "TopoLMConfig":
        """The quick variant's overrides applied."""
        if not self.quick:
            return self
        return dataclasses.replace(self, steps=min(self.steps, 150), n_sentences=min(self.n_sentences, 4000),
                                   eval_interval=50, eval_batches=4, warmup=20, preopt_windows=10,
                                   preopt_swaps=20, quick=False)


# ---- data and model --------------------------------------------------------------------------------

def load_tokens(cfg: TopoLMConfig) -> D.TokenData:
    if cfg.data == "stream":
        world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
        return D.stream_tokens(cfg.stream, cfg.stream_config or None, cfg.stream_files, cfg.tokenizer, cfg.val_docs,
                               rank, world)
    if cfg.data == "grammar":
        return D.grammar_corpus(cfg.n_sentences, cfg.seed)
    if cfg.data == "fineweb":
        return D.hf_text()
    return D.text_corpus(cfg.data)


def sheet_layouts(model: GPT, cfg: TopoLMConfig) -> dict[str, L.Layout]:
    """Each sheet (by module path) on a √n × √n grid of cells, units randomly permuted (TopoLM's default)."""
    side = math.isqrt(cfg.n_embd)
    out = {}
    for i, (name, _) in enumerate(model.sheets(cfg.sheets)):
        g = torch.Generator().manual_seed(cfg.seed * 1000 + i)
        out[name] = L.grid(side, side, spacing=1.0).random_permutation(g)
    return out


def lr_at(step: int, cfg: TopoLMConfig) -> float:
    """Linear warmup then cosine decay from ``lr`` to ``min_lr`` (nanoGPT)."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    decay = getattr(cfg, "lr_decay_steps", None) or cfg.steps  # other recipes' configs share this schedule
    frac = min(1.0, (step - cfg.warmup) / max(1, decay - cfg.warmup))
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * frac)) * (cfg.lr - cfg.min_lr)


@torch.no_grad()
def record_sheets(model: GPT, modules, x: torch.Tensor, batch: int = 64) -> list[torch.Tensor]:
    """Outputs of the given modules for inputs ``x (N, T)``: one ``(N, T, n)`` tensor per module."""
    was = model.training
    model.eval()
    try:
        with record(list(modules), None, device="cpu") as got:
            for i in range(0, len(x), batch):
                model(x[i:i + batch])
    finally:
        model.train(was)
    return [torch.cat(got[str(k)]).float() for k in range(len(modules))]


def _checksum(model) -> str:
    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def train_lm(cfg: TopoLMConfig, out, alpha: float, tokens: D.TokenData | None = None, resume: bool = False,
             progress: bool = True) -> dict:
    """Train one arm into ``out``; works alone or under ``torchrun`` (DDP). Returns a summary dict.

    The sheets' positions are ``topo_positions`` buffers on the attention/MLP modules (saved with the model
    and every checkpoint); the spatial loss's window generator and each rank's data generator are
    checkpointed, so a resumed arm continues exactly.
    """
    out = Path(out)
    rank, world, device = distributed(cfg.device)
    ddp = world > 1
    torch.set_num_threads(cfg.threads)
    tokens = tokens or load_tokens(cfg)
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank and in both arms
    gcfg = GPTConfig(cfg.block_size, tokens.vocab_size, cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.dropout)
    model = GPT(gcfg).to(device)
    topo = attach(model, sheet_layouts(model, cfg), alpha=alpha, mode=cfg.mode, kind=cfg.kind,
                  neighbourhoods=cfg.neighbourhoods, radius=cfg.radius, seed=cfg.seed + 7 * rank,
                  example_input=torch.zeros(1, cfg.block_size, dtype=torch.long, device=device))
    info = {}
    if cfg.positions == "swap" and alpha > 0:
        x, _ = tokens.batch("train", 64, cfg.block_size, torch.Generator().manual_seed(cfg.seed + 99))
        info = topo.optimize_positions(x.to(device), windows=cfg.preopt_windows, swaps=cfg.preopt_swaps,
                                       radius=cfg.preopt_radius or max(cfg.radius, 2.0), seed=cfg.seed)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, cfg.beta2), foreach=True)
    net = wrap_ddp(model)
    if cfg.compile:
        net = torch.compile(net)  # attach resets TorchDynamo, so the hooks are traced into the compiled code
    gen = torch.Generator().manual_seed(cfg.seed * 7919 + rank)  # each rank its own micro-batches
    spatial_on = topo.correlation is not None
    last = {}

    def loss_fn(step, micro):
        x, y = tokens.batch("train", cfg.batch_size, cfg.block_size, gen)
        _, loss = net(x.to(device), y.to(device))
        last["loss"] = loss.detach()
        return loss + topo() if spatial_on else loss

    def evaluate_step(step):
        return {"val_loss": evaluate(model, tokens, cfg, device), "lm_loss": last["loss"].item(),
                "spatial_loss": float(np.mean(list(topo.last.values()))) if spatial_on else 0.0,
                "lr": lr_at(step, cfg)}

    gens = {"data": gen, **({"windows": topo.correlation.generator} if spatial_on else {})}
    callbacks = []
    if isinstance(tokens, D.StreamTokens):  # every arm reads the stream from its start; the position is checkpointed
        tokens.load_state_dict({"docs": 0, "buffer": []})
        callbacks.append(_StreamPosition(tokens))
    accum = cfg.grad_accum
    if cfg.accum_over_ranks:
        if accum % world:
            raise ValueError(f"grad_accum {accum} (global) is not divisible by the {world} ranks")
        accum //= world
    res = fit(model, opt, loss_fn, cfg.steps, out=out, resume=resume, generators=gens, evaluate=evaluate_step,
              callbacks=callbacks,
              log_every=cfg.eval_interval, checkpoint_every=cfg.checkpoint_interval, grad_accum=accum,
              grad_clip=cfg.grad_clip, lr_at=lambda step: lr_at(step, cfg),
              autocast=torch.bfloat16 if cfg.dtype == "bfloat16" else None, ddp_model=net if ddp else None,
              progress=progress, desc=f"topolm[α={alpha:g}]", tensorboard=cfg.tensorboard)
    summary = {"val_loss": evaluate(model, tokens, cfg, device) if rank == 0 else float("nan"),
               "seconds": res["seconds"], "steps": cfg.steps, "world_size": world, "preopt": info}
    if ddp:
        sums = [None] * world
        dist.all_gather_object(sums, _checksum(model))
        summary["ddp_checksums"] = sums
        summary["ddp_identical"] = len(set(sums)) == 1
    if rank == 0:
        save_model(model, out / "model.safetensors")
        write_json(out / "train.json", summary)
        tok = getattr(tokens, "tokenizer", None)
        if tok is not None and hasattr(tok, "save_pretrained"):  # the probe reads text with it
            tok.save_pretrained(str(out.parent))
    sheets = [(n, topo.entries[k]["module"], topo.positions(n)) for k, n in enumerate(topo.names)]
    topo.remove()
    return {**summary, "model": model, "sheets": sheets, "tokens": tokens, "device": device}


class _StreamPosition(Callback):
    """Checkpoints a :class:`~topotorch.data.StreamTokens` position with the run (and restores it on resume)."""

    def __init__(self, tokens):
        self.tokens = tokens

    def state_dict(self) -> dict:
        return self.tokens.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.tokens.load_state_dict(state)


@torch.no_grad()
def evaluate(model: GPT, tokens: D.TokenData, cfg: TopoLMConfig, device) -> float:
    """Mean validation cross-entropy over ``eval_batches`` fixed batches (nats/token)."""
    g = torch.Generator().manual_seed(12345)
    was = model.training
    model.eval()
    losses = []
    for _ in range(cfg.eval_batches):
        x, y = tokens.batch("val", cfg.batch_size, cfg.block_size, g)
        losses.append(model(x.to(device), y.to(device))[1].item())
    model.train(was)
    return float(np.mean(losses))


# ---- analysis -------------------------------------------------------------------------------------

def _windows(ids: list[int], T: int) -> torch.Tensor:
    n = len(ids) // T
    return torch.tensor(ids[:n * T], dtype=torch.long).view(n, T)


def analyse_text(model: GPT, sheets, tokens: D.TokenData, cfg: TopoLMConfig, device, stimuli: str = "") -> dict:
    """What needs no word classes (any text): per sheet the correlation-vs-distance curve and corr(r, 1/(1+d))
    on validation tokens; with a stimulus folder (TopoLM's tables), the language-localizer (S−N) and noun–verb
    contrast maps with Moran's I and shuffled nulls."""
    from ..costs import inverse_distance, pair_loss
    from ..costs.correlation import correlation_matrix
    x, _ = tokens.batch("val", 32, cfg.block_size, torch.Generator().manual_seed(cfg.seed + 5))
    acts = record_sheets(model, [m for _, m, _ in sheets], x.to(device))
    res = {"sheets": {}}
    for (name, _, lay), a in zip(sheets, acts):
        flat = a.reshape(-1, a.shape[-1])[:4096]
        r = correlation_matrix(flat).double()
        res["sheets"][name] = {"corr_vs_distance": M.correlation_vs_distance(flat, lay),
                               "corr_r_d": float(1 - 2 * pair_loss(r, inverse_distance(lay).double()))}
    res["corr_r_d"] = float(np.mean([v["corr_r_d"] for v in res["sheets"].values()]))
    if stimuli:
        lays = {n: lay for n, _, lay in sheets}
        vocab = getattr(tokens, "tokenizer", None) if isinstance(tokens, D.StreamTokens) else (
            None if tokens.vocab_size == 256 else tokens.vocab)
        for key, (table, text, cond, a, b) in {"localizer": ("fedorenko", "sentence", "condition", "S", "N"),
                                               "noun_verb": ("elli", "pair", "class", "noun", "verb")}.items():
            path = D.stimulus_table(Path(stimuli) / f"{table}_stimuli.csv" if Path(stimuli).is_dir() else table)
            res[key] = Lg.table_contrast(Lg.LM(model, vocab, cfg.block_size), probe_sheets(model, lays), path, text,
                                         cond, a, b, seed=cfg.seed)
    return res


def analyse_lm(model: GPT, sheets, tokens: D.TokenData, cfg: TopoLMConfig, device) -> dict:
    """Noun–verb and sentence–shuffled contrasts per sheet: Welch t-maps (BH-FDR), Moran's I, smoothness,
    and the correlation-vs-distance curve. Needs the grammar corpus (tokens with word classes)."""
    if tokens.word_class is None or tokens.val_sentences is None:
        raise ValueError("the contrasts need the grammar corpus (--set data=grammar)")
    T = cfg.block_size
    sents = tokens.val_sentences
    x = _windows([t for s in sents for t in s], T)
    rs = np.random.RandomState(cfg.seed)
    shuffled = [[s[i] for i in rs.permutation(len(s) - 1)] + [s[-1]] for s in sents]  # words shuffled, "." kept
    xs = _windows([t for s in shuffled for t in s], T)
    mods = [m for _, m, _ in sheets]
    acts = record_sheets(model, mods, x.to(device))
    acts_s = record_sheets(model, mods, xs.to(device))
    cls = tokens.word_class[x]  # (N, T)
    res = {"sheets": {}}
    for (name, _, lay), a, b in zip(sheets, acts, acts_s):
        flat = a.reshape(-1, a.shape[-1])
        c = cls.reshape(-1)
        t_nv, p_nv = M.welch_t(flat[c == 0].numpy(), flat[c == 1].numpy())
        t_lang, p_lang = M.welch_t(a.mean(1).numpy(), b.mean(1).numpy())
        _, sig = M.fdr(p_nv)
        res["sheets"][name] = {
            "morans_i": M.morans_i(t_nv, lay), "smoothness": M.smoothness_index(t_nv, lay),
            "morans_i_language": M.morans_i(t_lang, lay), "significant_units": int(sig.sum()),
            "corr_vs_distance": M.correlation_vs_distance(flat[:: max(1, len(flat) // 4000)], lay),
            "t_map": t_nv.tolist(), "t_map_language": t_lang.tolist(),
        }
    sh = res["sheets"].values()
    res["morans_i"] = float(np.mean([s["morans_i"] for s in sh]))
    res["smoothness"] = float(np.mean([s["smoothness"] for s in sh]))
    res["morans_i_language"] = float(np.mean([s["morans_i_language"] for s in sh]))
    return res


def plot_maps(results: dict, layouts: dict, path, key: str = "t_map", title: str = "noun − verb Welch t"):
    """Every arm's t-maps on its sheets (:func:`topotorch.probe.plots.plot_maps`), each titled by its Moran's I."""
    draw({arm: {name: (s[key], layouts[arm][name], f"Moran's I {M.morans_i(s[key], layouts[arm][name]):.2f}")
                for name, s in r["sheets"].items()} for arm, r in results.items()}, path, title)


def plot_corr_distance(results: dict, path):
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for arm, style in zip(results, ("-", "--")):
        for name, s in results[arm]["sheets"].items():
            cd = s["corr_vs_distance"]
            ax.plot(cd["distance"], cd["correlation"], style, alpha=0.7, label=f"{arm} {name}")
    ax.set_xlabel("distance between units (cells)"); ax.set_ylabel("mean response correlation r")
    ax.grid(alpha=0.3); ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def blimp_accuracy(model, vocab_size: int, block_size: int, pairs: dict) -> dict:
    """Per-phenomenon BLiMP accuracy of a byte-level LM (each sentence's UTF-8 bytes after a newline); see
    :func:`topotorch.probe.language.blimp_accuracy`."""
    if vocab_size != 256:
        raise ValueError("BLiMP needs a byte-level model (vocabulary 256): train on text with --set data=FILE")
    return Lg.blimp_accuracy(Lg.LM(model, None, block_size), pairs)


def probe_sheets(model: GPT, layouts: dict) -> list:
    """The probe's view of a GPT's sheets: ``[Sheet(name, module, layout, "features")]``."""
    return [Sheet(n, model.get_submodule(n), lay, "features") for n, lay in layouts.items()]


def load_arm(run, arm: str):
    """``(config, GPT, {sheet: Layout}, vocabulary)`` of one arm of a ``topolm`` run directory: the positions
    come from the arm's ``topo_positions`` buffers; the vocabulary is the grammar's words, ``None`` for bytes."""
    from ..config import from_dict
    from ..io import read_json, read_state
    run = Path(run)
    conf = read_json(run / "config.json", "run config").get("config")
    if not isinstance(conf, dict):
        raise ValueError(f"{run / 'config.json'}: no 'config' object — not a topolm run directory")
    cfg = from_dict(TopoLMConfig, conf)
    vocab = D.grammar_corpus(cfg.n_sentences, cfg.seed).vocab if cfg.data == "grammar" else None
    sd = read_state(run / arm / "model.safetensors")
    if cfg.data == "stream" and cfg.tokenizer != "bytes":  # the tokenizer the run saved beside its arms
        from ..probe.load import hf_tokenizer
        vocab = hf_tokenizer(None, run)
    n_vocab = int(sd["wte.weight"].shape[0]) if "wte.weight" in sd else (len(vocab) if vocab else 256)
    model = GPT(GPTConfig(cfg.block_size, n_vocab, cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.dropout))
    pos, sd = L.split_positions(sd)
    positions = {k: L.Layout(v.double(), kind="grid") for k, v in pos.items()}
    model.load_state_dict(sd)
    return cfg, model, positions, vocab


def _sweep_topography(m: dict) -> tuple[str, float]:
    for key, label in (("morans_i_noun_verb_topo", "Moran's I, noun–verb stimuli"),
                       ("morans_i_topo", "Moran's I, noun–verb t-map"), ("corr_r_d_topo", "corr(r, 1/(1+d))")):
        if key in m:
            return label, m[key]
    raise KeyError("no topography figure in this topolm run")


# task figure and topography figure of a sweep over this recipe
SWEEP_FIGURES = ("validation loss (nats/token)", lambda m: m["val_loss_topo"], None, _sweep_topography)


@kind("topolm", TopoLMConfig, figures=SWEEP_FIGURES)
def run_topolm(cfg: TopoLMConfig, out, resume: bool = False, progress: bool = True) -> dict:
    """The ``topolm`` recipe: both arms trained with the same seed, analysed, compared."""
    cfg = cfg.resolved()
    out = Path(out)
    rank = int(os.environ.get("RANK", "0"))
    t0 = time.time()
    tokens = load_tokens(cfg)
    conf = dataclasses.asdict(cfg)
    if resume:
        check_same_config(out, conf)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "config.json", {"config": conf})
    results, layouts, summaries = {}, {}, {}
    pairs = D.blimp(cfg.blimp, cfg.blimp_phenomena) if cfg.blimp else None
    if pairs is not None and tokens.vocab_size != 256:
        raise ValueError("BLiMP needs a byte-level model: train on text (--set data=FILE)")
    for arm in cfg.arms:
        alpha = cfg.alpha if arm == "topo" else 0.0
        s = train_lm(cfg, out / arm, alpha, tokens, resume=resume, progress=progress)
        summaries[arm] = {k: v for k, v in s.items() if k not in ("model", "sheets", "tokens", "device")}
        if rank == 0 and tokens.word_class is not None:
            results[arm] = analyse_lm(s["model"], s["sheets"], tokens, cfg, s["device"])
            layouts[arm] = {n: lay for n, _, lay in s["sheets"]}
        if rank == 0 and tokens.word_class is None:
            summaries[arm]["text"] = analyse_text(s["model"], s["sheets"], tokens, cfg, s["device"], cfg.stimuli)
            layouts[arm] = {n: lay for n, _, lay in s["sheets"]}
        if rank == 0 and cfg.blimp:
            summaries[arm]["blimp"] = blimp_accuracy(s["model"], tokens.vocab_size, cfg.block_size, pairs)
    if dist.is_initialized():  # the barrier: rank 0 may still be analysing
        dist.barrier()
        dist.destroy_process_group()
    if rank != 0:
        return {}
    metrics = {"recipe": cfg.recipe, "seed": cfg.seed, "steps": cfg.steps, "seconds": round(time.time() - t0, 2),
               "world_size": summaries[cfg.arms[0]]["world_size"]}
    for arm in cfg.arms:
        metrics[f"val_loss_{arm}"] = summaries[arm]["val_loss"]
        if arm in results:
            metrics[f"morans_i_{arm}"] = results[arm]["morans_i"]
            metrics[f"smoothness_{arm}"] = results[arm]["smoothness"]
            metrics[f"morans_i_language_{arm}"] = results[arm]["morans_i_language"]
        if "ddp_identical" in summaries[arm]:
            metrics[f"ddp_identical_{arm}"] = summaries[arm]["ddp_identical"]
        if summaries[arm]["preopt"]:
            metrics[f"preopt_{arm}"] = summaries[arm]["preopt"]
        if "text" in summaries[arm]:
            t = summaries[arm]["text"]
            metrics[f"corr_r_d_{arm}"] = t["corr_r_d"]
            for key in ("localizer", "noun_verb"):
                if key in t:
                    metrics[f"morans_i_{key}_{arm}"] = t[key]["morans_i"]
                    metrics[f"morans_i_{key}_null_{arm}"] = t[key]["morans_i_null"]
                    metrics[f"morans_i_{key}_smoothed_{arm}"] = t[key]["morans_i_smoothed"]
                    metrics[f"morans_i_{key}_smoothed_null_{arm}"] = t[key]["morans_i_smoothed_null"]
        if "blimp" in summaries[arm]:
            metrics[f"blimp_{arm}"] = summaries[arm]["blimp"]
    if results:
        plot_maps(results, layouts, out / "maps_noun_verb.png")
        plot_maps(results, layouts, out / "maps_language.png", "t_map_language", "sentences − shuffled words Welch t")
        plot_corr_distance(results, out / "corr_distance.png")
        write_json(out / "analysis.json", results, indent=None)
    text = {arm: summaries[arm].pop("text") for arm in cfg.arms if "text" in summaries[arm]}
    if text:
        plot_corr_distance(text, out / "corr_distance.png")
        for key, title in (("localizer", "sentences − nonwords (Fedorenko localizer) Welch t"),
                           ("noun_verb", "nouns − verbs (Elli et al. pairs) Welch t")):
            if all(key in t for t in text.values()):
                plot_maps({arm: t[key] for arm, t in text.items()}, layouts, out / f"maps_{key}.png", title=title)
        write_json(out / "analysis.json", text, indent=None)
    plot_arm_curves({arm: out / arm / "log.csv" for arm in cfg.arms}, "val_loss", out / "curves.png",
                    "cross-entropy (nats/token)", train_key="train_loss")
    write_json(out / "metrics.json", metrics)
    return metrics


@register_run_loader("topolm")
def probe_run(run) -> list[Subject]:
    """``topotorch probe`` on a topolm run directory: each trained arm, the control arm last."""
    run = Path(run)
    arms = [a for a in ("topo", "control") if (run / a / "model.safetensors").is_file()]
    if not arms:
        raise FileNotFoundError(f"{run}: no arm with a model.safetensors — not a trained topolm run directory")
    subs = []
    for arm in arms:
        cfg, model, positions, vocab = load_arm(run, arm)
        subs.append(Subject(arm, model, probe_sheets(model, positions), vocab, cfg.block_size, language=True))
    return subs


# ---- what `topotorch reproduce` checks ------------------------------------------------------------

claims(
    Claim("TopoLM (seed 004)", "topolm",
          "noun–verb selectivity maps: Moran's I 0.78 (topographic) vs 0.12 (control), similar language-model loss",
          lambda m: f"Moran's I {m['morans_i_topo']:.2f} vs {m['morans_i_control']:.2f}; validation loss "
                    f"{m['val_loss_topo']:.3f} vs {m['val_loss_control']:.3f}; smoothness {m['smoothness_topo']:.2f} vs "
                    f"{m['smoothness_control']:.2f}",
          lambda m: abs(m["val_loss_topo"] - m["val_loss_control"]) <= 0.05 * m["val_loss_control"]
          and m["morans_i_topo"] >= 0.5 and m["morans_i_topo"] >= m["morans_i_control"] + 0.3,
          "maps_noun_verb.png", {}, {"quick": True},
          figures=lambda m: {"Moran's I topo": m["morans_i_topo"], "Moran's I control": m["morans_i_control"],
                             "val loss topo": m["val_loss_topo"], "val loss control": m["val_loss_control"],
                             "smoothness topo": m["smoothness_topo"], "smoothness control": m["smoothness_control"]}),
)


@data_claims
def _text_claims(folder: Path) -> list[Claim]:
    """TopoLM on the first text corpus (``*.txt``) in ``folder``, with ``stimuli/`` (TopoLM's tables) and ``blimp/``
    analysed when present."""
    texts = sorted(Path(folder).glob("*.txt"))
    if not texts:
        return []
    over = {"data": str(texts[0].resolve())}
    stim = Path(folder) / "stimuli"
    if (stim / "fedorenko_stimuli.csv").is_file() and (stim / "elli_stimuli.csv").is_file():
        over["stimuli"] = str(stim.resolve())
    if (Path(folder) / "blimp").is_dir():
        over["blimp"] = str((Path(folder) / "blimp").resolve())

    def figs(m):
        f = {"corr(r, 1/(1+d)) topo": m["corr_r_d_topo"], "corr(r, 1/(1+d)) control": m["corr_r_d_control"],
             "val loss topo": m["val_loss_topo"], "val loss control": m["val_loss_control"]}
        for key in ("localizer", "noun_verb"):
            if f"morans_i_{key}_topo" in m:
                f.update({f"Moran's I {key} topo": m[f"morans_i_{key}_topo"],
                          f"Moran's I {key} shuffled": m[f"morans_i_{key}_null_topo"],
                          f"Moran's I {key} control": m[f"morans_i_{key}_control"]})
        if "blimp_topo" in m:
            f.update({"BLiMP topo": m["blimp_topo"]["mean"], "BLiMP control": m["blimp_control"]["mean"]})
        return f
    return [Claim(
        "TopoLM on real text (seed 004)", "topolm",
        "topographic sheets at similar language-model loss (within 5 %); with TopoLM's stimuli, the localizer (S−N) "
        "and noun–verb t-maps cluster: Moran's I above its shuffled-positions null and the control by ≥ 0.2 "
        "(TopoLM: noun–verb 0.78 vs 0.12)",
        lambda m: "; ".join(f"{k} {v:.3f}" for k, v in figs(m).items()),
        lambda m: m["corr_r_d_topo"] >= m["corr_r_d_control"] + 0.3
        and abs(m["val_loss_topo"] - m["val_loss_control"]) <= 0.05 * m["val_loss_control"]
        and all(m[f"morans_i_{k}_topo"] >= max(m[f"morans_i_{k}_null_topo"], m[f"morans_i_{k}_control"]) + 0.2
                for k in ("localizer", "noun_verb") if f"morans_i_{k}_topo" in m),
        "corr_distance.png", over, {**over, "quick": True}, run_as="topolm-text", figures=figs,
        data=texts[0].name + (" + stimuli" if "stimuli" in over else "") + (" + BLiMP" if "blimp" in over else ""))]


@front
def _text_front(quick: bool, folder) -> list[tuple]:
    """TopoLM's α on a text corpus in ``folder`` (with TopoLM's noun–verb stimuli when present)."""
    texts = sorted(Path(folder).glob("*.txt")) if folder else []
    if not texts:
        return []
    fixed = {"data": str(texts[0].resolve()), "arms": ["topo"], **({"quick": True} if quick else {})}
    if (Path(folder) / "stimuli" / "elli_stimuli.csv").is_file():
        fixed["stimuli"] = str((Path(folder) / "stimuli").resolve())
    return [("topolm-text", "topolm", {"alpha": [0, 2.5] if quick else [0, 0.5, 2.5]}, fixed, texts[0].name)]
