"""A causal transformer over tokens of numbers (BIMT's in-context regression, notebook 3.4), built from the GPT's
blocks."""
from __future__ import annotations

from torch import nn

from ..gpt import Block, GPTConfig

__all__ = ["RegressionTransformer"]


class RegressionTransformer(nn.Module):
    """Tokens of ``d_in`` numbers → linear read-in → causal transformer blocks → linear read-out.

    ``forward(x (B, T, d_in)) → (B, T, d_out)``. ``config`` is a :class:`GPTConfig` (its ``vocab_size`` and
    ``block_size`` are unused: there is no embedding table)."""

    def __init__(self, config: GPTConfig, d_in: int, d_out: int, layernorm: bool = False):
        super().__init__()
        self.config = config
        self.l_in = nn.Linear(d_in, config.n_embd)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        if not layernorm:  # notebook 3.4 defines LayerNorms but never applies them
            for b in self.blocks:
                b.ln_1, b.ln_2 = nn.Identity(), nn.Identity()
        self.l_out = nn.Linear(config.n_embd, d_out)

    def forward(self, x):
        h = self.l_in(x)
        for b in self.blocks:
            h = b(h)
        return self.l_out(h)
