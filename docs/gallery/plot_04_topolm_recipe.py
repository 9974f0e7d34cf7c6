"""
A recipe: TopoLM's noun–verb maps, topographic vs control
=========================================================

Every experiment of the library is a recipe, run the same way from the command line (``topotorch run topolm``) or
from Python. This runs the ``topolm`` recipe — a small GPT whose attention and MLP outputs lie on 10×10 sheets,
trained with the spatial correlation loss and, from the same initial weights, without it — in its quick variant (``--set quick=true``: fewer steps),
and shows the figure it writes: the noun − verb t-map of every sheet.
"""
import json
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt

from topotorch.recipes import run_recipe

out = Path(tempfile.mkdtemp()) / "topolm"
metrics = run_recipe("topolm", out, {"quick": True, "threads": 2}, progress=False)
print(json.dumps({k: round(v, 3) for k, v in metrics.items() if isinstance(v, float)}, indent=1))
print("written:", sorted(p.name for p in out.iterdir()))

# %%
# The recipe's own figure (``maps_noun_verb.png`` in the run directory).
img = plt.imread(out / "maps_noun_verb.png")
fig, ax = plt.subplots(figsize=(10, 10 * img.shape[0] / img.shape[1]))
ax.imshow(img)
ax.axis("off")
