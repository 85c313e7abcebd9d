"""OMAD: per-agent diffusion actors, one joint distributional critic, simultaneous actor update.

Reads top to bottom: networks in __init__, then `update()` = critic step, actor step, temperature
step, target update (ALGORITHM.md sections 2-5). The OMAD-Gaussian ablation is this same class with
the diffusion actors swapped for squashed Gaussians (`make_actors`); nothing else changes.
"""

from __future__ import annotations

import math

import torch

from omad_train.actors import GaussianActors, StackedActors
from omad_train.algos.common import Algorithm, clip_grad_norm_per_agent, gradient_step, polyak_update
from omad_train.config import TrainConfig
from omad_train.critic import CategoricalCritic, project_distribution
from omad_train.diffusion import DiffusionActors
from omad_train.layout import AgentLayout


def make_actors(cfg: TrainConfig, layout: AgentLayout) -> StackedActors:
    sizes = (layout.obs_dims, layout.act_dims, layout.action_low, layout.action_high)
    if cfg.algo == "omad-gaussian":
        return GaussianActors(*sizes, hidden=cfg.actor_hidden)
    return DiffusionActors(
        *sizes, hidden=cfg.actor_hidden, denoising_steps=cfg.denoising_steps, prior_std=cfg.prior_std,
        dt_init=cfg.dt_init, time_features=cfg.time_features,
    )


class OMAD(Algorithm):
    def __init__(self, cfg: TrainConfig, layout: AgentLayout, state_dim: int, value_range: tuple[float, float]):
        self.cfg, self.layout = cfg, layout
        self.actors = make_actors(cfg, layout)
        self.critic = CategoricalCritic(state_dim + layout.joint_dim, cfg.critic_hidden, cfg.num_atoms, *value_range)
        self.critic_target = CategoricalCritic(state_dim + layout.joint_dim, cfg.critic_hidden, cfg.num_atoms, *value_range)
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.critic_target.requires_grad_(False)
        self.log_alpha = torch.tensor(math.log(cfg.alpha_init), requires_grad=cfg.auto_alpha)

        self.actor_opt = torch.optim.Adam(self.actors.parameters(), lr=cfg.lr_actor)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=cfg.lr_critic)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=cfg.lr_alpha)
        self.cost_budget = self.joint(torch.tensor(layout.act_dims, dtype=torch.float32) * cfg.cost_budget_per_dim)
        self.chain = torch.compile(self.actors) if cfg.compile else self.actors
        self.num_updates = 0

    # -- pieces ---------------------------------------------------------------------------------
    def joint(self, per_agent: torch.Tensor) -> torch.Tensor:
        """Combine per-agent costs [n, ...] into the joint one (config `entropy_norm`)."""
        return per_agent.sum(0) if self.cfg.entropy_norm == "sum" else per_agent.mean(0)

    @property
    def alpha(self) -> torch.Tensor:
        return self.log_alpha.detach().exp()

    # -- the update -----------------------------------------------------------------------------
    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        cfg = self.cfg
        obs, next_obs = batch["obs"].transpose(0, 1), batch["next_obs"].transpose(0, 1)
        B = obs.shape[1]
        alpha = self.alpha

        # Critic: C51 target from the next joint action of all current policies.
        with torch.no_grad():
            nxt = self.chain(next_obs, self.noise(B))
            next_probs = self.critic_target.logits(batch["next_state"], self.layout.joint(nxt.action)).softmax(-1)
            if cfg.critic_target_reduce == "mean":
                next_probs = next_probs.mean(0)
            else:  # the head with the lower expected value, per sample
                lower = (next_probs * self.critic_target.atoms).sum(-1).argmin(0)
                next_probs = next_probs.gather(0, lower.view(1, B, 1).expand(1, B, next_probs.shape[-1]))[0]
            soft_atoms = self.critic.atoms - alpha * self.joint(nxt.cost).unsqueeze(-1)
            bootstrap = (batch["discount"] * (1.0 - batch["done"])).unsqueeze(-1)
            target_atoms = cfg.reward_scale * batch["reward"].unsqueeze(-1) + bootstrap * soft_atoms
            target = project_distribution(next_probs, target_atoms, self.critic.v_min, self.critic.v_max, cfg.num_atoms)
        logits = self.critic.logits(batch["state"], batch["action"])
        critic_loss = -(target * logits.log_softmax(-1)).sum(-1).mean(-1).sum()  # summed over heads
        gradient_step(critic_loss, self.critic_opt, self.critic.parameters(), cfg.grad_clip)
        metrics = {"critic_loss": critic_loss.item()}

        # Actors: all agents at once, through their reparameterised chains.
        if self.num_updates % cfg.policy_delay == 0:
            out = self.chain(obs, self.noise(B))
            self.critic.requires_grad_(False)
            q = self.critic.q_values(batch["state"], self.layout.joint(out.action)).mean(0)
            self.critic.requires_grad_(True)
            cost = self.joint(out.cost)
            actor_loss = (-q + alpha * cost).mean()
            gradient_step(actor_loss, self.actor_opt, self.actors.parameters(), cfg.grad_clip, clip_grad_norm_per_agent)
            metrics.update(actor_loss=actor_loss.item(), q=q.mean().item(), entropy_bound=-cost.mean().item())

            if cfg.auto_alpha:
                running = self.joint(out.running_cost).mean().detach()
                alpha_loss = -self.log_alpha * (running - self.cost_budget)
                gradient_step(alpha_loss, self.alpha_opt, [], 0.0)
                metrics["running_cost"] = running.item()

        polyak_update(self.critic_target, self.critic, cfg.tau)
        self.num_updates += 1
        metrics["alpha"] = self.alpha.item()
        return metrics

    # -- persistence ----------------------------------------------------------------------------
    def modules(self) -> dict[str, torch.nn.Module]:
        return {"actors": self.actors, "critic": self.critic, "critic_target": self.critic_target}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"actor_opt": self.actor_opt, "critic_opt": self.critic_opt, "alpha_opt": self.alpha_opt}

    def extra_tensors(self) -> dict[str, torch.Tensor]:
        return {"log_alpha": self.log_alpha}
