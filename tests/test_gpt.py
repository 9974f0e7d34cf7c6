import pytest
import torch

import topotorch as tt
from topotorch import layout as L
from topotorch.gpt import GPT, GPTConfig, gpt_graph


def _gpt(seed=0, bias=True):
    torch.manual_seed(seed)
    m = GPT(GPTConfig(block_size=16, vocab_size=37, n_layer=2, n_head=2, n_embd=16, bias=bias)).double()
    with torch.no_grad():  # non-trivial LayerNorm and bias parameters
        for name, p in m.named_parameters():
            if "ln" in name or name.endswith("bias"):
                p.add_(0.3 * torch.randn_like(p))
    return m


def test_gpt_shapes_tied_head_and_causality():
    m = _gpt()
    idx = torch.randint(0, 37, (3, 10))
    logits, loss = m(idx, idx)
    assert logits.shape == (3, 10, 37) and loss.ndim == 0
    assert m.lm_head.weight is m.wte.weight
    idx2 = idx.clone()
    idx2[:, 7:] = (idx2[:, 7:] + 1) % 37  # changing the future must not change the past
    assert torch.allclose(m(idx2)[0][:, :7], logits[:, :7])
    with pytest.raises(ValueError, match="block_size"):
        m(torch.zeros(1, 17, dtype=torch.long))


@pytest.mark.parametrize("method", ["greedy", "assignment"])
@pytest.mark.parametrize("bias", [True, False])
def test_relocating_stream_and_hidden_units_keeps_logits(method, bias):
    m = _gpt(1, bias)
    g = gpt_graph(m, stream=L.square_grid(16))
    cost = tt.WiringCost(g, A=1.0, l0=0.1)
    idx = torch.randint(0, 37, (2, 12))
    before = m(idx)[0]
    c0 = cost.value().item()
    opt = torch.optim.AdamW(m.parameters())
    m(idx, idx)[1].backward()
    opt.step()
    before = m(idx)[0]
    moved = tt.relocate(g, cost, top_k=8, method=method, optimizer=opt)
    assert moved > 0
    assert torch.allclose(m(idx)[0], before, atol=1e-10)
    assert cost.value().item() <= c0 + 1.0  # relocation never increases the cost for the same weights
    assert all(not g.layers[i].movable for i, l in enumerate(g.layers) if l.name.endswith((".q", ".k", ".v")))


def test_relocating_only_the_stream_is_joint_across_blocks():
    m = _gpt(2)
    g = gpt_graph(m)
    idx = torch.randint(0, 37, (2, 9))
    before = m(idx)[0]
    g.permute(0, torch.randperm(16))
    assert torch.allclose(m(idx)[0], before, atol=1e-10)
    names = {p.name for p in g.layers[0].ports}
    assert {"weight", "bias"} <= names  # embeddings, LayerNorms and projections all move together


def test_add_blocks_names_a_block_it_cannot_declare_and_leaves_the_graph_as_it_was():
    from torch import nn
    from topotorch.gpt import add_blocks
    from topotorch.graph import NeuronGraph

    class Fused(nn.Module):  # a fused qkv projection: not declarable by add_blocks
        def __init__(self):
            super().__init__()
            self.ln_1, self.ln_2 = nn.LayerNorm(8), nn.LayerNorm(8)
            self.attn = nn.MultiheadAttention(8, 2)

    g = NeuronGraph()
    s = g.add_layer("stream", L.line(8))
    with pytest.raises(ValueError, match="no attn.q"):
        add_blocks(g, s, [Fused()])
    assert len(g.layers) == 1 and not g.weights and not g.layers[0].ports
