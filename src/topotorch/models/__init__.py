"""Models that read top to bottom, one class per model (the larger ones in their own file: ``cnn.py``, ``tnn.py``,
``transformer.py``). Spatial behaviour is attached with :func:`topotorch.embed` or :func:`topotorch.attach`."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

__all__ = ["MLP", "TokenMLP", "LeNet", "SpatialNet", "ResNet18", "TopoCNN", "TNN", "RegressionTransformer",
           "ACTIVATIONS"]

ACTIVATIONS = {"silu": nn.SiLU, "relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


class MLP(nn.Sequential):
    """BIMT's BioMLP as a plain ``nn.Sequential``: Linear, act, Linear, act, …, Linear.

    Args:
        shape: units per neuron layer, e.g. ``[4, 20, 20, 2]`` (input first).
        activation: a name in :data:`ACTIVATIONS` (BIMT uses SiLU).
    """

    def __init__(self, shape: Sequence[int], activation: str = "silu"):
        shape = [int(s) for s in shape]
        if len(shape) < 2 or any(s < 1 for s in shape):
            raise ValueError(f"MLP shape needs ≥ 2 positive sizes, got {shape}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose from {sorted(ACTIVATIONS)}")
        mods: list[nn.Module] = []
        for i in range(len(shape) - 1):
            mods.append(nn.Linear(shape[i], shape[i + 1]))
            if i < len(shape) - 2:
                mods.append(ACTIVATIONS[activation]())
        super().__init__(*mods)
        self.shape = shape


class TokenMLP(nn.Module):
    """BIMT's token model (modular addition, S4): a learned embedding ``(vocab, dim)`` of each of the
    ``n_tokens`` operands, concatenated and fed to an :class:`MLP` whose input layer has ``n_tokens · dim``
    units (embed it with ``in_fold=n_tokens``: each embedding dimension is one input slot).

    ``forward(tokens (B, n_tokens) long) → (B, shape[-1])``. The embedding is a parameter drawn from N(0, 1), as
    BIMT's notebooks.
    """

    def __init__(self, vocab: int, dim: int, shape: Sequence[int], activation: str = "silu", n_tokens: int = 2):
        super().__init__()
        if shape[0] != n_tokens * dim:
            raise ValueError(f"the MLP's input size {shape[0]} must be n_tokens × dim = {n_tokens} × {dim}")
        self.embedding = nn.Parameter(torch.randn(vocab, dim))
        self.mlp = MLP(shape, activation)
        self.n_tokens = n_tokens

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.dim() != 2 or tokens.shape[1] != self.n_tokens or tokens.is_floating_point():
            raise ValueError(f"TokenMLP takes (batch, {self.n_tokens}) integer tokens, got {tuple(tokens.shape)} "
                             f"{tokens.dtype}")
        return self.mlp(self.embedding[tokens].flatten(1))


class LeNet(nn.Module):
    """LeNet with a locality-prior layer before the classifier (seed 001).

    conv → ReLU → pool → conv → ReLU → pool → fc (→ ``side²`` units) → ReLU → LP (``side²`` → ``side²`` on a
    ``side × side`` grid, cell units) → BatchNorm → ReLU → classifier. ``prior=False`` is the control arm:
    identical, with ``P = 1`` (same BatchNorm, same optimiser).

    Args:
        image_size: input height = width (8 for digits, 28 for MNIST); must be divisible by 4.
        side: the LP sheet is ``side × side`` (seed: 7).
        decay, radius, normalize, strength: the prior (see :func:`topotorch.costs.prior_matrix`).
    """

    def __init__(self, image_size: int = 8, in_channels: int = 1, channels=(16, 32), side: int = 7,
                 classes: int = 10, decay="inverse", radius=None, normalize: bool = False, prior: bool = True,
                 strength: float = 1.0):
        super().__init__()
        from .. import layout as L
        from ..costs import LocalityLinear
        if image_size % 4:
            raise ValueError(f"image_size must be divisible by 4, got {image_size}")
        k = 3 if image_size < 16 else 5
        c1, c2 = channels
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, k, padding=k // 2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, k, padding=k // 2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
        n = side * side
        sheet = L.square(n, spacing=1.0)
        self.fc = nn.Linear(c2 * (image_size // 4) ** 2, n)
        self.act1 = nn.ReLU()
        self.lp = LocalityLinear(sheet, sheet, decay, radius, normalize=normalize, prior=prior, strength=strength)
        self.bn = nn.BatchNorm1d(n)
        self.act2 = nn.ReLU()  # its output is the LP activation map that the variance metric reads
        self.head = nn.Linear(n, classes)

    @property
    def sheet(self):
        """The LP sheet's :class:`~topotorch.layout.Layout` (from the layer's ``topo_positions`` buffer)."""
        return self.lp.out_layout

    def forward(self, x):
        h = self.act1(self.fc(self.features(x)))
        return self.head(self.act2(self.bn(self.lp(h))))


class SpatialNet(nn.Module):
    """An MLP whose every neuron has a learnable position (``positions[i]``: ``(n_i, dim)``, drawn from N(0, 1)).

    The positions are the neuron graph's own: each layer's :data:`~topotorch.layout.POSITIONS` entry, a parameter
    here (on ``net`` for the inputs, on each Linear for its outputs), so the graph, the costs and the probe read
    the learned places. The output layer holds ``tasks × classes`` logits, one head (slice) per task.
    """

    def __init__(self, shape: list[int], activation: str = "sigmoid", dim: int = 2, tasks: int = 2):
        super().__init__()
        from ..graph import embed
        from ..layout import POSITIONS
        self.net = MLP(shape, activation)
        self.graph = embed(self.net)
        for layer, n in zip(self.graph.layers, shape):  # learnable: the fixed line becomes a parameter
            layer.owner._buffers.pop(POSITIONS)
            layer.owner.register_parameter(POSITIONS, nn.Parameter(torch.randn(n, dim)))
            layer.kind = "explicit"
        self.tasks, self.classes = tasks, shape[-1] // tasks
        if self.classes * tasks != shape[-1]:
            raise ValueError(f"output size {shape[-1]} is not tasks × classes for {tasks} tasks")

    @property
    def positions(self) -> list[nn.Parameter]:
        """Per neuron layer (inputs first) its ``(n, dim)`` learnable positions."""
        from ..layout import positions_of
        return [positions_of(layer.owner) for layer in self.graph.layers]

    def forward(self, x):
        return self.net(x)

    def task_logits(self, logits: torch.Tensor, t: int) -> torch.Tensor:
        return logits[:, t * self.classes:(t + 1) * self.classes]


class _Basic(nn.Module):
    """ResNet's basic block: two 3×3 convs with batch norm, a projected shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                           if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.downsample(x))


class ResNet18(nn.Module):
    """ResNet-18's shape (TDANN's backbone) without torchvision: a 7×7 stride-2 stem and max-pool, four stages of
    two basic blocks (``width``·1, 2, 4, 8 channels; strides 1, 2, 2, 2), global average pool, linear classifier.
    Module paths match torchvision's (``layer1.1``, ``layer4.1.conv2``…), so TDANN's sheets are the blocks'
    outputs ``layer1.1`` … ``layer4.1``. ``width=64`` is the original; narrower is cheaper."""

    def __init__(self, classes: int = 1000, width: int = 64, in_channels: int = 3):
        super().__init__()
        if width < 1 or classes < 1 or in_channels < 1:
            raise ValueError(f"width, classes and in_channels must be ≥ 1, got {width}, {classes}, {in_channels}")
        self.conv1 = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        chans, cin = [width, 2 * width, 4 * width, 8 * width], width
        for i, (c, s) in enumerate(zip(chans, (1, 2, 2, 2))):
            setattr(self, f"layer{i + 1}", nn.Sequential(_Basic(cin, c, s), _Basic(c, c, 1)))
            cin = c
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(x.mean((2, 3)))


# one file per further model; imported last (they import the library's layers, which may import this package)
from .cnn import TopoCNN  # noqa: E402
from .tnn import TNN  # noqa: E402
from .transformer import RegressionTransformer  # noqa: E402
