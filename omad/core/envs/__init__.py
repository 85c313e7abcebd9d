"""Torch-free multi-agent environments: any PettingZoo parallel env, behind one registry.

    env = make_env("mamujoco:HalfCheetah-2x3")            # or get_spec(...), VecEnv(...)
    env = make_env("my_package.envs:parallel_env?n=3")    # a factory by reference, with an option
    obs, state = env.reset(seed=0)
    step = env.step([np.zeros(a.act_dim) for a in env.spec.agents])

Ids (`omad envs` lists them) come from the `omad.envs` entry points of installed packages, omad's
own MPE and MaMuJoCo tasks included (`omad.core.envs.builtin`); any `module.path:factory` that
returns a PettingZoo `ParallelEnv` works too (`omad.core.envs.registry`). One adapter
(`omad.core.envs.adapter`) applies the conventions every env follows:
- Agents in `possible_agents` order; Box observation and action spaces of any sizes and bounds.
- Observations and state are 1-D float32; state = the env's `state()`, else the observations
  concatenated (`EnvSpec.state_source`).
- Actions are clipped to the Box bounds given in the spec before reaching the env.
- Reward = mean of the agents' rewards.
- `terminated` = a true terminal state; `truncated` = a time limit. If both happen at once only
  `terminated` is reported. Agents that leave early get zero observations and are masked.
- `reset(seed=s)` makes the episode reproducible: same seed and actions give the same data.
- `render_mode="rgb_array"` makes `render()` return a uint8 [H, W, 3] frame.
"""

from omad.core.envs.adapter import EnvContractError
from omad.core.envs.base import AgentSpec, EnvSpec, MultiAgentEnv, StepResult
from omad.core.envs.registry import (
    EnvFactoryError,
    EnvOptionsError,
    Registration,
    UnknownEnvError,
    builtin_env_ids,
    can_record,
    check_env_id,
    env_family,
    env_reference,
    get_spec,
    is_registered,
    make_env,
    registered_ids,
    registrations,
    split_env_ref,
)
from omad.core.envs.vec_env import VecEnv, VecStep

__all__ = [
    "AgentSpec",
    "EnvContractError",
    "EnvFactoryError",
    "EnvOptionsError",
    "EnvSpec",
    "MultiAgentEnv",
    "Registration",
    "StepResult",
    "UnknownEnvError",
    "VecEnv",
    "VecStep",
    "builtin_env_ids",
    "can_record",
    "check_env_id",
    "env_family",
    "env_reference",
    "get_spec",
    "is_registered",
    "make_env",
    "registered_ids",
    "registrations",
    "split_env_ref",
]
