"""The seed's BIMT relocation (seed 003, BioMLP), kept faithful for comparison only.

Every candidate swap recomputes the whole connection cost, as the notebook does. Not part of the
package: benchmarks and tests import it to check topotorch picks the same swaps, and to time both.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn


class BioLinear(nn.Module):
    def __init__(self, in_dim, out_dim, in_fold=1, out_fold=1):
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        self.linear = nn.Linear(in_dim, out_dim)
        self.in_fold, self.out_fold = in_fold, out_fold
        assert in_dim % in_fold == 0 and out_dim % out_fold == 0
        in_dim_fold, out_dim_fold = in_dim // in_fold, out_dim // out_fold
        self.in_coordinates = torch.tensor(list(np.linspace(1 / (2 * in_dim_fold), 1 - 1 / (2 * in_dim_fold), num=in_dim_fold)) * in_fold, dtype=torch.float)
        self.out_coordinates = torch.tensor(list(np.linspace(1 / (2 * out_dim_fold), 1 - 1 / (2 * out_dim_fold), num=out_dim_fold)) * out_fold, dtype=torch.float)

    def forward(self, x):
        return self.linear(x)


class BioMLP(nn.Module):
    def __init__(self, shp, in_fold=1, l0=0.1, top_k=5):
        super().__init__()
        self.in_dim, self.out_dim, self.depth = shp[0], shp[-1], len(shp) - 1
        self.linears = nn.ModuleList(
            [BioLinear(shp[i], shp[i + 1], in_fold=in_fold if i == 0 else 1) for i in range(self.depth)])
        self.shp, self.l0, self.top_k = shp, l0, top_k
        self.in_perm = nn.Parameter(torch.tensor(np.arange(int(self.in_dim / self.linears[0].in_fold)), dtype=torch.float))
        self.out_perm = nn.Parameter(torch.tensor(np.arange(int(self.out_dim / self.linears[-1].out_fold)), dtype=torch.float))

    def forward(self, x):
        shp = x.shape
        in_fold = self.linears[0].in_fold
        x = x.reshape(shp[0], in_fold, int(shp[1] / in_fold))
        x = x[:, :, self.in_perm.long()]
        x = x.reshape(shp[0], shp[1])
        f = torch.nn.SiLU()
        for i in range(self.depth - 1):
            x = f(self.linears[i](x))
        x = self.linears[-1](x)
        out_perm_inv = torch.zeros(self.out_dim, dtype=torch.long)
        out_perm_inv[self.out_perm.long()] = torch.arange(self.out_dim)
        return x[:, out_perm_inv]

    def get_cc(self, weight_factor=1.0, bias_penalize=True, no_penalize_last=False):
        cc = 0
        num_linear = len(self.linears)
        for i in range(num_linear):
            if i == num_linear - 1 and no_penalize_last:
                weight_factor = 0.
            biolinear = self.linears[i]
            dist = torch.abs(biolinear.out_coordinates.unsqueeze(dim=1) - biolinear.in_coordinates.unsqueeze(dim=0)).to(biolinear.linear.weight.dtype)
            cc += torch.sum(torch.abs(biolinear.linear.weight) * (weight_factor * dist + self.l0))
            if bias_penalize:
                cc += torch.sum(torch.abs(biolinear.linear.bias) * (self.l0))
        return cc

    def swap_weight(self, weights, j, k, swap_type="out"):
        with torch.no_grad():
            if swap_type == "in":
                temp = weights[:, j].clone()
                weights[:, j] = weights[:, k].clone()
                weights[:, k] = temp
            else:
                temp = weights[j].clone()
                weights[j] = weights[k].clone()
                weights[k] = temp

    def swap_bias(self, biases, j, k):
        with torch.no_grad():
            temp = biases[j].clone()
            biases[j] = biases[k].clone()
            biases[k] = temp

    def swap(self, i, j, k):
        linears = self.linears
        num_linear = len(linears)
        if i == 0:
            weights = linears[i].linear.weight
            infold = linears[i].in_fold
            fold_dim = int(weights.shape[1] / infold)
            for l in range(infold):
                self.swap_weight(weights, j + fold_dim * l, k + fold_dim * l, swap_type="in")
            self.swap_bias(self.in_perm, j, k)
        elif i == num_linear:
            weights = linears[i - 1].linear.weight
            biases = linears[i - 1].linear.bias
            self.swap_weight(weights, j, k, swap_type="out")
            self.swap_bias(biases, j, k)
            self.swap_bias(self.out_perm, j, k)
        else:
            weights_in = linears[i - 1].linear.weight
            weights_out = linears[i].linear.weight
            biases = linears[i - 1].linear.bias
            self.swap_weight(weights_in, j, k, swap_type="out")
            self.swap_weight(weights_out, j, k, swap_type="in")
            self.swap_bias(biases, j, k)

    def get_top_id(self, i, top_k=20):
        linears = self.linears
        num_linear = len(linears)
        if i == 0:
            weights = linears[i].linear.weight
            score = torch.sum(torch.abs(weights), dim=0)
            in_fold = linears[0].in_fold
            score = torch.sum(score.reshape(in_fold, int(score.shape[0] / in_fold)), dim=0)
        elif i == num_linear:
            score = torch.sum(torch.abs(linears[i - 1].linear.weight), dim=1)
        else:
            score = torch.sum(torch.abs(linears[i].linear.weight), dim=0) + torch.sum(torch.abs(linears[i - 1].linear.weight), dim=1)
        return torch.flip(torch.argsort(score), [0])[:top_k]

    def relocate_ij(self, i, j, log=None):
        linears = self.linears
        num_linear = len(linears)
        if i < num_linear:
            num_neuron = int(linears[i].linear.weight.shape[1] / linears[i].in_fold)
        else:
            num_neuron = linears[i - 1].linear.weight.shape[0]
        ccs = []
        for k in range(num_neuron):
            self.swap(i, j, k)
            ccs.append(self.get_cc())
            self.swap(i, j, k)
        k = torch.argmin(torch.stack(ccs))
        if log is not None:
            log.append((i, int(j), int(k), torch.stack(ccs).detach()))
        self.swap(i, j, k)

    def relocate(self, log=None):
        for i in range(len(self.linears) + 1):
            for j in self.get_top_id(i, top_k=self.top_k):
                self.relocate_ij(i, j, log)


def copy_into(ref: BioMLP, mlp) -> None:
    """Copy a BioMLP's weights into a topotorch MLP (same shape, same unit order)."""
    linears = [m for m in mlp if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for a, b in zip(ref.linears, linears):
            b.weight.copy_(a.linear.weight)
            b.bias.copy_(a.linear.bias)
