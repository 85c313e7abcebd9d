"""The joint categorical (C51) critic over (global state, joint action), with two heads."""

from __future__ import annotations

import torch
from torch import nn

from omad.train.networks import StackedLinear, StackedMLP


class CategoricalCritic(nn.Module):
    def __init__(self, d_in: int, hidden: list[int], num_atoms: int, v_min: float, v_max: float, heads: int = 2):
        super().__init__()
        self.heads = heads
        self.net = StackedMLP(heads, d_in, hidden, num_atoms, layer_norm=True)
        self.atoms: torch.Tensor
        self.register_buffer("atoms", torch.linspace(v_min, v_max, num_atoms))
        self.v_min, self.v_max = v_min, v_max
        self.start_near_zero()

    @torch.no_grad()
    def start_near_zero(self) -> None:
        """Initial prediction: a narrow distribution around 0 (Q = 0), like a scalar critic's start.
        Near-uniform initial logits would mean a return spread over all of [V_min, V_max]; with
        target networks that spread shrinks only by gamma per target turnover (about 1/tau updates),
        so it takes on the order of 1e5 updates to forget, and until then Q is a small deviation
        of a near-uniform distribution (docs/algorithm.md, "Why the critic starts near 0")."""
        out = self.net.net[-1]
        assert isinstance(out, StackedLinear)
        delta = (self.v_max - self.v_min) / (len(self.atoms) - 1)
        center = min(max(0.0, self.v_min), self.v_max)
        out.weight.mul_(0.1)
        out.bias.copy_((-0.5 * ((self.atoms - center) / (2.0 * delta)) ** 2).view(1, 1, -1).expand_as(out.bias))

    def logits(self, state: torch.Tensor, joint_action: torch.Tensor) -> torch.Tensor:
        """[heads, B, M]"""
        x = torch.cat([state, joint_action], dim=-1)
        return self.net(x.unsqueeze(0).expand(self.heads, -1, -1))

    def q_values(self, state: torch.Tensor, joint_action: torch.Tensor) -> torch.Tensor:
        """Expected value per head: [heads, B]."""
        return (self.logits(state, joint_action).softmax(-1) * self.atoms).sum(-1)


class TwinQCritic(nn.Module):
    """Two scalar Q heads over (global state, joint action), as in HASAC/HATD3: [2, B]."""

    def __init__(self, d_in: int, hidden: list[int]):
        super().__init__()
        self.net = StackedMLP(2, d_in, hidden, 1, hidden_act=nn.ReLU)

    def forward(self, state: torch.Tensor, joint_action: torch.Tensor) -> torch.Tensor:
        x = torch.cat([state, joint_action], dim=-1)
        return self.net(x.unsqueeze(0).expand(2, -1, -1)).squeeze(-1)


def project_distribution(
    probs: torch.Tensor, target_atoms: torch.Tensor, v_min: float, v_max: float, num_atoms: int
) -> torch.Tensor:
    """C51 projection of a distribution with mass `probs[b, j]` at `target_atoms[b, j]` onto the
    fixed support linspace(v_min, v_max, num_atoms). Targets are clipped to the support first."""
    delta = (v_max - v_min) / (num_atoms - 1)
    pos = (target_atoms.clamp(v_min, v_max) - v_min) / delta
    lower = pos.floor().clamp(0, num_atoms - 1)
    upper = (lower + 1).clamp(max=num_atoms - 1)
    upper_weight = pos - lower  # 0 when the target sits exactly on an atom
    out = torch.zeros_like(probs)
    out.scatter_add_(-1, lower.long(), probs * (1.0 - upper_weight))
    out.scatter_add_(-1, upper.long(), probs * upper_weight)
    return out
