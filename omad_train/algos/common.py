"""Small update helpers shared by every algorithm."""

from __future__ import annotations

from typing import Iterable

import torch


@torch.no_grad()
def polyak_update(target: torch.nn.Module, source: torch.nn.Module, tau: float) -> None:
    for t, s in zip(target.parameters(), source.parameters()):
        t.lerp_(s, tau)


@torch.no_grad()
def clip_grad_norm_per_agent(params: Iterable[torch.Tensor], max_norm: float) -> None:
    """Clip each agent's gradient norm separately. Stacked parameters have the agent on axis 0,
    so this is exactly what per-agent clipping of separate networks would do."""
    grads = [p.grad for p in params if p.grad is not None]
    sq = sum(g.pow(2).reshape(g.shape[0], -1).sum(1) for g in grads)
    scale = (max_norm / (sq.sqrt() + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale.view(-1, *([1] * (g.dim() - 1))))
