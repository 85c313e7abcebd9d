"""Agents outside the team, driven by fixed policies inside the environment.

`ScriptedAgents` wraps a PettingZoo parallel env into one whose agents are the team only: on every
step it adds each scripted agent's action, computed from that agent's latest observation and clipped
to its action space (a policy reads its observation as flat float32), so the adapter sees an
ordinary parallel env.

Physical Deception (`mpe:simple_adversary_v3`): the adversary does not know which landmark is
the goal, so it guesses from the good agents: it heads for the landmark that is closest to any
good agent. The push is proportional to the offset (gain 2, clipped), so it moves at full
speed when far away and settles on the landmark instead of orbiting it. It reads only its own
observation, `[landmark rel. positions (2 per landmark), good agent rel. positions (2 each)]`,
with as many landmarks as good agents, and outputs an mpe2 continuous action
`[no_op, left, right, down, up]` in [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

ScriptedPolicy = Callable[[np.ndarray], np.ndarray]

_PUSH_GAIN = 2.0


def adversary_to_landmark_nearest_good_agent(observation: np.ndarray) -> np.ndarray:
    positions = np.asarray(observation, dtype=np.float64).reshape(-1, 2)
    num_landmarks = len(positions) // 2
    landmarks, good_agents = positions[:num_landmarks], positions[num_landmarks:]
    # distance of every landmark to its nearest good agent
    gaps = np.linalg.norm(landmarks[:, None, :] - good_agents[None, :, :], axis=-1).min(axis=1)
    target = landmarks[int(np.argmin(gaps))]  # relative to the adversary
    push_x, push_y = np.clip(_PUSH_GAIN * target, -1.0, 1.0)
    return np.array(
        [0.0, max(-push_x, 0.0), max(push_x, 0.0), max(-push_y, 0.0), max(push_y, 0.0)],
        dtype=np.float32,
    )


class ScriptedAgents:
    """A parallel env (the PettingZoo API) of the team: the agents in `policies` act by them inside."""

    def __init__(self, env: Any, policies: dict[str, ScriptedPolicy]):
        unknown = set(policies) - set(env.possible_agents)
        if unknown:
            raise ValueError(f"scripted agents {sorted(unknown)} are not agents of the env")
        self.env = env
        self.policies = dict(policies)
        self.possible_agents = [name for name in env.possible_agents if name not in self.policies]
        self.metadata = getattr(env, "metadata", {})
        self.render_mode = getattr(env, "render_mode", None)
        self._last_obs: dict[str, Any] = {}

    @property
    def agents(self) -> list[str]:
        return [name for name in self.env.agents if name not in self.policies]

    @property
    def state_space(self) -> Any:
        return getattr(self.env, "state_space", None)

    @property
    def unwrapped(self) -> Any:
        return self.env.unwrapped

    def observation_space(self, agent: str) -> Any:
        return self.env.observation_space(agent)

    def action_space(self, agent: str) -> Any:
        return self.env.action_space(agent)

    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        obs, infos = self.env.reset(seed=seed, options=options)
        self._last_obs = obs
        return self._team(obs), self._team(infos)

    def step(self, actions: dict[str, np.ndarray]) -> tuple[dict, dict, dict, dict, dict]:
        actions = dict(actions)
        for name, policy in self.policies.items():
            if name in self._last_obs and name in self.env.agents:
                space = self.env.action_space(name)
                low = np.asarray(space.low, dtype=np.float32).reshape(-1)
                high = np.asarray(space.high, dtype=np.float32).reshape(-1)
                observation = np.asarray(self._last_obs[name], dtype=np.float32).reshape(-1)
                action = np.asarray(policy(observation), dtype=np.float32).reshape(-1)
                actions[name] = np.clip(action, low, high).reshape(space.shape)
        obs, rewards, terminations, truncations, infos = self.env.step(actions)
        self._last_obs = obs
        return tuple(self._team(d) for d in (obs, rewards, terminations, truncations, infos))  # type: ignore[return-value]

    def state(self) -> np.ndarray:
        return self.env.state()

    def render(self) -> Any:
        return self.env.render()

    def close(self) -> None:
        self.env.close()

    def _team(self, per_agent: dict) -> dict:
        return {name: value for name, value in per_agent.items() if name not in self.policies}
