"""Actor stacks shared by every algorithm: what a policy is, how it maps into the action bounds and
how one agent is cut out of a stack (the deployable per-agent policy is `policies.AgentPolicy`).

Every actor kind has the same call: `forward(obs [n, B, d_o_max], noise [S, n, B, d_a_max], with_cost)`
returns a `ChainOutput`. All randomness enters through `noise` (S = K + 1 standard-normal slices;
K = 0 for the one-shot Gaussian and deterministic actors), so a policy is a deterministic function of
its inputs, which is what ONNX export and serving compute.

Agents with smaller observation/action sizes are zero-padded up to the largest; padded dimensions
are masked out of every network input and every log-density, so a stack computes exactly what
separate per-agent networks would. `UNPAD` names, per kind, which weights carry padded axes.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from omad.train.networks import StackedLinear, StackedMLP

LOG2 = math.log(2.0)
LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0  # HARL's squashed Gaussian (a hard clamp)


@dataclass
class ChainOutput:
    action: torch.Tensor  # [n, B, d_a_max], inside the action bounds
    cost: torch.Tensor | None  # [n, B]  c = -(entropy estimate or bound) per sample
    running_cost: torch.Tensor | None  # [n, B]  the part of c the temperature constrains


class Actors(nn.Module, ABC):
    """What the algorithms call, whether all agents sit in one stack (`StackedActors`) or each in
    its own (`PerAgentActors`): `forward(obs [n, B, d_o_max], noise [S, n, B, d_a_max], with_cost)`,
    plus what cutting out one agent's deployable policy needs."""

    kind: str
    denoising_steps: int
    obs_dims: list[int]
    act_dims: list[int]

    @property
    def num_agents(self) -> int:
        return len(self.obs_dims)

    @property
    def noise_steps(self) -> int:
        """S: the noise tensor's first axis (K + 1)."""
        return self.denoising_steps + 1

    @abstractmethod
    def forward(self, obs: torch.Tensor, noise: torch.Tensor, with_cost: bool = True) -> ChainOutput: ...

    @abstractmethod
    def agent_hparams(self, i: int) -> dict:
        """Constructor arguments of a one-agent stack of the same kind holding agent i."""

    @abstractmethod
    def agent_state_dict(self, i: int) -> dict[str, torch.Tensor]:
        """Agent i's weights, loadable into the one-agent stack built from `agent_hparams(i)`."""


class StackedActors(Actors):
    """Base of every actor kind: the agents' sizes, bounds and padding masks."""

    # state-dict key -> (axis holding padded obs dims, axis holding padded action dims); None = no padding
    UNPAD: ClassVar[dict[str, tuple[int | None, int | None]]] = {}
    SHARED_BUFFERS: ClassVar[tuple[str, ...]] = ()  # buffers without an agent axis
    mask: torch.Tensor  # [n, 1, d_a_max]: 1 on each agent's real action dims
    action_low: torch.Tensor  # [n, 1, d_a_max]
    action_high: torch.Tensor
    act_dim_t: torch.Tensor  # [n, 1]

    def __init__(
        self, obs_dims: list[int], act_dims: list[int], action_low: list[list[float]], action_high: list[list[float]]
    ):
        super().__init__()
        n, d_a = len(obs_dims), max(act_dims)
        self.obs_dims, self.act_dims = list(obs_dims), list(act_dims)
        mask = torch.zeros(n, 1, d_a)
        low, high = -torch.ones(n, 1, d_a), torch.ones(n, 1, d_a)
        for i, dim in enumerate(act_dims):
            mask[i, 0, :dim] = 1.0
            low[i, 0, :dim] = torch.tensor(action_low[i], dtype=torch.float32)
            high[i, 0, :dim] = torch.tensor(action_high[i], dtype=torch.float32)
        self.register_buffer("mask", mask)
        self.register_buffer("action_low", low)
        self.register_buffer("action_high", high)
        self.register_buffer("act_dim_t", torch.tensor(act_dims, dtype=torch.float32).view(n, 1))

    def to_bounds(self, y: torch.Tensor) -> torch.Tensor:
        """[-1, 1] -> [low, high]."""
        return self.action_low + (y + 1.0) * (self.action_high - self.action_low) / 2.0

    def squash(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """a = low + (tanh(x) + 1) (high - low) / 2, and log|d tanh(x)/dx| summed over real dims: [n, B].
        Entropies, costs and budgets live in the squashed space [-1, 1]^d (docs/algorithm.md; as in
        DIME, HARL and SB3): the affine map's constant log((high - low) / 2) per dim is not counted, so
        every target means the same on MPE's [0, 1] as on MuJoCo's [-1, 1]."""
        log_jac = (2.0 * (LOG2 - x - F.softplus(-2.0 * x)) * self.mask).sum(-1)
        return self.to_bounds(torch.tanh(x)), log_jac

    def base_hparams(self, i: int) -> dict:
        return dict(
            obs_dims=[self.obs_dims[i]],
            act_dims=[self.act_dims[i]],
            action_low=[self.action_low[i, 0, : self.act_dims[i]].tolist()],
            action_high=[self.action_high[i, 0, : self.act_dims[i]].tolist()],
        )

    def agent_state_dict(self, i: int) -> dict[str, torch.Tensor]:
        unpad = {**self.UNPAD, "mask": (None, 2), "action_low": (None, 2), "action_high": (None, 2)}
        state = {}
        for key, value in self.state_dict().items():
            if key in self.SHARED_BUFFERS:
                state[key] = value.clone()
                continue
            value = value[i : i + 1]
            obs_axis, act_axis = unpad.get(key, (None, None))
            if obs_axis is not None:
                value = value.narrow(obs_axis, 0, self.obs_dims[i])
            if act_axis is not None:
                value = value.narrow(act_axis, 0, self.act_dims[i])
            state[key] = value.clone().contiguous()
        return state


class GaussianActors(StackedActors):
    """Squashed-Gaussian actors (HASAC, OMAD-Gaussian): u = mu(o) + sigma(o) * noise[0], a = squash(u).
    cost = log pi(a|o) in the squashed space, exact (change of variables), so -cost is a one-sample
    entropy estimate. HARL's network: ReLU hidden layers, tanh on the last one, linear mu and log-std
    heads, log-std clamped to [-20, 2]; zero noise gives the deterministic policy tanh(mu)."""

    kind = "gaussian"
    denoising_steps = 0
    UNPAD: ClassVar = {
        "net.net.0.weight": (1, None),
        "mu.weight": (None, 2),
        "mu.bias": (None, 2),
        "log_std.weight": (None, 2),
        "log_std.bias": (None, 2),
    }

    def __init__(self, obs_dims, act_dims, action_low, action_high, hidden: list[int]):
        super().__init__(obs_dims, act_dims, action_low, action_high)
        n, d_o, d_a = len(obs_dims), max(obs_dims), max(act_dims)
        self.hidden = list(hidden)
        self.net = StackedMLP(n, d_o, hidden[:-1], hidden[-1], hidden_act=nn.ReLU)
        self.mu = StackedLinear(n, hidden[-1], d_a)
        self.log_std = StackedLinear(n, hidden[-1], d_a)

    def forward(self, obs: torch.Tensor, noise: torch.Tensor, with_cost: bool = True) -> ChainOutput:
        h = torch.tanh(self.net(obs))
        mu = self.mu(h)
        log_std = self.log_std(h).clamp(LOG_STD_MIN, LOG_STD_MAX)
        u = mu + log_std.exp() * noise[0]
        action, log_jac = self.squash(u)
        if not with_cost:
            return ChainOutput(action, None, None)
        log_gauss = ((-0.5 * noise[0] ** 2 - log_std) * self.mask).sum(-1) - 0.5 * self.act_dim_t * math.log(
            2 * math.pi
        )
        cost = log_gauss - log_jac
        return ChainOutput(action, cost, cost)

    def agent_hparams(self, i: int) -> dict:
        return {**self.base_hparams(i), "hidden": self.hidden}


class DeterministicActors(StackedActors):
    """Deterministic actors (HATD3): a = bounds(clip(tanh(mu(o)) + explore_std * noise[0], -1, 1)).
    Zero noise gives the deterministic policy; standard-normal noise gives TD3's exploration."""

    kind = "deterministic"
    denoising_steps = 0
    UNPAD: ClassVar = {"net.net.0.weight": (1, None), "mu.weight": (None, 2), "mu.bias": (None, 2)}

    def __init__(self, obs_dims, act_dims, action_low, action_high, hidden: list[int], explore_std: float = 0.1):
        super().__init__(obs_dims, act_dims, action_low, action_high)
        n, d_o, d_a = len(obs_dims), max(obs_dims), max(act_dims)
        self.hidden, self.explore_std = list(hidden), explore_std
        self.net = StackedMLP(n, d_o, hidden[:-1], hidden[-1], hidden_act=nn.ReLU)
        self.mu = StackedLinear(n, hidden[-1], d_a)

    def mean(self, obs: torch.Tensor) -> torch.Tensor:
        """The deterministic action in [-1, 1] (before the map to the bounds): [n, B, d_a_max]."""
        return torch.tanh(self.mu(F.relu(self.net(obs))))

    def forward(
        self, obs: torch.Tensor, noise: torch.Tensor, with_cost: bool = False, noise_std: float | None = None
    ) -> ChainOutput:
        """`noise_std` overrides the exploration std (HATD3's target smoothing passes ready-made noise)."""
        std = self.explore_std if noise_std is None else noise_std
        y = (self.mean(obs) + std * noise[0]).clamp(-1.0, 1.0)
        return ChainOutput(self.to_bounds(y), None, None)

    def agent_hparams(self, i: int) -> dict:
        return {**self.base_hparams(i), "hidden": self.hidden, "explore_std": self.explore_std}


class PerAgentActors(Actors):
    """Separate one-agent stacks called in a loop, with the stacked call signature. Used where agents
    are updated one at a time (HASAC, HATD3: one optimizer per agent) and as the looped reference
    that stacking is measured against."""

    singles: list[StackedActors]  # an nn.ModuleList at run time

    def __init__(self, singles: list[StackedActors]):
        super().__init__()
        self.singles = nn.ModuleList(singles)  # type: ignore[assignment]
        self.kind = singles[0].kind
        self.denoising_steps = singles[0].denoising_steps
        self.obs_dims = [s.obs_dims[0] for s in singles]
        self.act_dims = [s.act_dims[0] for s in singles]

    @classmethod
    def split(cls, stacked: StackedActors) -> PerAgentActors:
        singles = []
        for i in range(stacked.num_agents):
            single = type(stacked)(**stacked.agent_hparams(i))
            single.load_state_dict(stacked.agent_state_dict(i))
            singles.append(single)
        return cls(singles)

    def agent(self, i: int, obs: torch.Tensor, noise: torch.Tensor, with_cost: bool = True, **kwargs) -> ChainOutput:
        """Agent i alone, from the padded stack layout: outputs [1, B, d_a_i]."""
        return self.singles[i](
            obs[i : i + 1, :, : self.obs_dims[i]], noise[:, i : i + 1, :, : self.act_dims[i]], with_cost, **kwargs
        )

    def forward(self, obs: torch.Tensor, noise: torch.Tensor, with_cost: bool = True, **kwargs) -> ChainOutput:
        outs = [self.agent(i, obs, noise, with_cost, **kwargs) for i in range(self.num_agents)]
        action = torch.cat([self.pad(o.action) for o in outs])
        if outs[0].cost is None:
            return ChainOutput(action, None, None)
        costs = [o.cost for o in outs if o.cost is not None]
        running = [o.running_cost for o in outs if o.running_cost is not None]
        return ChainOutput(action, torch.cat(costs), torch.cat(running))

    def pad(self, action: torch.Tensor) -> torch.Tensor:
        """One agent's [.., d_a_i] action zero-padded to the stack's d_a_max."""
        return F.pad(action, (0, max(self.act_dims) - action.shape[-1]))

    def agent_hparams(self, i: int) -> dict:
        return self.singles[i].agent_hparams(0)

    def agent_state_dict(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.singles[i].state_dict().items()}
