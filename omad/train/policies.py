"""The deployable per-agent policy, and loading a run dir's policies (no training state, no code
execution)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from omad.core.envs.base import EnvSpec
from omad.core.rundir import SPEC_FILE, RunDir, actor_file
from omad.train.actors import DeterministicActors, GaussianActors, StackedActors
from omad.train.checkpoint import CheckpointError, latest_checkpoint, load_into, read_actor
from omad.train.diffusion import DiffusionActors

# Actor kind (the `actor` metadata of a checkpoint's actor file) -> its class.
ACTOR_CLASSES: dict[str, type[StackedActors]] = {
    cls.kind: cls for cls in (DiffusionActors, GaussianActors, DeterministicActors)
}


class AgentPolicy(nn.Module):
    """One agent's deployable policy: `action = pi(obs[B, d_o], noise[K+1, B, d_a])`, deterministic in
    its inputs. The same module as training (a one-agent stack), so what is exported is what was trained.
    `forward` takes tensors (for tracing); `act` is the numpy `omad.core.policy.Policy` call."""

    def __init__(self, name: str, hparams: dict, kind: str = "diffusion"):
        super().__init__()
        if kind not in ACTOR_CLASSES:
            raise ValueError(f"unknown actor kind {kind!r} (known: {sorted(ACTOR_CLASSES)})")
        if len(hparams["obs_dims"]) != 1:
            raise ValueError("AgentPolicy wraps a one-agent stack")
        self.name, self.hparams, self.kind = name, dict(hparams), kind
        with torch.random.fork_rng(devices=[]):  # built to be loaded: don't disturb the caller's RNG stream
            self.actors = actors = ACTOR_CLASSES[kind](**hparams)
        self.obs_dim, self.act_dim = actors.obs_dims[0], actors.act_dims[0]
        self.denoising_steps = actors.denoising_steps
        self.action_low = actors.action_low[0, 0].tolist()
        self.action_high = actors.action_high[0, 0].tolist()

    def forward(self, obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.actors(obs.unsqueeze(0), noise.unsqueeze(1), with_cost=False).action[0]

    @torch.no_grad()
    def act(self, obs: np.ndarray, noise: np.ndarray) -> np.ndarray:
        obs_t, noise_t = torch.from_numpy(np.asarray(obs, np.float32)), torch.from_numpy(np.asarray(noise, np.float32))
        return self(obs_t, noise_t).numpy()

    def sample_with_bound(self, obs: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(action, entropy lower bound [B], in the squashed space [-1, 1]^d); for a Gaussian the estimate
        is exact in expectation.
        Deterministic actors have no entropy and raise."""
        out = self.actors(obs.unsqueeze(0), noise.unsqueeze(1))
        if out.cost is None:
            raise ValueError(f"a {self.kind} policy has no entropy bound")
        return out.action[0], -out.cost[0]


def load_spec(run_dir: str | Path) -> EnvSpec:
    path = RunDir(run_dir).spec
    try:
        return EnvSpec.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing; {run_dir} is not a run dir") from None
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path}: unreadable agent spec ({err})") from None


def load_policies(run_dir: str | Path) -> dict[str, AgentPolicy]:
    """`{agent name: AgentPolicy}` in the environment's agent order, from the latest checkpoint."""
    spec = load_spec(run_dir)
    ckpt = latest_checkpoint(Path(run_dir), files=[actor_file(a.name) for a in spec.agents])
    policies = {}
    for agent in spec.agents:
        path = ckpt / actor_file(agent.name)
        actor = read_actor(path, list(ACTOR_CLASSES))
        try:
            policy = AgentPolicy(agent.name, actor.hparams, actor.kind)
        except (TypeError, ValueError, KeyError) as err:
            raise CheckpointError(
                f"{path}: 'hparams' metadata does not describe a {actor.kind} actor ({err})"
            ) from None
        if (policy.obs_dim, policy.act_dim) != (agent.obs_dim, agent.act_dim):
            raise CheckpointError(
                f"{path}: policy sizes (obs {policy.obs_dim}, act {policy.act_dim}) do not match {SPEC_FILE} "
                f"(obs {agent.obs_dim}, act {agent.act_dim})"
            )
        load_into(policy.actors, actor.tensors, path)
        policies[agent.name] = policy.eval()
    return policies
