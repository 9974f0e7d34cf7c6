"""A small topographic CNN (the ``tdann-cnn`` recipe's): two convs whose outputs are the sheets."""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

__all__ = ["TopoCNN"]


class TopoCNN(nn.Module):
    """conv → ReLU → pool → conv → ReLU → linear classifier (the sheets are the two conv outputs).

    ``stride`` of the first conv: 2 halves its sheet, as a ResNet stem does before TDANN's sheets (MNIST's 28×28
    gives 16·14·14 = 3136 and 32·7·7 = 1568 location units instead of 12,544 and 6272)."""

    def __init__(self, in_channels: int, size: int, channels=(16, 32), classes: int = 10, stride: int = 1):
        super().__init__()
        c1, c2 = channels
        self.conv1 = nn.Conv2d(in_channels, c1, 3, stride=stride, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.fc = nn.Linear(c2 * (((size - 1) // stride + 1) // 2) ** 2, classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        return self.fc(F.relu(self.conv2(x)).flatten(1))
