"""
The locality prior: a linear layer that prefers short connections
=================================================================

Seed 001's LP layer multiplies a linear layer's weights by a fixed distance prior ``P[i, j] = decay(d(i, j))``
between output unit ``i`` and input unit ``j`` on their sheets, so each output unit mostly reads the inputs near
it. It is a ``torch.nn.utils.parametrize`` parametrization: the layer stays an ``nn.Linear`` and the prior can be
inspected or removed.
"""
import matplotlib.pyplot as plt
import torch

from topotorch import layout as L
from topotorch.costs import LocalityLinear, prior_matrix

sheet = L.grid(12, 12, spacing=1.0)
P = {d: prior_matrix(sheet, sheet, decay=d, radius=4.0 if d == "linear" else None) for d in ("inverse", "linear")}
lp = LocalityLinear(sheet, sheet, decay="inverse")
print(lp)
print("effective weight = original ⊙ prior:",
      torch.allclose(lp.weight, lp.parametrizations.weight.original * P["inverse"].to(lp.weight.dtype)))

# %%
# The prior seen from one output unit (the centre of the sheet): how strongly it may read each input unit.
centre = 6 * 12 + 6
fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
for ax, (name, M) in zip(axes, P.items()):
    im = ax.imshow(M[centre].reshape(12, 12), cmap="viridis")
    ax.set_title(f"prior of unit {centre} ({name} decay)")
    fig.colorbar(im, ax=ax)
w = lp.weight.detach()[centre].reshape(12, 12).abs()
im = axes[2].imshow(w, cmap="viridis")
axes[2].set_title("|weight| of that unit at initialisation")
fig.colorbar(im, ax=axes[2])
fig.tight_layout()
