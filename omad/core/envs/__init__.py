"""Torch-free multi-agent environments behind one registry.

    env = make_env("mamujoco:HalfCheetah-2x3")            # or get_spec(...), VecEnv(...)
    obs, state = env.reset(seed=0)
    step = env.step([np.zeros(a.act_dim) for a in env.spec.agents])

Families (the libraries are imported only when an env is made):
- `mpe:*` — mpe2 parallel API with continuous actions in [0, 1] ([no_op, left, right, down, up]
  plus communication where the task has it). Options: `max_cycles` (default 25; the time
  limit, reported as truncated), `N` for simple_spread (default 3), any other mpe2 kwarg.
- `mamujoco:<Scenario>-<partition>` — `gymnasium_robotics.mamujoco_v1.parallel_env(scenario,
  partition)`, wrapping Gymnasium's `<Scenario>-v5` MuJoCo envs. Options: `agent_obsk`
  (default 0, HARL's value: own joints only), `max_episode_steps` (default 1000), any other
  Gymnasium MuJoCo kwarg.

Conventions of every env:
- Agents in `possible_agents` order; the spec lists only the learning team.
- Observations and state are 1-D float32; state = the env's `state()` (for mpe2 that is the
  concatenation of all agents' observations, including scripted ones).
- Actions are clipped to the Box bounds given in the spec before reaching the env.
- Reward = mean of the team agents' rewards (MaMuJoCo gives every agent the same reward).
- `terminated` = a true terminal state (a MuJoCo robot falling); `truncated` = the time limit.
  If both happen at once only `terminated` is reported.
- `reset(seed=s)` makes the episode reproducible: same seed and actions give the same data.
- Physical Deception (`mpe:simple_adversary_v3`): the team is agent_0 and agent_1; the
  adversary runs a fixed scripted policy inside the adapter: it heads for the landmark nearest
  to any good agent (see `omad.core.envs.scripted`).
- `render_mode="rgb_array"` makes `render()` return a uint8 [H, W, 3] frame. For MuJoCo it sets
  MUJOCO_GL=egl unless already set (headless software rendering through Mesa's EGL).
"""

from omad.core.envs.base import AgentSpec, EnvSpec, MultiAgentEnv, StepResult
from omad.core.envs.registry import ENV_IDS, EnvOptionsError, UnknownEnvError, env_family, get_spec, make_env
from omad.core.envs.vec_env import VecEnv, VecStep

__all__ = [
    "ENV_IDS",
    "AgentSpec",
    "EnvOptionsError",
    "EnvSpec",
    "MultiAgentEnv",
    "StepResult",
    "UnknownEnvError",
    "VecEnv",
    "VecStep",
    "env_family",
    "get_spec",
    "make_env",
]
