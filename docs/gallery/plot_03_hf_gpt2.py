"""
A HuggingFace GPT-2, topographic, probed for noun–verb maps
===========================================================

TopoLM (Rathi et al. 2025) puts every attention and MLP output of a GPT on a 2D sheet and adds the spatial
correlation loss; nouns and verbs then come out in separate patches of the sheet. Here the same on a
``transformers.GPT2LMHeadModel`` built from a config (no download), trained for 120 steps on a small
generated English-like grammar, with and without the loss from the same initial weights. The probe feeds every noun
and verb alone, takes a Welch t per unit, and measures the t-map's Moran's I against shuffled positions.
"""
import matplotlib.pyplot as plt
import torch
import transformers

import topotorch as tt
from topotorch.data import _LEXICON, grammar_corpus
from topotorch.probe.language import LM, contrast, stimulus_responses
from topotorch.probe.plots import draw_map

torch.set_num_threads(2)
data = grammar_corpus(4000, seed=0)
cfg = transformers.GPT2Config(vocab_size=data.vocab_size, n_positions=32, n_embd=64, n_layer=2, n_head=4)
sheets = [f"transformer.h.{i}.{part}" for i in range(cfg.n_layer) for part in ("attn", "mlp")]
words = _LEXICON["noun"] + _LEXICON["verb_t"] + _LEXICON["verb_i"]
labels = ["noun"] * len(_LEXICON["noun"]) + ["verb"] * (len(words) - len(_LEXICON["noun"]))

results = {}
for arm, alpha in (("topographic", 2.5), ("control", 0.0)):
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg)
    topo = tt.attach(model, sheets, example_input=data.train[None, :16], alpha=alpha)   # 8×8 sheets
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
    g = torch.Generator().manual_seed(0)
    for _ in range(120):
        x, _ = data.batch("train", 32, 32, g)
        loss = model(input_ids=x, labels=x).loss
        (loss + topo() if alpha > 0 else loss).backward()
        opt.step(); opt.zero_grad()
    lm = LM(model, data.vocab, block_size=32, bos=[data.vocab.index(".")])
    probe_sheets = tt.probe.find_sheets(model, example_input=data.train[None, :16])  # modules with positions
    resp = stimulus_responses(lm, probe_sheets, words)
    res = contrast(resp, probe_sheets, labels, "noun", "verb", permutations=199)
    results[arm] = (res, probe_sheets)
    print(f"{arm}: loss {loss.item():.3f}; noun–verb Moran's I {res['morans_i']:.2f} "
          f"(shuffled {res['morans_i_null']:.2f}, p {res['p_value']:.3f})")

# %%
# The noun − verb t-map of every sheet: red units prefer nouns, blue ones verbs.
fig, axes = plt.subplots(2, len(sheets), figsize=(3.2 * len(sheets), 6))
for row, (arm, (res, probe_sheets)) in enumerate(results.items()):
    for ax, s in zip(axes[row], probe_sheets):
        sheet = res["sheets"][s.name]
        draw_map(ax, sheet["t_map"], s.layout, label="t")
        ax.set_title(f"{arm}\n{s.name}: I {sheet['morans_i']:.2f}", fontsize=8)
fig.tight_layout()
