"""
BIMT: a wiring cost makes a network modular
===========================================

Brain-inspired modular training (Liu, Gan & Tegmark) places every neuron on a line, charges each weight for the
distance it spans (``Σ |W| (A·dist + l0)``) and, every few hundred steps, swaps neurons when that shortens the
wires without changing what the network computes. On ``y1 = (x1 + x3)³``, ``y2 = x2² + sin(π x4)`` the network
splits into two modules: one reads x1 and x3, the other x2 and x4.
"""
import torch

import topotorch as tt
from topotorch.plot import draw_network

torch.manual_seed(0)
torch.set_num_threads(2)
x = torch.rand(100, 4) * 2 - 1
y = torch.stack([(x[:, 0] + x[:, 2]) ** 3, x[:, 1] ** 2 + torch.sin(torch.pi * x[:, 3])], 1)
model = tt.MLP([4, 20, 20, 2])                      # Linear, SiLU, Linear, SiLU, Linear
graph = tt.embed(model)                             # neurons on lines, attached like torch.nn.utils.prune
cost = tt.WiringCost(graph, A=1.0, l0=0.1)
opt = torch.optim.AdamW(model.parameters(), lr=2e-3)

for step in range(8000):
    opt.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()
    cost.add_grad_(1e-3 if step < 2000 else 1e-2)  # λ·∂cost/∂W added in place
    opt.step()
    if (step + 1) % 200 == 0:
        tt.relocate(graph, cost, top_k=5, optimizer=opt)  # function-preserving swaps

print("train MSE", torch.nn.functional.mse_loss(model(x), y).item())
print("outputs read inputs", tt.metrics.dependencies(graph, 1e-2))

# %%
# The drawing: line width ∝ ``|w|``, blue positive, red negative; the two modules sit side by side.
draw_network(graph, input_names=["x1", "x2", "x3", "x4"], output_names=["y1", "y2"], title="BIMT, 8000 steps")
