"""Language probes for any causal LM: TopoLM's stimulus contrasts and BLiMP minimal pairs.

A model is any causal LM — our :class:`~topotorch.gpt.GPT`, a HuggingFace ``AutoModelForCausalLM`` — wrapped
with its tokenizer in an :class:`LM`: ``None`` for UTF-8 bytes (our byte-level GPT), a word list (our grammar
corpus), a HuggingFace tokenizer, or any callable text → ids.
"""
from __future__ import annotations

import csv
import inspect
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..hooks import first_tensor, responses
from .sheets import Sheet
from .stats import fdr, welch_t
from .maps import map_test, summarise

__all__ = ["LM", "sequence_logprob", "blimp_accuracy", "stimulus_responses", "contrast", "read_table",
           "table_contrast"]


class LM:
    """A causal LM with its tokenizer.

    Args:
        model: ``model(ids)`` (or ``model(input_ids=…, attention_mask=…)`` for HuggingFace) gives logits
            ``(B, T, vocab)``, a tuple starting with them, or an output with ``.logits``.
        tokenizer: ``None`` (UTF-8 bytes), a word list, a HuggingFace tokenizer, or a callable text → ids.
        block_size: the context window; default the model's (``config.block_size``, ``n_positions`` or
            ``max_position_embeddings``).
        bos: the token(s) read before a sentence when scoring it (its first token needs a context). Default: a
            newline for bytes, the tokenizer's BOS (else EOS, GPT-2's convention) for a HuggingFace tokenizer.
    """

    def __init__(self, model: nn.Module, tokenizer=None, block_size: int | None = None, bos: Sequence[int] | None = None):
        self.model, self.tokenizer = model, tokenizer
        cfg = getattr(model, "config", None)
        self.block_size = int(block_size or next((getattr(cfg, k) for k in ("block_size", "n_positions",
                                                                            "max_position_embeddings")
                                                  if getattr(cfg, k, None)), 0))
        if self.block_size < 2:
            raise ValueError("cannot tell the model's context window: pass block_size")
        self.prefix: list[int] = []  # tokens the tokenizer itself puts before every text (a BOS)
        if tokenizer is None:
            default = [10]
        elif isinstance(tokenizer, (list, tuple)):
            self._stoi = {w: i for i, w in enumerate(tokenizer)}
            default = None
        elif hasattr(tokenizer, "bos_token_id") and callable(tokenizer):
            b, e = tokenizer.bos_token_id, getattr(tokenizer, "eos_token_id", None)
            with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
            if b is not None and with_special[:1] == [b]:
                self.prefix = [b]
            default = [b] if b is not None else ([e] if e is not None else None)
        elif callable(tokenizer):
            default = None
        else:
            raise TypeError(f"tokenizer must be None (bytes), a word list, a HuggingFace tokenizer or a callable text "
                            f"→ ids, got {type(tokenizer).__name__}")
        self.bos = list(bos) if bos is not None else default
        try:
            self._kw = "attention_mask" in inspect.signature(model.forward).parameters
        except (TypeError, ValueError):
            self._kw = False

    def encode(self, text: str) -> list[int]:
        """The text's token ids, without any prefix; raises when the tokenizer gives nothing."""
        t = self.tokenizer
        if t is None:
            ids = list(text.encode("utf-8"))
        elif isinstance(t, (list, tuple)):
            unknown = [w for w in text.split() if w not in self._stoi]
            if unknown:
                raise ValueError(f"the model's word vocabulary lacks {unknown[:5]}: use stimuli made of its words or "
                                 "a model with a subword/byte tokenizer")
            ids = [self._stoi[w] for w in text.split()]
        elif hasattr(t, "bos_token_id"):
            ids = list(t(text, add_special_tokens=False)["input_ids"])
        else:
            ids = [int(i) for i in t(text)]
        if not ids:
            raise ValueError(f"the tokenizer gives no tokens for the stimulus {text!r}")
        return ids

    def logits(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, T, vocab)`` of right-padded ``ids`` (``mask`` 1 on real tokens)."""
        dev = next(self.model.parameters()).device
        out = self.model(input_ids=ids.to(dev), attention_mask=mask.to(dev)) if self._kw else self.model(ids.to(dev))
        return out.logits if hasattr(out, "logits") else first_tensor(out)

    def batches(self, seqs: list[list[int]], batch: int):
        """Right-padded ``(ids, mask)`` batches (causal attention: padding never reaches a real token)."""
        for k in range(0, len(seqs), batch):
            chunk = seqs[k:k + batch]
            T = max(map(len, chunk))
            ids = torch.zeros(len(chunk), T, dtype=torch.long)
            mask = torch.zeros(len(chunk), T, dtype=torch.long)
            for r, s in enumerate(chunk):
                ids[r, :len(s)], mask[r, :len(s)] = torch.tensor(s), 1
            yield ids, mask


@torch.no_grad()
def sequence_logprob(lm: LM, sequences, context: Sequence[int] | None = None, batch: int = 64) -> torch.Tensor:
    """Total log-probability (nats) of each token sequence, every token given ``context`` (default ``lm.bos``)
    and the sequence's earlier tokens; sequences longer than the window are scored in windows of
    ``block_size`` that overlap by half. Returns ``(len(sequences),)`` float64. Restores the model's mode."""
    context = lm.bos if context is None else list(context)
    if not context:
        raise ValueError("scoring needs at least one context token before each sentence (the first token has nothing "
                         "to be predicted from): pass bos=[id] to LM")
    bs = lm.block_size
    full = [list(context) + [int(t) for t in s] for s in sequences]
    first = len(context)
    jobs = []  # (sequence, window start, first scored position, end): each scored position exactly once
    for i, s in enumerate(full):
        d = first
        while d < len(s):
            e = min(len(s), d + (bs if d == first else bs // 2))
            s0 = max(0, e - 1 - bs)
            jobs.append((i, s0, d, e))
            d = e
    out = torch.zeros(len(sequences), dtype=torch.float64)
    model = lm.model
    was = model.training
    model.eval()
    try:
        for k in range(0, len(jobs), batch):
            chunk = jobs[k:k + batch]
            ids, mask = next(lm.batches([full[i][s0:e - 1] for i, s0, _, e in chunk], len(chunk)))
            logp = torch.log_softmax(lm.logits(ids, mask).double(), -1).cpu()
            for r, (i, s0, d, e) in enumerate(chunk):
                pos = torch.arange(d, e)  # token p is predicted from window position p - 1 - s0
                tgt = torch.tensor([full[i][p] for p in pos.tolist()])
                out[i] += logp[r, pos - 1 - s0, tgt].sum()
    finally:
        model.train(was)
    return out


def blimp_accuracy(lm: LM, pairs: dict[str, list[tuple[str, str]]], batch: int = 64) -> dict:
    """Per-phenomenon BLiMP accuracy: a pair counts when the good sentence's summed token log-probability
    (given ``lm.bos``) is higher than the bad one's. Adds ``"mean"`` over phenomena."""
    if not pairs:
        raise ValueError("no BLiMP pairs given")
    acc = {}
    for ph, ps in pairs.items():
        good = sequence_logprob(lm, [lm.encode(g) for g, _ in ps], batch=batch)
        bad = sequence_logprob(lm, [lm.encode(b) for _, b in ps], batch=batch)
        acc[ph] = float((good > bad).double().mean())
    acc["mean"] = float(np.mean([acc[ph] for ph in pairs]))
    return acc


def stimulus_responses(lm: LM, sheets: list[Sheet], texts: list[str], batch: int = 64) -> dict[str, torch.Tensor]:
    """TopoLM's protocol: each stimulus fed alone (after the tokenizer's own BOS, if it adds one); a unit's
    response is its sheet's output averaged over the stimulus's tokens (at most ``block_size``).
    ``{sheet: (stimuli, units)}``."""
    seqs, masks = [], []
    for t in texts:
        ids = (lm.prefix + lm.encode(t))[:lm.block_size]
        seqs.append(ids)
        masks.append([0.0] * min(len(lm.prefix), len(ids)) + [1.0] * (len(ids) - len(lm.prefix)))
    weights = [torch.tensor(m) for m in masks]
    batches = list(lm.batches(seqs, batch))

    def reduce(name, out, b):
        w = torch.zeros(out.shape[0], out.shape[1], device=out.device)
        for r, m in enumerate(weights[b * batch:(b + 1) * batch]):
            w[r, :len(m)] = m.to(out.device)
        return (out * w[..., None]).sum(1) / w.sum(1, keepdim=True)

    inputs = [{"input_ids": i, "attention_mask": m} for i, m in batches] if lm._kw else [i for i, _ in batches]
    return responses(lm.model, {s.name: s.module for s in sheets}, inputs, reduce=reduce)


def contrast(resp: dict, sheets: list[Sheet], labels, a: str, b: str, fwhm: float | None = 2.0,
             permutations: int = 999, seed: int = 0, q: float = 0.05) -> dict:
    """Welch t (condition ``a`` − ``b``) per unit with BH-FDR, and per sheet the t-map's Moran's I unsmoothed and
    smoothed (``fwhm`` cells), each with its shuffled-position null and permutation p; plus the means over
    sheets (:func:`~topotorch.probe.maps.summarise`)."""
    lab = np.asarray(labels)
    if not (lab == a).any() or not (lab == b).any():
        raise ValueError(f"the contrast {a}-{b} needs stimuli of both conditions; conditions here: "
                         f"{sorted(set(lab.tolist()))}")
    res = {"contrast": f"{a}-{b}", "n": {a: int((lab == a).sum()), b: int((lab == b).sum())}, "sheets": {}}
    for s in sheets:
        r = resp[s.name].numpy()
        t, p = welch_t(r[lab == a], r[lab == b])
        _, sig = fdr(p, q)
        res["sheets"][s.name] = {**map_test(t, s.layout, fwhm, permutations, seed), "significant_units": int(sig.sum()),
                                 "t_map": t.tolist()}
    return summarise(res)


def read_table(path, text: str, condition: str, conditions: Sequence[str] | None = None) -> tuple[list[str], list[str]]:
    """``(texts, labels)`` of a CSV stimulus table, keeping the rows of ``conditions`` (all when ``None``).
    A missing file or column, or a condition with no row, raises naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such stimulus table")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    cols = list(rows[0]) if rows else []
    for col in (text, condition):
        if col not in cols:
            raise ValueError(f"{path}: no column {col!r}; columns: {cols}")
    if conditions is not None:
        have = {r[condition] for r in rows}
        missing = [c for c in conditions if c not in have]
        if missing:
            raise ValueError(f"{path}: no row of condition {missing} in column {condition!r}; conditions: {sorted(have)}")
        rows = [r for r in rows if r[condition] in conditions]
    return [r[text] for r in rows], [r[condition] for r in rows]


def table_contrast(lm: LM, sheets: list[Sheet], path, text: str, condition: str, a: str, b: str,
                   fwhm: float | None = 2.0, permutations: int = 999, seed: int = 0) -> dict:
    """A stimulus table's contrast ``a`` − ``b``: its rows of the two conditions, each fed alone
    (:func:`stimulus_responses`), then :func:`contrast`."""
    texts, labels = read_table(path, text, condition, (a, b))
    resp = stimulus_responses(lm, sheets, texts)
    return {"file": str(path), **contrast(resp, sheets, labels, a, b, fwhm, permutations, seed)}
