"""Load a run dir's deployable per-agent policies (no training state, no code execution)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .checkpoint import CheckpointError, latest_checkpoint, load_into, load_metadata, load_tensors
from .actors import AgentPolicy, actor_classes
from .envs.base import EnvSpec


def load_spec(run_dir: str | Path) -> EnvSpec:
    path = Path(run_dir) / "spec.json"
    try:
        return EnvSpec.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing; {run_dir} is not a run dir") from None
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path}: unreadable agent spec ({err})") from None


def load_policies(run_dir: str | Path) -> dict:
    """`{agent name: AgentPolicy}` in the environment's agent order, from the latest checkpoint."""
    spec = load_spec(run_dir)
    ckpt = latest_checkpoint(Path(run_dir), files=[f"actors/{a.name}.safetensors" for a in spec.agents])
    policies = {}
    for agent in spec.agents:
        path = ckpt / "actors" / f"{agent.name}.safetensors"
        meta = load_metadata(path)
        kind = meta.get("actor")
        if kind not in actor_classes():
            raise CheckpointError(f"{path}: unknown actor kind {kind!r} (known: {sorted(actor_classes())})")
        try:
            hparams = json.loads(meta["hparams"])
        except (KeyError, ValueError) as err:
            raise CheckpointError(f"{path}: missing or corrupt 'hparams' metadata ({err})") from None
        try:
            policy = AgentPolicy(agent.name, hparams, kind)
        except (TypeError, ValueError, KeyError) as err:
            raise CheckpointError(f"{path}: 'hparams' metadata does not describe a {kind} actor ({err})") from None
        if (policy.obs_dim, policy.act_dim) != (agent.obs_dim, agent.act_dim):
            raise CheckpointError(
                f"{path}: policy sizes (obs {policy.obs_dim}, act {policy.act_dim}) do not match spec.json "
                f"(obs {agent.obs_dim}, act {agent.act_dim})"
            )
        load_into(policy.actors, load_tensors(path), path)
        policies[agent.name] = policy.eval()
    return policies


def torch_source(run_dir: str | Path):
    """The torch checkpoint as a closed-loop evaluation source (omad_serve.closed_loop stays torch-free)."""
    from omad_serve.closed_loop import AgentEndpoint, PolicySource

    spec = load_spec(run_dir)
    policies = load_policies(run_dir)

    def call(policy):
        def fn(obs, noise):
            with torch.no_grad():
                return policy(torch.from_numpy(obs), torch.from_numpy(noise)).numpy()

        return fn

    agents = [
        AgentEndpoint(name, p.obs_dim, p.act_dim, p.denoising_steps + 1, spec.env_id, str(run_dir))
        for name, p in policies.items()
    ]
    return PolicySource("torch", agents, [call(p) for p in policies.values()])
