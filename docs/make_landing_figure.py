"""Draw the landing picture (docs/_static/landing.png, also shown at the top of the README): a BIMT network after
training on BIMT's independence task (two modules), beside TopoLM's noun − verb map on one sheet of the topolm
recipe's GPT, topographic vs control. Every panel is computed here; run ``python docs/make_landing_figure.py``
(about 2 minutes on 2 CPU cores)."""
import json
import sys
import tempfile
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from topotorch.io import read_state  # noqa: E402
from topotorch.probe.plots import draw_map  # noqa: E402
from topotorch.probe.sheets import saved_positions  # noqa: E402
from topotorch.recipes import run_recipe  # noqa: E402

torch.set_num_threads(2)
# ``python docs/make_landing_figure.py DIR`` redraws from the runs an earlier call left in DIR
root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp())
bimt = (json.loads((root / "independence" / "metrics.json").read_text()) if (root / "independence" / "metrics.json").is_file()
        else run_recipe("independence", root / "independence", progress=False))
graph_png = root / "independence" / "network.png"
if not (root / "topolm" / "metrics.json").is_file():
    run_recipe("topolm", root / "topolm", progress=False)
analysis = json.loads((root / "topolm" / "analysis.json").read_text())

fig = plt.figure(figsize=(13, 4.6))
ax0 = fig.add_axes([0.0, 0.0, 0.36, 0.92])
ax0.imshow(plt.imread(graph_png)); ax0.axis("off")
ax0.set_title(f"BIMT: y1 and y2 computed by two separate modules ({bimt['params_kept']} weights kept)", fontsize=11)
sheet = "blocks.1.mlp"
for k, arm in enumerate(("topo", "control")):
    ax = fig.add_axes([0.40 + 0.31 * k, 0.08, 0.25, 0.78])
    pos = saved_positions(read_state(root / "topolm" / arm / "model.safetensors"))
    name = sheet if sheet in pos else sorted(pos)[-1]
    s = analysis[arm]["sheets"][name]
    draw_map(ax, s["t_map"], pos[name], label="noun − verb t")
    ax.set_title(f"TopoLM {'topographic' if arm == 'topo' else 'control'}: {name}\nMoran's I {s['morans_i']:.2f}",
                 fontsize=10)
out = Path(__file__).parent / "_static" / "landing.png"
fig.savefig(out, dpi=110, bbox_inches="tight")
print("wrote", out, "from the runs in", root)
