"""OMAD: per-agent diffusion actors, one joint distributional critic, simultaneous actor update.

Reads top to bottom: networks in __init__, then `update()` = critic step, actor step, temperature
step, target update (docs/algorithm.md). The OMAD-Gaussian ablation is this same class with
the diffusion actors swapped for squashed Gaussians (`make_actors`); nothing else changes.

The two losses are pure tensor functions (`critic_loss`, `actor_loss`), compiled with torch.compile
when `cfg.compile` is True (the Trainer resolves `auto`: config.compile_enabled). All randomness is drawn outside them (`self.noise`), so the compiled update
computes the eager one's function, and the update never reads a value back to the host: metrics are
returned as tensors. On a CUDA device a compiled update also runs as CUDA graphs (omad/train/cuda.py:
`step` captured whole, optimizers and target update included), and acting compiles with
mode="reduce-overhead" (torch's own CUDA graphs); `cuda_graphs` overrides that choice.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from omad.train.actors import GaussianActors, StackedActors
from omad.train.algos.common import Algorithm, clip_grad_norm_per_agent, gradient_step, polyak_update
from omad.train.config import OmadConfig, OmadUpdateConfig
from omad.train.critic import CategoricalCritic, project_distribution
from omad.train.cuda import GraphedUpdate
from omad.train.diffusion import DiffusionActors
from omad.train.layout import AgentLayout
from omad.train.replay import ReplaySample, RowLayout


def make_actors(cfg: OmadUpdateConfig, layout: AgentLayout) -> StackedActors:
    sizes = (layout.obs_dims, layout.act_dims, layout.action_low, layout.action_high)
    if isinstance(cfg, OmadConfig):
        return DiffusionActors(
            *sizes,
            hidden=cfg.actor_hidden,
            denoising_steps=cfg.denoising_steps,
            prior_std=cfg.prior_std,
            dt_init=cfg.dt_init,
            time_features=cfg.time_features,
        )
    return GaussianActors(*sizes, hidden=cfg.actor_hidden)  # OMAD-Gaussian


class OMAD(Algorithm):
    cfg: OmadUpdateConfig

    def __init__(
        self,
        cfg: OmadUpdateConfig,
        layout: AgentLayout,
        state_dim: int,
        value_range: tuple[float, float],
        device: torch.device | str = "cpu",
        cuda_graphs: bool | None = None,
    ):
        self.cfg, self.layout, self.device = cfg, layout, torch.device(device)
        if cuda_graphs is None:  # a compiled update on CUDA runs as graphs
            cuda_graphs = cfg.compile is True and self.device.type == "cuda"
        if cuda_graphs and self.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, not {self.device}")
        self.actors = make_actors(cfg, layout)
        self.critic = CategoricalCritic(state_dim + layout.joint_dim, cfg.critic_hidden, cfg.num_atoms, *value_range)
        self.critic_target = CategoricalCritic(
            state_dim + layout.joint_dim, cfg.critic_hidden, cfg.num_atoms, *value_range
        )
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.critic_target.requires_grad_(False)
        for module in self.modules().values():
            module.to(self.device)
        self.log_alpha = torch.tensor(math.log(cfg.alpha_init), device=self.device, requires_grad=cfg.auto_alpha)

        self.actor_opt = torch.optim.Adam(self.actors.parameters(), lr=cfg.lr_actor)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=cfg.lr_critic)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=cfg.lr_alpha)
        act_dims = torch.tensor(layout.act_dims, dtype=torch.float32, device=self.device)
        self.cost_budget = self.joint(act_dims * cfg.temperature_budget_per_dim())
        self.joint_index = torch.as_tensor(layout.joint_index, device=self.device)
        compile_ = torch.compile if cfg.compile is True else (lambda fn: fn)  # `auto`: the Trainer resolves it
        if cuda_graphs and cfg.compile is True:
            self.chain = torch.compile(self.actors, mode="reduce-overhead")
        else:
            self.chain = compile_(self.actors)
        self.critic_loss_fn, self.actor_loss_fn = compile_(self.critic_loss), compile_(self.actor_loss)
        self.graphs: GraphedUpdate | None = None
        if cuda_graphs:
            rows = RowLayout({"state": (state_dim,), "obs": (layout.n, layout.obs_max), "action": (layout.joint_dim,)})
            self.batch_rows = torch.zeros((cfg.batch_size, rows.width), device=self.device)
            self.graphs = GraphedUpdate(self, self.batch_rows, rows)
        self.num_updates = 0

    # -- pieces ---------------------------------------------------------------------------------
    def joint(self, per_agent: torch.Tensor) -> torch.Tensor:
        """Combine per-agent costs [n, ...] into the joint one (config `entropy_norm`)."""
        return per_agent.sum(0) if self.cfg.entropy_norm == "sum" else per_agent.mean(0)

    @property
    def alpha(self) -> torch.Tensor:
        return self.log_alpha.detach().exp()

    def critic_loss(
        self, batch: ReplaySample, next_noise: torch.Tensor, alpha: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy against the C51 target from the next joint action of all current policies,
        summed over heads; and the batch's mean target mass that fell outside the support and was
        clipped to its ends (the `critic_target_clipped` metric)."""
        cfg = self.cfg
        with torch.no_grad():
            nxt = self.actors(batch.next_obs.transpose(0, 1), next_noise)
            next_probs = self.critic_target.logits(batch.next_state, self.joint_action(nxt.action)).softmax(-1)
            if cfg.critic_target_reduce == "mean":
                next_probs = next_probs.mean(0)
            else:  # the head with the lower expected value, per sample
                B = next_probs.shape[1]
                lower = (next_probs * self.critic_target.atoms).sum(-1).argmin(0)
                next_probs = next_probs.gather(0, lower.view(1, B, 1).expand(1, B, next_probs.shape[-1]))[0]
            soft_atoms = self.critic.atoms - alpha * self.joint(nxt.cost).unsqueeze(-1)
            bootstrap = (batch.discount * (1.0 - batch.done)).unsqueeze(-1)
            target_atoms = cfg.reward_scale * batch.reward.unsqueeze(-1) + bootstrap * soft_atoms
            outside = (target_atoms < self.critic.v_min) | (target_atoms > self.critic.v_max)
            clipped = (next_probs * outside).sum(-1).mean()
            target = project_distribution(next_probs, target_atoms, self.critic.v_min, self.critic.v_max, cfg.num_atoms)
        logits = self.critic.logits(batch.state, batch.action)
        return -(target * logits.log_softmax(-1)).sum(-1).mean(-1).sum(), clipped

    def actor_loss(self, state: torch.Tensor, obs: torch.Tensor, noise: torch.Tensor, alpha: torch.Tensor):
        """All agents at once, through their reparameterised chains: (loss, Q per sample, joint cost,
        joint running cost). The critic's weights must have requires_grad off."""
        out = self.actors(obs.transpose(0, 1), noise)
        q = self.critic.q_values(state, self.joint_action(out.action)).mean(0)
        cost = self.joint(out.cost)
        return (-q + alpha * cost).mean(), q, cost, self.joint(out.running_cost)

    # -- the update -----------------------------------------------------------------------------
    def update(self, batch: ReplaySample) -> dict[str, torch.Tensor]:
        """One critic step, and every `policy_delay` updates one actor and temperature step. Returns
        0-d tensors (convert them when logging: reading them here would sync with the device)."""
        actor_step = self.num_updates % self.cfg.policy_delay == 0
        if self.graphs is not None:
            metrics = self.graphs(batch, actor_step)
        else:
            metrics = self.step(batch, self.noise, actor_step)
        self.num_updates += 1
        return metrics

    def step(
        self, batch: ReplaySample, noise: Callable[[int], torch.Tensor], actor_step: bool
    ) -> dict[str, torch.Tensor]:
        """The update's arithmetic, with its noise from `noise(B)` (called once for the critic step, then
        once for the actor step): what the CUDA graphs capture."""
        cfg = self.cfg
        B = batch.obs.shape[0]
        alpha = self.alpha

        critic_loss, clipped = self.critic_loss_fn(batch, noise(B), alpha)
        gradient_step(critic_loss, self.critic_opt, self.critic.parameters(), cfg.grad_clip)
        metrics = {"critic_loss": critic_loss.detach(), "critic_target_clipped": clipped}

        if actor_step:
            self.critic.requires_grad_(False)
            actor_loss, q, cost, running = self.actor_loss_fn(batch.state, batch.obs, noise(B), alpha)
            gradient_step(actor_loss, self.actor_opt, self.actors.parameters(), cfg.grad_clip, clip_grad_norm_per_agent)
            self.critic.requires_grad_(True)
            metrics.update(actor_loss=actor_loss.detach(), q=q.detach().mean(), entropy_bound=-cost.detach().mean())

            if cfg.auto_alpha:
                running = running.detach().mean()
                alpha_loss = -self.log_alpha * (running - self.cost_budget)
                gradient_step(alpha_loss, self.alpha_opt, [], 0.0)
                metrics["running_cost"] = running

        polyak_update(self.critic_target, self.critic, cfg.tau)
        metrics["alpha"] = self.alpha
        return metrics

    # -- persistence ----------------------------------------------------------------------------
    def modules(self) -> dict[str, torch.nn.Module]:
        return {"actors": self.actors, "critic": self.critic, "critic_target": self.critic_target}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"actor_opt": self.actor_opt, "critic_opt": self.critic_opt, "alpha_opt": self.alpha_opt}

    def extra_tensors(self) -> dict[str, torch.Tensor]:
        return {"log_alpha": self.log_alpha}
