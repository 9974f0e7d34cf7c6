"""
Make your own CNN topographic with ``attach``
=============================================

``tt.attach`` gives the output units of any modules positions (a ``topo_positions`` buffer, saved with the
``state_dict``) and returns the loss to add — TDANN's spatial correlation loss: nearby units should respond alike.
Here a plain two-layer CNN on scikit-learn's digits (bundled, offline), every channel × location of its second
conv a unit on a retinotopic sheet, against the same CNN without the loss. The probe then maps which digit each
unit prefers.
"""
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import topotorch as tt
from topotorch.data import digits
from topotorch.probe.plots import draw_map
from topotorch.probe.stats import morans_i_test
from topotorch.probe.vision import sheet_responses
from topotorch.probe.sheets import Sheet

torch.set_num_threads(2)
data = digits(seed=0)                                  # 8×8 images, (N, 1, 8, 8) in [0, 1]


def cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(16 * 64, 10))


maps = {}
for name, alpha in (("topographic", 2.0), ("control", 0.0)):
    model = cnn()
    topo = tt.attach(model, ["2"], units="locations", example_input=data.x_train[:2], alpha=alpha, mode="exact")
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        idx = torch.randint(len(data.x_train), (64,), generator=g)
        loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
        if alpha > 0:
            loss = loss + topo()                        # the one extra line
        opt.zero_grad(); loss.backward(); opt.step()
        topo.clear()                                    # the control arm computes no loss: drop the recording
    acc = float((model(data.x_test).argmax(1) == data.y_test).float().mean())
    lay = topo.positions("2")
    r = sheet_responses(model, [Sheet("2", model[2], lay, "locations")], data.x_test)["2"].numpy()
    tuning = np.stack([r[data.y_test.numpy() == c].mean(0) for c in range(10)], 1)   # (units, digits)
    preferred = tuning.argmax(1)
    test = morans_i_test(tuning[:, 0] - tuning.mean(1), lay, permutations=199)    # the "0" selectivity map
    maps[name] = (preferred, lay, acc, test)
    print(f"{name}: accuracy {acc:.3f}, Moran's I of the digit-0 map {test['i']:.2f} (p {test['p_value']:.3f})")

# %%
# Each dot is a unit (channel × location) at its retinotopic position, coloured by the digit it prefers.
fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
for ax, (name, (pref, lay, acc, test)) in zip(axes, maps.items()):
    draw_map(ax, pref, lay, cmap="tab10", symmetric=False, vmin=-0.5, vmax=9.5, label="preferred digit")
    ax.set_title(f"{name}: accuracy {acc:.2f}, Moran's I {test['i']:.2f}")
fig.tight_layout()
