"""The diffusion actor: an Euler-Maruyama chain with a per-sample entropy lower bound (ALGORITHM.md s1).

`DiffusionActors` holds every agent's policy as one stack, so a single call evaluates all agents.
Agents with smaller observation/action sizes are zero-padded up to the largest; padded action
dimensions are masked out of the score network's input and of every log-density term, so a stack
computes exactly what separate per-agent networks would.

Noise layout, shared by training, ONNX export and serving: `noise[0]` is the prior draw
(x_0 = s0 * noise[0]) and `noise[k + 1]` is the step noise eps_k, all standard normal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .networks import StackedLinear

TIME_HIDDEN = 64
LOG2 = math.log(2.0)


def step_schedule(K: int) -> torch.Tensor:
    """Cosine-shaped step-size multipliers: 1 at the first step, shrinking toward the chain's end."""
    k = torch.arange(K, dtype=torch.float32)
    return 0.5 * (1.0 + torch.cos(math.pi * k / K))


@dataclass
class ChainOutput:
    action: torch.Tensor  # [n, B, d_a_max], inside the action bounds
    cost: torch.Tensor | None  # [n, B]  c = -l, the negated entropy lower bound
    running_cost: torch.Tensor | None  # [n, B]  c without the prior term (the alpha constraint)


class DiffusionActors(nn.Module):
    def __init__(
        self,
        obs_dims: list[int],
        act_dims: list[int],
        action_low: list[list[float]],
        action_high: list[list[float]],
        hidden: list[int],
        denoising_steps: int,
        prior_std: float = 2.5,
        dt_init: float = 0.1,
        time_features: int = 16,
    ):
        super().__init__()
        n, d_o, d_a = len(obs_dims), max(obs_dims), max(act_dims)
        self.obs_dims, self.act_dims = list(obs_dims), list(act_dims)
        self.denoising_steps, self.prior_std = denoising_steps, prior_std
        self.hidden, self.time_features = list(hidden), time_features

        # First layer on [x, o, t] split in three, so the obs and time parts are computed once per
        # chain instead of once per denoising step.
        h0 = hidden[0]
        self.x_in = nn.Parameter(StackedLinear(n, d_a, h0).weight.detach())
        self.obs_in = StackedLinear(n, d_o, h0)
        self.register_buffer("time_freq", torch.linspace(1.0, 30.0, time_features))
        self.time_phase = nn.Parameter(torch.zeros(n, 1, time_features))
        self.time_mlp = nn.Sequential(
            StackedLinear(n, 2 * time_features, TIME_HIDDEN), nn.GELU(), StackedLinear(n, TIME_HIDDEN, h0)
        )
        self.hidden_layers = nn.ModuleList(StackedLinear(n, a, b) for a, b in zip(hidden[:-1], hidden[1:]))
        # Near-zero output: the untrained policy is the prior's OU process.
        self.out = StackedLinear(n, hidden[-1], d_a, init_scale=1e-3)
        self.dt_raw = nn.Parameter(torch.full((n, 1, 1), math.log(math.expm1(dt_init))))

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
        self.register_buffer("schedule", step_schedule(denoising_steps))

    @property
    def num_agents(self) -> int:
        return len(self.obs_dims)

    def step_sizes(self) -> torch.Tensor:
        """eta_k for every agent: [n, K]."""
        return F.softplus(self.dt_raw).view(-1, 1) * self.schedule.view(1, -1)

    def forward(self, obs: torch.Tensor, noise: torch.Tensor, with_cost: bool = True) -> ChainOutput:
        """obs [n, B, d_o_max], noise [K+1, n, B, d_a_max] -> actions (and per-sample costs)."""
        s0, K, mask = self.prior_std, self.denoising_steps, self.mask
        t = torch.arange(K, dtype=obs.dtype, device=obs.device).view(1, K, 1) / K
        angle = t * self.time_freq + self.time_phase
        time_proj = self.time_mlp(torch.cat([torch.sin(angle), torch.cos(angle)], dim=-1))  # [n, K, h0]
        obs_proj = self.obs_in(obs)  # [n, B, h0]
        eta = self.step_sizes()

        x = s0 * noise[0]
        running = torch.zeros(obs.shape[:2], dtype=obs.dtype, device=obs.device)
        for k in range(K):
            eta_k = eta[:, k].view(-1, 1, 1)
            h = F.gelu(torch.bmm(x * mask, self.x_in) + obs_proj + time_proj[:, k : k + 1])
            for layer in self.hidden_layers:
                h = F.gelu(layer(h))
            drift = -x / s0**2 + self.out(h)
            x_next = x + eta_k * drift + torch.sqrt(2.0 * eta_k) * noise[k + 1]
            if with_cost:
                # log pi(x_{k+1}|x_k) - log q(x_k|x_{k+1}); the Gaussians' normalisers cancel.
                back = x - x_next * (1.0 - eta_k / s0**2)
                running = running + ((-0.5 * noise[k + 1] ** 2 + back**2 / (4.0 * eta_k)) * mask).sum(-1)
            x = x_next

        half_range = (self.action_high - self.action_low) / 2.0
        action = self.action_low + (torch.tanh(x) + 1.0) * half_range
        if not with_cost:
            return ChainOutput(action, None, None)
        log_jac = ((torch.log(half_range) + 2.0 * (LOG2 - x - F.softplus(-2.0 * x))) * mask).sum(-1)
        running = running - log_jac
        log_prior = (-0.5 * noise[0] ** 2 * mask).sum(-1) - 0.5 * self.act_dim_t * math.log(2 * math.pi * s0**2)
        return ChainOutput(action, log_prior + running, running)

    def agent_state_dict(self, i: int) -> dict[str, torch.Tensor]:
        """Agent i's weights, unpadded: loadable into a one-agent `DiffusionActors`."""
        d_o, d_a = self.obs_dims[i], self.act_dims[i]
        unpadded = {
            "x_in": lambda v: v[:, :d_a],
            "obs_in.weight": lambda v: v[:, :d_o],
            "out.weight": lambda v: v[:, :, :d_a],
            "out.bias": lambda v: v[:, :, :d_a],
            "mask": lambda v: v[:, :, :d_a],
            "action_low": lambda v: v[:, :, :d_a],
            "action_high": lambda v: v[:, :, :d_a],
        }
        state = {}
        for key, value in self.state_dict().items():
            value = value[i : i + 1] if key not in ("time_freq", "schedule") else value
            state[key] = unpadded.get(key, lambda v: v)(value).clone().contiguous()
        return state

    def agent_hparams(self, i: int) -> dict:
        return dict(
            obs_dims=[self.obs_dims[i]],
            act_dims=[self.act_dims[i]],
            action_low=[self.action_low[i, 0, : self.act_dims[i]].tolist()],
            action_high=[self.action_high[i, 0, : self.act_dims[i]].tolist()],
            hidden=self.hidden,
            denoising_steps=self.denoising_steps,
            prior_std=self.prior_std,
            time_features=self.time_features,
        )


class AgentPolicy(nn.Module):
    """One agent's deployable policy: `action = pi(obs[B, d_o], noise[K+1, B, d_a])`, deterministic.

    The same chain as training (a one-agent stack), so what is exported is what was trained.
    """

    kind = "diffusion"

    def __init__(self, name: str, hparams: dict):
        super().__init__()
        if len(hparams["obs_dims"]) != 1:
            raise ValueError("AgentPolicy wraps a one-agent stack")
        self.name, self.hparams = name, dict(hparams)
        with torch.random.fork_rng(devices=[]):  # built to be loaded: don't disturb the caller's RNG stream
            self.actors = actors = DiffusionActors(**hparams)
        self.obs_dim, self.act_dim = actors.obs_dims[0], actors.act_dims[0]
        self.denoising_steps = actors.denoising_steps
        self.action_low = actors.action_low[0, 0].tolist()
        self.action_high = actors.action_high[0, 0].tolist()

    @property
    def noise_shape_prefix(self) -> int:
        return self.denoising_steps + 1

    def forward(self, obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.actors(obs.unsqueeze(0), noise.unsqueeze(1), with_cost=False).action[0]

    def sample_with_bound(self, obs: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.actors(obs.unsqueeze(0), noise.unsqueeze(1))
        return out.action[0], -out.cost[0]
