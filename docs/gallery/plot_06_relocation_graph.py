"""
Relocation on a hand-declared graph: shorter wires, the same function
=====================================================================

BIMT's swaps move neurons without changing what the network computes: swapping two hidden units permutes the rows
of the weights that feed them and the columns of the weights that read them. Any model can take part once its
neuron layers and the tensors indexed by their units are declared (a ``NeuronGraph`` with ``Port``\\ s); the
graph refuses, by name, a move it cannot keep exact, and ``graph.verify`` checks the declaration by moving every
layer and comparing the outputs.
"""
import matplotlib.pyplot as plt
import torch
from torch import nn

import topotorch as tt
from topotorch import layout as L
from topotorch.graph import NeuronGraph
from topotorch.plot import draw_network


class TwoLayer(nn.Module):
    """A user's model with its own forward: two hidden layers, tanh then a gated ReLU."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(6, 24), nn.Linear(24, 24), nn.Linear(24, 3)
        self.gate = nn.Parameter(torch.rand(24))  # one value per unit of the second hidden layer

    def forward(self, x):
        h = torch.tanh(self.fc1(x))
        h = torch.relu(self.fc2(h)) * self.gate
        return self.fc3(h)


torch.manual_seed(0)
model = TwoLayer()
g = NeuronGraph()
a = g.add_layer("in", L.line(6))
b = g.add_layer("h1", L.line(24))
c = g.add_layer("h2", L.line(24), [tt.Port(model, "gate", 0)])  # the gate is indexed by h2's units
d = g.add_layer("out", L.line(3))
g.connect(model.fc1, a, b); g.connect(model.fc2, b, c); g.connect(model.fc3, c, d)
x = torch.randn(256, 6)
g.verify(x, model=model)  # moves h1 and h2 at random and back: every declared tensor follows

cost = tt.WiringCost(g, A=1.0, l0=0.1)
before_out, before_cost = model(x).detach(), cost().item()
fig, axes = plt.subplots(1, 2, figsize=(10, 5))
draw_network(g, ax=axes[0], title=f"before: wiring cost {before_cost:.1f}")
for _ in range(10):
    tt.relocate(g, cost, method="assignment")  # optimal placement of each layer given the others
after_cost = cost().item()
draw_network(g, ax=axes[1], title=f"after relocation: {after_cost:.1f}")
print(f"wiring cost {before_cost:.2f} → {after_cost:.2f}; largest output change "
      f"{(model(x) - before_out).abs().max().item():.1e}")
fig.tight_layout()
