"""A GPT in one file, after nanoGPT: token + position embeddings, pre-LN blocks, causal attention through
``scaled_dot_product_attention``, tied head. q, k and v are separate projections (the same maths as a fused
``c_attn``) so that their input columns can be declared as ports of the residual stream.

Sheets for topographic losses (TopoLM's evaluated setting): each block's attention output (after ``c_proj``)
and MLP output, *before* the residual add — the outputs of ``block.attn`` and ``block.mlp``; optionally the
residual stream (the block's output). :func:`gpt_graph` declares the neuron graph for BIMT wiring costs and
function-preserving relocation of residual-stream and MLP-hidden units.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import layout as L
from .graph import NeuronGraph, Port

__all__ = ["GPTConfig", "GPT", "Block", "gpt_graph", "add_blocks", "sequence_logprob"]


@dataclass
class GPTConfig:
    block_size: int = 64
    vocab_size: int = 256
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 100
    dropout: float = 0.0
    bias: bool = False


class CausalSelfAttention(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        if c.n_embd % c.n_head:
            raise ValueError(f"n_embd {c.n_embd} is not divisible by n_head {c.n_head}")
        self.q = nn.Linear(c.n_embd, c.n_embd, bias=c.bias)
        self.k = nn.Linear(c.n_embd, c.n_embd, bias=c.bias)
        self.v = nn.Linear(c.n_embd, c.n_embd, bias=c.bias)
        self.c_proj = nn.Linear(c.n_embd, c.n_embd, bias=c.bias)
        self.n_head, self.dropout = c.n_head, c.dropout
        self.resid_dropout = nn.Dropout(c.dropout)

    def forward(self, x):
        B, T, C = x.shape
        split = lambda t: t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, H, T, hd)
        y = F.scaled_dot_product_attention(split(self.q(x)), split(self.k(x)), split(self.v(x)), is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).reshape(B, T, C)))


class FeedForward(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(c.n_embd, 4 * c.n_embd, bias=c.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * c.n_embd, c.n_embd, bias=c.bias)
        self.dropout = nn.Dropout(c.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(c.n_embd, bias=c.bias)
        self.attn = CausalSelfAttention(c)
        self.ln_2 = nn.LayerNorm(c.n_embd, bias=c.bias)
        self.mlp = FeedForward(c)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = c = config
        self.wte = nn.Embedding(c.vocab_size, c.n_embd)
        self.wpe = nn.Embedding(c.block_size, c.n_embd)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList([Block(c) for _ in range(c.n_layer)])
        self.ln_f = nn.LayerNorm(c.n_embd, bias=c.bias)
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied
        self.apply(self._init)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # GPT-2's scaled init of residual projections
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * c.n_layer))

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, 0.02)

    def forward(self, idx, targets=None):
        """``idx (B, T)`` token ids → logits ``(B, T, vocab)`` and, with ``targets``, the mean cross-entropy."""
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence of length {T} exceeds block_size {self.config.block_size}")
        x = self.drop(self.wte(idx) + self.wpe(torch.arange(T, device=idx.device)))
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return logits, loss

    def sheets(self, where: str = "outputs") -> list[tuple[str, nn.Module]]:
        """(path in ``named_modules()``, module) of the hookable sheets: ``"outputs"`` = attention and MLP
        outputs before the residual add (TopoLM), ``"residual"`` = each block's residual stream."""
        if where == "outputs":
            return [(f"blocks.{i}.{part}", getattr(b, part)) for i, b in enumerate(self.blocks) for part in ("attn", "mlp")]
        if where == "residual":
            return [(f"blocks.{i}", b) for i, b in enumerate(self.blocks)]
        raise ValueError(f"where must be 'outputs' or 'residual', got {where!r}")


def gpt_graph(model: GPT, stream=None, hidden=None) -> NeuronGraph:
    """The neuron graph of a :class:`GPT` for BIMT wiring costs and relocation.

    Neuron layers: the residual stream (one layer shared by every block: its ports are the embedding
    columns, the tied head, every LayerNorm and every projection reading or writing the stream), and per
    block the q, k, v units (placed, costed, but not moved: their order ties heads together) and the MLP
    hidden units. Relocating the stream or a hidden layer keeps the logits unchanged.

    Every layer's positions live on a module of the model (:data:`~topotorch.layout.POSITIONS` buffers: the stream on
    ``wte``, q/k/v on their projections, the hidden units on ``mlp.c_fc``), so ``state_dict`` saves them and a
    topography attached with ``attach(..., graph=g)`` to the blocks' output projections shares the stream's.

    Args:
        stream: layout of the ``n_embd`` stream units (default: the positions ``model.wte`` already keeps, as after
            loading a saved state, else a line).
        hidden: layout of each block's ``4·n_embd`` hidden units (default: a line or a grid, as the stream).
    """
    g = NeuronGraph()
    g.model = model
    if stream is None and L.positions_of(model.wte) is None:
        stream = L.line(model.config.n_embd)
    s = g.add_layer("stream", stream, [Port(model.wte, "weight", 1), Port(model.wpe, "weight", 1)], owner=model.wte)
    add_blocks(g, s, model.blocks, [model.ln_f], hidden)
    return g


def add_blocks(g: NeuronGraph, s: int, blocks, norms=(), hidden=None) -> None:
    """Declare transformer :class:`Block` s on the residual stream layer ``s`` of ``g``: every block's
    LayerNorms (and the extra ``norms``) as stream ports, its q, k, v units (fixed), its MLP hidden layer,
    and the projections between them. Shared by :func:`gpt_graph` and models that feed the stream their own
    way (e.g. a linear read-in)."""
    need = ("ln_1", "ln_2", "attn.q", "attn.k", "attn.v", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    for i, b in enumerate(blocks):  # checked before the graph changes
        for path in need:
            obj = b
            for part in path.split("."):
                obj = getattr(obj, part, None)
            if obj is None:
                raise ValueError(f"block {i} ({type(b).__name__}) has no {path}: add_blocks declares topotorch.gpt.Block "
                                 "(separate q, k, v projections); declare other blocks by hand with add_layer/connect")
    stream = g.layers[s].layout
    n = stream.n
    same_kind = (lambda k: L.square_grid(k)) if stream.dim == 2 else L.line  # layouts must share a dimension
    for ln in [m for b in blocks for m in (b.ln_1, b.ln_2)] + list(norms):
        for nm in ("weight", "bias"):
            if getattr(ln, nm, None) is not None:
                g.add_port(s, Port(ln, nm, 0))
    for i, b in enumerate(blocks):
        qkv = {}
        for part in ("q", "k", "v"):
            qkv[part] = g.add_layer(f"block{i}.{part}", _keep(getattr(b.attn, part), same_kind(n)),
                                    owner=getattr(b.attn, part))
            g.layers[qkv[part]].movable = False
            g.connect(getattr(b.attn, part), s, qkv[part], name=f"block{i}.attn.{part}")
        g.connect(b.attn.c_proj, qkv["v"], s, name=f"block{i}.attn.c_proj")
        h = g.add_layer(f"block{i}.hidden", hidden or _keep(b.mlp.c_fc, same_kind(4 * n)), owner=b.mlp.c_fc)
        g.connect(b.mlp.c_fc, s, h, name=f"block{i}.mlp.c_fc")
        g.connect(b.mlp.c_proj, h, s, name=f"block{i}.mlp.c_proj")


def _keep(owner: nn.Module, default: L.Layout) -> L.Layout | None:
    """None (share them) when ``owner`` already keeps positions of ``default``'s shape, else ``default``."""
    have = L.positions_of(owner)
    return None if have is not None and have.shape == (default.n, default.dim) else default


@torch.no_grad()
def sequence_logprob(model: nn.Module, sequences, block_size: int, context: Sequence[int] = (), batch: int = 64) -> torch.Tensor:
    """Total log-probability (nats) of each token sequence under a causal LM given ``context`` tokens (e.g. a
    newline for a byte-level model), windows of ``block_size`` overlapping by half for long sequences;
    ``(len(sequences),)`` float64. The one implementation is :func:`topotorch.probe.language.sequence_logprob`."""
    from .probe.language import LM, sequence_logprob as _score
    if block_size < 2:
        raise ValueError(f"block_size must be ≥ 2, got {block_size}")
    return _score(LM(model, None, block_size, bos=list(context)), sequences, batch=batch)
