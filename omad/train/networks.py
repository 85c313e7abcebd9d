"""Stacked layers: n independent networks evaluated in one batched matmul.

All agents' actors (and both critic heads) are stacks. Input and output are [n, B, features];
weight i belongs to network i only, so a stack of n equals n separate networks.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class StackedLinear(nn.Module):
    def __init__(self, n: int, d_in: int, d_out: int, init_scale: float = 1.0):
        super().__init__()
        bound = 1.0 / math.sqrt(d_in)
        self.weight = nn.Parameter(torch.empty(n, d_in, d_out).uniform_(-bound, bound) * init_scale)
        self.bias = nn.Parameter(torch.empty(n, 1, d_out).uniform_(-bound, bound) * init_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class StackedLayerNorm(nn.Module):
    def __init__(self, n: int, d: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n, 1, d))
        self.bias = nn.Parameter(torch.zeros(n, 1, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:]) * self.weight + self.bias


class StackedMLP(nn.Module):
    """n MLPs: Linear (-> LayerNorm) -> activation per hidden layer, then a linear output."""

    def __init__(self, n: int, d_in: int, hidden: list[int], d_out: int, layer_norm: bool = False, hidden_act=None):
        super().__init__()
        hidden_act = hidden_act or (nn.ReLU if layer_norm else nn.GELU)
        layers: list[nn.Module] = []
        d = d_in
        for h in hidden:
            layers.append(StackedLinear(n, d, h))
            if layer_norm:
                layers.append(StackedLayerNorm(n, h))
            layers.append(hidden_act())
            d = h
        layers.append(StackedLinear(n, d, d_out))
        self.net: nn.Sequential = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
