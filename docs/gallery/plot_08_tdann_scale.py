"""
TDANN's sheets at their real size: windows, not n × n
=====================================================

TDANN's first ResNet-18 sheet at 224×224 has 64 × 56 × 56 = 200,704 units; an (n × n) float32 matrix of them would
take 150 GB. topotorch's sampled spatial loss never builds one: a window index finds the ~500 units around a random
unit (a cell index, O(n) memory), their correlations and distances are computed for that window alone, one window
per sheet per step (TDANN's setting). The same holds for TDANN's swap pre-optimisation, window by window. Here a
one-conv model with such a sheet, a training step, and one window drawn on the sheet.
"""
import resource
import time

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch import nn

import topotorch as tt
from topotorch.windows import Windows

torch.manual_seed(0)
torch.set_num_threads(2)
model = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                      nn.Linear(64, 10))
x, y = torch.rand(8, 3, 56, 56), torch.randint(10, (8,))
t = time.perf_counter()
topo = tt.attach(model, ["0"], units="locations", example_input=x[:2], mode="sampled")
sheet = topo.correlation.sheets[0]
print(f"{sheet.layout.n:,} units; window radius {sheet.radius:.1f} (≈500 units), {topo.correlation.k} window per step; "
      f"attach took {time.perf_counter() - t:.2f} s")
loss = F.cross_entropy(model(x), y) + topo()
loss.backward()
print(f"one step: loss {loss.item():.3f}; spatial loss {topo.last['0']:.3f}")
try:
    tt.detach(model)
    tt.attach(model, ["0"], units="locations", example_input=x[:2], mode="exact")
except ValueError as e:
    print("exact mode:", str(e)[:160], "…")
print(f"peak memory of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20:.2f} GB")

# %%
# The sheet (every 20th unit) and one sampled window: the units within the radius of a random unit, in every
# coordinate.
c = sheet.layout.unit_coords
win = Windows(c, sheet.radius).members(123_456)
fig, ax = plt.subplots(figsize=(6, 6))
ax.scatter(c[::20, 0], c[::20, 1], s=0.2, c="0.7")
ax.scatter(c[win, 0], c[win, 1], s=2, c="C3", label=f"one window: {len(win)} units")
ax.set_aspect("equal"); ax.legend(loc="upper right"); ax.set_title("retinotopic sheet of 200,704 units")
ax.set_xlabel("x (cells)"); ax.set_ylabel("y (cells)")
