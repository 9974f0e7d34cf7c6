"""
A sweep: how much task for how much topography
==============================================

Topography is never free. ``topotorch sweep RECIPE --set KEY=V1,V2,… --seeds N`` runs a recipe over a grid and
seeds (resumable: finished cells are read back), and plots the front — the task figure against the topography
figure, mean ± sd over seeds. Here TopoNets' TopoLoss on an MLP's 16×16 hidden sheet, at two strengths τ
(0 is the control), two seeds each, shortened to 8 epochs.
"""
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt

from topotorch.sweep import sweep

out = Path(tempfile.mkdtemp()) / "toponets"
res = sweep("toponets-mlp", {"tau": [0.0, 10.0]}, {"epochs": 8, "threads": 2}, seeds=2, out=out,
            progress=False)
for s in res["settings"]:
    print(f"τ = {s['tau']:>4}: {res['task']} {s['task_mean']:.3f} ± {s['task_sd']:.3f}; "
          f"{res['topography']} {s['topography_mean']:.2f} ± {s['topography_sd']:.2f}")

# %%
# The figure ``sweep`` writes (``sweep.png``).
img = plt.imread(out / "sweep.png")
fig, ax = plt.subplots(figsize=(8, 8 * img.shape[0] / img.shape[1]))
ax.imshow(img)
ax.axis("off")
