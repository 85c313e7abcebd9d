"""One adapter from a PettingZoo parallel env (mpe2 or MaMuJoCo) to `MultiAgentEnv`.

Both families speak the PettingZoo parallel API, so a single class applies the conventions
(listed in `omad.core.envs`): fixed agent order, float32 observations and state, clipped
actions, team reward = mean of the team agents' rewards, terminated kept apart from truncated.
Agents driven by a scripted policy (the adversary of Physical Deception) are stepped here and
are not part of the spec.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from omad.core.envs.base import AgentSpec, EnvSpec, MultiAgentEnv, StepResult

ScriptedPolicy = Callable[[np.ndarray], np.ndarray]


def episode_end_flags(terminations: Mapping[str, bool], truncations: Mapping[str, bool]) -> tuple[bool, bool]:
    """Map per-agent done flags to (terminated, truncated) of the team.

    A true terminal state wins over a time limit reached at the same step, so at most one
    of the two flags is set: a replay buffer then never bootstraps through a fall.
    """
    terminated = any(bool(v) for v in terminations.values())
    truncated = any(bool(v) for v in truncations.values()) and not terminated
    return terminated, truncated


def _box_bounds(space: Any) -> tuple[np.ndarray, np.ndarray]:
    low = np.asarray(space.low, dtype=np.float32).reshape(-1)
    high = np.asarray(space.high, dtype=np.float32).reshape(-1)
    return low, high


class ParallelEnvAdapter(MultiAgentEnv):
    def __init__(
        self,
        env_id: str,
        parallel_env: Any,
        max_episode_steps: int,
        options: dict[str, Any],
        scripted_policies: dict[str, ScriptedPolicy] | None = None,
        render_mode: str | None = None,
    ):
        self._env = parallel_env
        self._render_mode = render_mode
        self._scripted_policies = dict(scripted_policies or {})
        self._bounds = {name: _box_bounds(parallel_env.action_space(name)) for name in parallel_env.possible_agents}
        team = [n for n in parallel_env.possible_agents if n not in self._scripted_policies]
        self.spec = EnvSpec(
            env_id=env_id,
            agents=tuple(self._agent_spec(name) for name in team),
            state_dim=self._state_dim(),
            max_episode_steps=int(max_episode_steps),
            options=dict(options),
        )
        self._last_raw_obs: dict[str, np.ndarray] = {}
        self._needs_reset = True

    def _state_dim(self) -> int:
        # mpe2 declares a state_space (its state() refuses to run before reset);
        # MaMuJoCo has none but can compute state() straight away.
        state_space = getattr(self._env, "state_space", None)
        if state_space is not None:
            return int(np.prod(state_space.shape))
        return int(np.asarray(self._env.state()).size)

    def _agent_spec(self, name: str) -> AgentSpec:
        low, high = self._bounds[name]
        return AgentSpec(
            name=name,
            obs_dim=int(np.prod(self._env.observation_space(name).shape)),
            act_dim=int(low.size),
            action_low=tuple(float(x) for x in low),
            action_high=tuple(float(x) for x in high),
        )

    def torso_xy(self) -> np.ndarray:
        """MaMuJoCo: the robot's torso (x, y), `qpos[:2]` of the MuJoCo model under the env."""
        single_agent_env = getattr(self._env, "single_agent_env", None)
        if single_agent_env is None:
            raise NotImplementedError(f"{self.spec.env_id} has no MuJoCo torso")
        return np.array(single_agent_env.unwrapped.data.qpos[:2], dtype=np.float64)

    def reset(self, seed: int | None = None) -> tuple[list[np.ndarray], np.ndarray]:
        raw_obs, _ = self._env.reset(seed=seed)
        self._last_raw_obs = self._all_agents_obs(raw_obs)
        self._needs_reset = False
        return self._team_obs(), self._state()

    def step(self, actions: list[np.ndarray]) -> StepResult:
        if self._needs_reset:
            raise RuntimeError("the episode has ended (or never started): call reset() first")
        if len(actions) != len(self.spec.agents):
            raise ValueError(f"expected {len(self.spec.agents)} actions, got {len(actions)}")
        env_actions = {agent.name: self._clip(agent.name, action) for agent, action in zip(self.spec.agents, actions)}
        for name, policy in self._scripted_policies.items():
            env_actions[name] = self._clip(name, policy(self._last_raw_obs[name]))

        raw_obs, rewards, terminations, truncations, _ = self._env.step(env_actions)
        self._last_raw_obs = self._all_agents_obs(raw_obs)
        team_reward = float(np.mean([rewards[name] for name in self.spec.agent_names]))
        terminated, truncated = episode_end_flags(terminations, truncations)
        self._needs_reset = terminated or truncated
        return StepResult(
            obs=self._team_obs(),
            state=self._state(),
            reward=team_reward,
            terminated=terminated,
            truncated=truncated,
        )

    def render(self) -> np.ndarray:
        if self._render_mode != "rgb_array":
            raise RuntimeError("render() needs the env made with render_mode='rgb_array'")
        return np.ascontiguousarray(self._env.render(), dtype=np.uint8)

    def close(self) -> None:
        self._env.close()

    def _clip(self, name: str, action: np.ndarray) -> np.ndarray:
        low, high = self._bounds[name]
        action = np.asarray(action, dtype=np.float32).reshape(-1)
        if action.size != low.size:
            raise ValueError(f"action of {name} must have {low.size} values, got {action.size}")
        return np.clip(action, low, high)

    def _all_agents_obs(self, raw_obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # PettingZoo parallel envs may drop agents that are done; AEC-based ones (mpe2)
        # can still observe them, so the adapter always returns every agent's observation.
        return {
            name: np.asarray(
                raw_obs[name] if name in raw_obs else self._env.unwrapped.observe(name),
                dtype=np.float32,
            ).reshape(-1)
            for name in self._env.possible_agents
        }

    def _team_obs(self) -> list[np.ndarray]:
        return [self._last_raw_obs[name] for name in self.spec.agent_names]

    def _state(self) -> np.ndarray:
        return np.asarray(self._env.state(), dtype=np.float32).reshape(-1)
