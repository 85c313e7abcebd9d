"""The diffusion actor: an Euler-Maruyama chain whose per-sample cost is a one-sample estimate of a lower
bound on the policy's entropy (docs/algorithm.md).

`DiffusionActors` holds every agent's policy as one stack, so a single call evaluates all agents
(padding and bounds: actors.py).

Noise layout, shared by training, ONNX export and serving: `noise[0]` is the prior draw
(x_0 = s0 * noise[0]) and `noise[k + 1]` is the step noise eps_k, all standard normal.
"""

from __future__ import annotations

import itertools
import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from omad.train.actors import ChainOutput, StackedActors
from omad.train.networks import StackedLinear

TIME_HIDDEN = 64


def step_schedule(K: int) -> torch.Tensor:
    """Cosine-shaped step-size multipliers: 1 at the first step, shrinking toward the chain's end."""
    k = torch.arange(K, dtype=torch.float32)
    return 0.5 * (1.0 + torch.cos(math.pi * k / K))


class DiffusionActors(StackedActors):
    kind = "diffusion"
    UNPAD: ClassVar = {"x_in": (None, 1), "obs_in.weight": (1, None), "out.weight": (None, 2), "out.bias": (None, 2)}
    SHARED_BUFFERS = ("time_freq", "schedule")
    time_freq: torch.Tensor
    schedule: torch.Tensor

    def __init__(
        self,
        obs_dims: list[int],
        act_dims: list[int],
        action_low: list[list[float]],
        action_high: list[list[float]],
        hidden: list[int],
        denoising_steps: int,
        prior_std: float,
        time_features: int,
        dt_init: float = 0.1,  # the config's value when training; a loaded policy's step sizes come from its weights
    ):
        super().__init__(obs_dims, act_dims, action_low, action_high)
        n, d_o, d_a = len(obs_dims), max(obs_dims), max(act_dims)
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
        self.hidden_layers = nn.ModuleList(StackedLinear(n, a, b) for a, b in itertools.pairwise(hidden))
        # Near-zero output: the untrained policy is the prior's OU process.
        self.out = StackedLinear(n, hidden[-1], d_a, init_scale=1e-3)
        self.dt_raw = nn.Parameter(torch.full((n, 1, 1), math.log(math.expm1(dt_init))))

        self.register_buffer("schedule", step_schedule(denoising_steps))

    def step_sizes(self) -> torch.Tensor:
        """eta_k for every agent: [n, K]."""
        return F.softplus(self.dt_raw).view(-1, 1) * self.schedule.view(1, -1)

    def conditioning(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The parts of the first layer that do not depend on x: obs [n, B, h0] and time [n, K, h0]."""
        K = self.denoising_steps
        t = torch.arange(K, dtype=obs.dtype, device=obs.device).view(1, K, 1) / K
        angle = t * self.time_freq + self.time_phase
        time_proj = self.time_mlp(torch.cat([torch.sin(angle), torch.cos(angle)], dim=-1))
        return self.obs_in(obs), time_proj

    def drift(self, x: torch.Tensor, k: int, obs_proj: torch.Tensor, time_proj: torch.Tensor) -> torch.Tensor:
        """Step k's drift at x [n, B, d_a_max]: the prior's score -x / s0^2 plus the network's output."""
        h = F.gelu(torch.bmm(x * self.mask, self.x_in) + obs_proj + time_proj[:, k : k + 1])
        for layer in self.hidden_layers:
            h = F.gelu(layer(h))
        return -x / self.prior_std**2 + self.out(h)

    def forward(self, obs: torch.Tensor, noise: torch.Tensor, with_cost: bool = True) -> ChainOutput:
        """obs [n, B, d_o_max], noise [K+1, n, B, d_a_max] -> actions (and per-sample costs)."""
        s0, K, mask = self.prior_std, self.denoising_steps, self.mask
        obs_proj, time_proj = self.conditioning(obs)
        eta = self.step_sizes()

        x = s0 * noise[0]
        running = torch.zeros(obs.shape[:2], dtype=obs.dtype, device=obs.device)
        for k in range(K):
            eta_k = eta[:, k].view(-1, 1, 1)
            x_next = x + eta_k * self.drift(x, k, obs_proj, time_proj) + torch.sqrt(2.0 * eta_k) * noise[k + 1]
            if with_cost:
                # log pi(x_{k+1}|x_k) - log q(x_k|x_{k+1}); the Gaussians' normalisers cancel.
                back = x - x_next * (1.0 - eta_k / s0**2)
                running = running + ((-0.5 * noise[k + 1] ** 2 + back**2 / (4.0 * eta_k)) * mask).sum(-1)
            x = x_next

        action, log_jac = self.squash(x)
        if not with_cost:
            return ChainOutput(action, None, None)
        running = running - log_jac
        log_prior = (-0.5 * noise[0] ** 2 * mask).sum(-1) - 0.5 * self.act_dim_t * math.log(2 * math.pi * s0**2)
        return ChainOutput(action, log_prior + running, running)

    def agent_hparams(self, i: int) -> dict:
        return dict(
            **self.base_hparams(i),
            hidden=self.hidden,
            denoising_steps=self.denoising_steps,
            prior_std=self.prior_std,
            time_features=self.time_features,
        )
