"""
seRNN: a wiring cost that spares the connections a network needs
================================================================

Spatially embedded RNNs (Achterberg, Akarca et al. 2023) put 100 recurrent units on a 5×5×4 grid and charge each
weight ``|W_ij| · C_ij · D_ij``: its length ``D`` times the *communicability* ``C = expm(S^-½ |W| S^-½)`` of the two
units — how many short paths join them. Unlike L1 times distance, a long weight between units that are already well
connected costs more than one that is their only link. Here 100 steps of plain gradient descent on each cost alone,
from the same random sparse network, and what they keep. Four networks are computed as one batch ``(k, n, n)``.
"""
import matplotlib.pyplot as plt
import torch

from topotorch.costs.communicability import communicability, communicability_cost, grid3d

torch.manual_seed(0)
pos = grid3d((5, 5, 4)).float()                                    # (100, 3) unit positions
D = torch.cdist(pos, pos)
W0 = torch.randn(4, 100, 100) * (torch.rand(4, 100, 100) < 0.1) * 0.5

kept = {}
for name, cost in (("L1 × distance", lambda W: (W.abs() * D).sum((-2, -1))),
                   ("communicability × distance (seRNN)", lambda W: communicability_cost(W, pos))):
    W = W0.clone().requires_grad_()
    opt = torch.optim.SGD([W], lr=5e-4)
    for _ in range(100):
        opt.zero_grad()
        cost(W).sum().backward()                                    # one cost per network, summed
        opt.step()
    kept[name] = W.detach()
    alive = W.detach().abs() > 0.05
    print(f"{name}: {alive.float().mean():.3f} of weights above 0.05, their mean length "
          f"{(D * alive).sum() / alive.sum():.2f} grid cells")

# %%
# For the first network: weight magnitude against length, coloured by the communicability of the pair.
fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
C0 = communicability(W0[0].abs()).flatten()
nz = W0[0].flatten() != 0
for ax, (name, W) in zip(axes, kept.items()):
    sc = ax.scatter(D.flatten()[nz], W[0].abs().flatten()[nz], c=C0[nz], s=6, cmap="viridis")
    ax.set_title(name, fontsize=10); ax.set_xlabel("length (grid cells)")
axes[0].set_ylabel("|weight| after 100 steps")
fig.colorbar(sc, ax=axes, label="communicability at the start")
