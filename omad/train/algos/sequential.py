"""The heterogeneous-agent baselines HASAC and HATD3 (docs/guides/baselines.md).

Both have per-agent actors with one optimizer each, a twin scalar Q critic on (global state, joint
action) with a target copy, and a *sequential* actor update: agents are updated one at a time in a
fresh random order, and agent m's loss sees the already-updated actions of the agents before it.
They differ only in the actor (squashed Gaussian vs deterministic), the critic target, the actor
loss and the temperature; those four pieces are the methods each subclass defines.
"""

from __future__ import annotations

import copy
import math
from abc import abstractmethod

import torch

from omad.train.actors import ChainOutput, DeterministicActors, GaussianActors, PerAgentActors, StackedActors
from omad.train.algos.common import Algorithm, gradient_step, polyak_update
from omad.train.config import HasacConfig, Hatd3Config
from omad.train.critic import TwinQCritic
from omad.train.layout import AgentLayout
from omad.train.replay import ReplaySample


class SequentialAlgorithm(Algorithm):
    cfg: HasacConfig | Hatd3Config
    actors: PerAgentActors

    def __init__(
        self, cfg: HasacConfig | Hatd3Config, layout: AgentLayout, state_dim: int, device: torch.device | str = "cpu"
    ):
        self.cfg, self.layout, self.device = cfg, layout, torch.device(device)
        self.actors = self.chain = PerAgentActors([self.make_actor(i) for i in range(layout.n)]).to(self.device)
        self.critic = TwinQCritic(state_dim + layout.joint_dim, cfg.critic_hidden).to(self.device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.joint_index = torch.as_tensor(layout.joint_index, device=self.device)
        self.actor_opts = [torch.optim.Adam(a.parameters(), lr=cfg.lr_actor) for a in self.actors.singles]
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=cfg.lr_critic)
        self.num_updates = 0

    @abstractmethod
    def make_actor(self, i: int) -> StackedActors: ...

    def agent_actor(self, i: int, obs: torch.Tensor, noise: torch.Tensor) -> ChainOutput:
        """Agent i's action (with gradient) for the actor update."""
        return self.actors.agent(i, obs, noise, with_cost=self.actors.kind != "deterministic")

    def update_noise(self, batch: int) -> torch.Tensor:
        """The policies' noise inside the actor update (HATD3: none, its actors are deterministic)."""
        return self.noise(batch)

    def update(self, batch: ReplaySample) -> dict[str, torch.Tensor]:
        """Returns 0-d tensors, read only when logged (as OMAD's update)."""
        cfg = self.cfg
        obs, next_obs = batch.obs.transpose(0, 1), batch.next_obs.transpose(0, 1)
        B = obs.shape[1]

        with torch.no_grad():
            bootstrap = batch.discount * (1.0 - batch.done)
            target = cfg.reward_scale * batch.reward + bootstrap * self.next_value(batch.next_state, next_obs)
        critic_loss = (self.critic(batch.state, batch.action) - target).pow(2).mean(-1).sum()
        gradient_step(critic_loss, self.critic_opt, self.critic.parameters(), cfg.grad_clip)
        metrics = {"critic_loss": critic_loss.detach()}

        if self.num_updates % cfg.policy_delay == 0:
            metrics.update(self.sequential_actor_update(batch.state, obs, B))
            # The critic target moves with the actors, as in TD3 and HARL: every `policy_delay` updates.
            polyak_update(self.critic_target, self.critic, cfg.tau)
        self.num_updates += 1
        return metrics

    def sequential_actor_update(self, state: torch.Tensor, obs: torch.Tensor, B: int) -> dict[str, torch.Tensor]:
        """One pass over the agents in a random order. `actions` starts as every agent's current
        action; after agent m's step, its slot holds the action of its updated policy, which is what
        the agents after it see."""
        cfg, L = self.cfg, self.layout
        with torch.no_grad():
            actions = self.chain(obs, self.update_noise(B), with_cost=False).action
        self.critic.requires_grad_(False)
        losses, q_values = [], []
        for i in torch.randperm(L.n).tolist():
            noise = self.update_noise(B)
            out = self.agent_actor(i, obs, noise)
            joint_actions = torch.cat([actions[:i], self.actors.pad(out.action), actions[i + 1 :]])
            q = self.critic(state, self.joint_action(joint_actions))
            loss = self.actor_loss(i, q, out)
            gradient_step(loss, self.actor_opts[i], self.actors.singles[i].parameters(), cfg.grad_clip)
            self.after_agent_step(i, out)
            with torch.no_grad():
                actions[i] = self.actors.pad(self.agent_actor(i, obs, noise).action)[0]
            losses.append(loss.detach())
            q_values.append(q.detach().mean())
        self.critic.requires_grad_(True)
        self.after_actor_pass()
        return {"actor_loss": torch.stack(losses).mean(), "q": torch.stack(q_values).mean()}

    # -- the pieces each baseline defines -----------------------------------------------------
    @abstractmethod
    def next_value(self, next_state: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def actor_loss(self, i: int, q: torch.Tensor, out: ChainOutput) -> torch.Tensor: ...

    def after_agent_step(self, i: int, out: ChainOutput) -> None:
        pass

    def after_actor_pass(self) -> None:
        pass

    # -- persistence ----------------------------------------------------------------------------
    def modules(self) -> dict[str, torch.nn.Module]:
        return {"actors": self.actors, "critic": self.critic, "critic_target": self.critic_target}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"critic_opt": self.critic_opt, **{f"actor_opt_{i}": opt for i, opt in enumerate(self.actor_opts)}}


class HASAC(SequentialAlgorithm):
    """Squashed-Gaussian actors, soft twin-Q target, one auto-tuned temperature per agent
    (target entropy -d_a: alpha_i rises while log pi_i exceeds `cost_budget_per_dim` * d_a_i)."""

    cfg: HasacConfig

    def __init__(self, cfg: HasacConfig, layout: AgentLayout, state_dim: int, device: torch.device | str = "cpu"):
        super().__init__(cfg, layout, state_dim, device)
        self.log_alpha = torch.full(
            (layout.n,), math.log(cfg.alpha_init), device=self.device, requires_grad=cfg.auto_alpha
        )
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=cfg.lr_alpha)
        self.cost_budget = (
            torch.tensor(layout.act_dims, dtype=torch.float32, device=self.device) * cfg.cost_budget_per_dim
        )
        self.pass_costs = [
            torch.zeros((), device=self.device)
        ] * layout.n  # each agent's mean log pi in the current actor pass

    def make_actor(self, i: int) -> GaussianActors:
        L = self.layout
        return GaussianActors(
            [L.obs_dims[i]], [L.act_dims[i]], [L.action_low[i]], [L.action_high[i]], self.cfg.actor_hidden
        )

    @property
    def alpha(self) -> torch.Tensor:
        return self.log_alpha.detach().exp()

    def next_value(self, next_state, next_obs):
        nxt = self.chain(next_obs, self.noise(next_obs.shape[1]))
        q = self.critic_target(next_state, self.joint_action(nxt.action)).min(0).values
        assert nxt.cost is not None  # the chain is asked for its cost by default
        return q - (self.alpha.view(-1, 1) * nxt.cost).sum(0)

    def actor_loss(self, i, q, out):
        return (self.alpha[i] * out.cost[0] - q.min(0).values).mean()

    def after_agent_step(self, i, out):
        self.pass_costs[i] = out.cost[0].mean().detach()

    def after_actor_pass(self):
        """All agents' temperatures in one step: one Adam over the vector, each entry with its own
        gradient (stepping it per agent would move the others' entries by their momentum)."""
        if self.cfg.auto_alpha:
            alpha_loss = -(self.log_alpha * (torch.stack(self.pass_costs) - self.cost_budget)).sum()
            gradient_step(alpha_loss, self.alpha_opt, [], 0.0)

    def update(self, batch):
        metrics = super().update(batch)
        metrics["alpha"] = self.alpha.mean()
        return metrics

    def optimizers(self):
        return {**super().optimizers(), "alpha_opt": self.alpha_opt}

    def extra_tensors(self):
        return {"log_alpha": self.log_alpha}


def smoothed_target_noise(
    shape: tuple[int, ...], std: float, clip: float, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """TD3 target policy smoothing: clip(N(0, std^2), -clip, clip), in [-1, 1] action units."""
    return (torch.randn(shape, device=device) * std).clamp(-clip, clip)


class HATD3(SequentialAlgorithm):
    """Deterministic actors with target copies; exploration noise `explore_std`; the critic target
    uses smoothed target actions (noise `target_noise` clipped at `target_noise_clip`) and the
    smaller of the two target heads; actors follow the first head, every `policy_delay` updates."""

    cfg: Hatd3Config

    def __init__(self, cfg: Hatd3Config, layout: AgentLayout, state_dim: int, device: torch.device | str = "cpu"):
        super().__init__(cfg, layout, state_dim, device)
        self.actor_target = copy.deepcopy(self.actors).requires_grad_(False)

    def make_actor(self, i: int) -> DeterministicActors:
        L, cfg = self.layout, self.cfg
        return DeterministicActors(
            [L.obs_dims[i]],
            [L.act_dims[i]],
            [L.action_low[i]],
            [L.action_high[i]],
            cfg.actor_hidden,
            explore_std=cfg.explore_std,
        )

    def update_noise(self, batch):
        return torch.zeros(1, self.layout.n, batch, self.layout.act_max, device=self.device)

    def target_actions(self, next_obs: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        shape = (1, self.layout.n, next_obs.shape[1], self.layout.act_max)
        noise = smoothed_target_noise(shape, cfg.target_noise, cfg.target_noise_clip, self.device)
        return self.actor_target(next_obs, noise, with_cost=False, noise_std=1.0).action

    def next_value(self, next_state, next_obs):
        return self.critic_target(next_state, self.joint_action(self.target_actions(next_obs))).min(0).values

    def actor_loss(self, i, q, out):
        return -q[0].mean()

    def after_actor_pass(self):
        polyak_update(self.actor_target, self.actors, self.cfg.tau)

    def modules(self):
        return {**super().modules(), "actor_target": self.actor_target}
