"""Make your own small CNN topographic with topotorch (lines marked `# topotorch` are all it takes).

    python examples/topographic_cnn.py        # ~20 s on 2 CPU cores; trains on scikit-learn's digits
"""
import torch
import torch.nn.functional as F
from torch import nn

import topotorch as tt  # topotorch
from topotorch.io import load_model, save_model  # topotorch
from topotorch.data import digits


class SmallCNN(nn.Module):  # a user's model, unchanged
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32 * 4 * 4, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        return self.fc(F.relu(self.conv2(x)).flatten(1))


def main(epochs: int = 15, out: str = "topographic_cnn.safetensors"):
    torch.manual_seed(0)
    d = digits()
    model = SmallCNN()
    topo = tt.attach(model, ["conv1", "conv2"], units="locations", example_input=d.x_train[:2], alpha=2.0)  # topotorch
    topo.optimize_positions(d.x_train[:256])  # topotorch: TDANN's swap pre-optimisation
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(epochs):
        for i in torch.randperm(len(d.x_train)).split(64):
            opt.zero_grad()
            loss = F.cross_entropy(model(d.x_train[i]), d.y_train[i]) + topo()  # topotorch: + topo()
            loss.backward()
            opt.step()
    model.eval()
    acc = (model(d.x_test).argmax(1) == d.y_test).float().mean().item()
    save_model(model, out)  # topotorch: weights and positions in one safetensors file

    again = SmallCNN()  # reload: attach the same way, then load — the positions come back with the weights
    tt.attach(again, ["conv1", "conv2"], units="locations", example_input=d.x_train[:2])  # topotorch
    load_model(again, out)  # topotorch
    same = torch.equal(again.conv2.topo_positions, model.conv2.topo_positions)
    print(f"test accuracy {acc:.3f}; spatial loss per layer {topo.last}; positions reloaded: {same}")
    return acc, same


if __name__ == "__main__":
    main()
