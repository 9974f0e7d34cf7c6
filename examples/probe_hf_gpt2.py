"""A HuggingFace GPT-2 made topographic, saved, reloaded and probed — the path a user takes with their own model.

    python examples/probe_hf_gpt2.py --text tinyshakespeare.txt --stimuli elli_stimuli.csv [--seeds 3] [--steps 300]

For each seed: a GPT-2 (4 layers, 64-dim: every attention and MLP output an 8×8 sheet, ByT5's byte tokenizer —
no download) is trained twice from the same initial weights on the text, with the spatial correlation loss
(α = 2.5, TopoLM's weight) and without it (α = 0, the control); both are written with ``save_pretrained``, then
``topotorch probe`` reads them with TopoLM's noun–verb contrast (Elli et al.'s pairs). Prints, per seed, the mean
Moran's I of the noun–verb t-maps of the model and the control with their permutation p-values, and how many
seeds held (model p < 0.05 and model I above the control's).
"""
import argparse
import json
from pathlib import Path

import torch
import transformers

import topotorch as tt  # topotorch
from topotorch.cli import main as topotorch_cli


def train(text_ids: torch.Tensor, alpha: float, seed: int, steps: int, folder: Path) -> float:
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=384, n_positions=128, n_embd=64, n_layer=4, n_head=4,
                                  bos_token_id=1, eos_token_id=1)
    model = transformers.GPT2LMHeadModel(cfg)
    sheets = [f"transformer.h.{i}.{part}" for i in range(cfg.n_layer) for part in ("attn", "mlp")]
    topo = tt.attach(model, sheets, example_input=text_ids[None, :16], alpha=alpha, seed=seed)  # topotorch
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.1)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        i = torch.randint(0, len(text_ids) - 129, (16,), generator=g).tolist()
        x = torch.stack([text_ids[k:k + 128] for k in i])
        loss = model(input_ids=x, labels=x).loss
        (loss + topo() if alpha > 0 else loss).backward()  # topotorch
        opt.step()
        opt.zero_grad()
    model.save_pretrained(folder)  # the positions travel as `…topo_positions` entries of model.safetensors
    transformers.ByT5Tokenizer().save_pretrained(folder)
    return loss.item()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--text", required=True, help="a text file to train on (e.g. tiny Shakespeare)")
    p.add_argument("--stimuli", required=True, help="TopoLM's elli_stimuli.csv (noun and verb pairs)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--out", default="runs/probe_hf_gpt2")
    args = p.parse_args()
    torch.set_num_threads(2)
    tok = transformers.ByT5Tokenizer()
    ids = torch.tensor(tok(Path(args.text).read_text()[:500_000], add_special_tokens=False)["input_ids"])
    held, rows = 0, []
    for seed in range(args.seeds):
        root = Path(args.out) / f"seed{seed}"
        losses = {arm: train(ids, alpha, seed, args.steps, root / arm) for arm, alpha in (("topo", 2.5), ("control", 0.0))}
        rc = topotorch_cli(["probe", str(root / "topo"), "--control", str(root / "control"), "--out", str(root / "probe"),
                            "--stimuli", args.stimuli, "--text", "pair", "--condition", "class", "--contrast", "noun-verb"])
        if rc:
            raise SystemExit(rc)
        res = json.loads((root / "probe" / "probe.json").read_text())["results"]
        m, c = res["model"]["stimuli"]["noun-verb"], res["control"]["stimuli"]["noun-verb"]
        ok = m["p_value"] < 0.05 and m["morans_i"] > c["morans_i"]
        held += ok
        rows.append((seed, losses["topo"], losses["control"], m["morans_i"], m["p_value"], c["morans_i"], c["p_value"], ok))
    print("\nseed  loss topo/control  Moran's I topo (p)  control (p)  held")
    for s, lt, lc, mi, mp, ci, cp, ok in rows:
        print(f"{s:4d}  {lt:.3f} / {lc:.3f}      {mi:.3f} ({mp:.3f})       {ci:.3f} ({cp:.3f})  {ok}")
    print(f"topographic noun–verb map above its shuffled-position null (p < 0.05) and above the control: {held}/{args.seeds} seeds")


if __name__ == "__main__":
    main()
