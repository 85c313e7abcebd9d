"""What every algorithm shares: acting, noise, cutting out a deployable agent policy, and small
update helpers."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable

import numpy as np
import torch

from omad.train.actors import Actors, ChainOutput
from omad.train.config import TrainConfigBase
from omad.train.layout import AgentLayout
from omad.train.policies import AgentPolicy
from omad.train.replay import ReplaySample


class Algorithm(ABC):
    """Base of every algorithm: the members the trainer, checkpoints and export rely on. Networks,
    optimizer state and `update` live on `device`; `act` takes and returns numpy arrays."""

    cfg: TrainConfigBase  # each algorithm narrows it to its own config model
    layout: AgentLayout
    actors: Actors  # one stack, or per-agent stacks with the same call
    chain: Callable[..., ChainOutput]  # what acting calls: `actors`, or a compiled copy of it
    num_updates: int
    joint_index: torch.Tensor  # `layout.joint`'s column order, on the device
    device = torch.device("cpu")
    # A captured update's static batch (omad/train/cuda.py): the trainer's sampler writes each batch there
    batch_rows: torch.Tensor | None = None

    @abstractmethod
    def update(self, batch: ReplaySample) -> dict[str, torch.Tensor]:
        """One gradient update from a replay sample; returns 0-d tensor metrics, read only when logged."""

    @abstractmethod
    def modules(self) -> dict[str, torch.nn.Module]:
        """Every network whose weights a checkpoint holds, by name."""

    @abstractmethod
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Every optimizer whose state a checkpoint holds, by name."""

    def extra_tensors(self) -> dict[str, torch.Tensor]:
        """Loose tensors a checkpoint holds besides modules (e.g. log alpha)."""
        return {}

    def noise_shape(self, batch: int) -> tuple[int, int, int, int]:
        return (self.actors.noise_steps, self.layout.n, batch, self.layout.act_max)

    def noise(self, batch: int) -> torch.Tensor:
        """Standard-normal policy noise [S, n, batch, d_a_max]: every random draw of the policies."""
        return torch.randn(self.noise_shape(batch), device=self.device)

    def joint_action(self, actions: torch.Tensor) -> torch.Tensor:
        """[n, B, d_a_max] -> [B, sum d_a]: `layout.joint`, with the index (`joint_index`) on the device."""
        return actions.transpose(0, 1).reshape(actions.shape[1], -1).index_select(-1, self.joint_index)

    @torch.no_grad()
    def act(self, obs: np.ndarray, zero_noise: bool = False) -> np.ndarray:
        """obs [n, B, d_o_max] -> actions [n, B, d_a_max] sampled from the current policies."""
        noise = self.noise(obs.shape[1])
        if zero_noise:
            noise.zero_()
        return self.chain(torch.from_numpy(obs).to(self.device), noise, with_cost=False).action.cpu().numpy()

    def agent_policy(self, i: int) -> AgentPolicy:
        policy = AgentPolicy(self.layout.names[i], self.actors.agent_hparams(i), self.actors.kind)
        policy.actors.load_state_dict(self.actors.agent_state_dict(i))
        return policy


def gradient_step(loss: torch.Tensor, opt: torch.optim.Optimizer, params, max_norm: float, clip=None) -> None:
    """zero_grad, backward, clip the gradient norm (0 = off; `clip` defaults to one global norm), step."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if max_norm > 0:
        (clip or torch.nn.utils.clip_grad_norm_)(list(params), max_norm)
    opt.step()


def polyak_update(target: torch.nn.Module, source: torch.nn.Module, tau: float) -> None:
    # no_grad as a block, not a decorator: mutmut (bench/mutation.py) skips decorated functions
    with torch.no_grad():
        torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), tau)


def clip_grad_norm_per_agent(params: Iterable[torch.Tensor], max_norm: float) -> None:
    """Clip each agent's gradient norm separately. Stacked parameters have the agent on axis 0,
    so this is exactly what per-agent clipping of separate networks would do."""
    with torch.no_grad():
        grads = [p.grad for p in params if p.grad is not None]
        sq = torch.stack([g.pow(2).reshape(g.shape[0], -1).sum(1) for g in grads]).sum(0)
        scale = (max_norm / (sq.sqrt() + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(scale.view(-1, *([1] * (g.dim() - 1))))
