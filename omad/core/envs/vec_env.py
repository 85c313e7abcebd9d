"""Several copies of one environment stepped together, with automatic reset.

A plain loop in one process: the envs are cheap next to the networks, and it keeps
seeding exact. Copy j starts with seed `seed + j`; every later reset draws its seed from a
generator seeded with `seed`, so a whole run is reproducible.

An agent that leaves its episode early has zero observations from then on and `active` False; its
actions are ignored by the env, and `mask_departed` zeroes them in what a learner stores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from omad.core.envs.base import EnvSpec, MultiAgentEnv
from omad.core.envs.registry import make_env


@dataclass
class VecStep:
    obs: list[np.ndarray]  # per agent [num_envs, d_o], after auto-reset (feed to the policy)
    state: np.ndarray  # [num_envs, d_s], after auto-reset
    next_obs: list[np.ndarray]  # per agent [num_envs, d_o], the transition's true next obs
    next_state: np.ndarray  # [num_envs, d_s], the transition's true next state
    reward: np.ndarray  # [num_envs] float32 team reward
    terminated: np.ndarray  # [num_envs] bool
    truncated: np.ndarray  # [num_envs] bool
    episode_returns: list[tuple[int, float, int]]  # (copy, return, length) of finished episodes
    active: np.ndarray  # [num_envs, n_agents] bool, for `obs`: False where an agent has left its episode


def _stack(per_copy_obs: list[list[np.ndarray]]) -> list[np.ndarray]:
    """[copy][agent] arrays -> per agent [num_envs, d_o]."""
    return [np.stack(agent_obs) for agent_obs in zip(*per_copy_obs)]


class VecEnv:
    def __init__(
        self,
        env_id: str,
        num_envs: int,
        seed: int,
        options: dict[str, Any] | None = None,
        render_mode: str | None = None,
    ):
        if num_envs < 1:
            raise ValueError("num_envs must be at least 1")
        self.num_envs = num_envs
        self._envs: list[MultiAgentEnv] = [make_env(env_id, options, render_mode) for _ in range(num_envs)]
        self.spec: EnvSpec = self._envs[0].spec
        self._first_seed = seed
        self._reset_seeds = np.random.default_rng(seed)
        self._has_reset = False
        self._returns = np.zeros(num_envs, dtype=np.float64)
        self._lengths = np.zeros(num_envs, dtype=np.int64)
        # What `snapshot` needs to rebuild each copy exactly: its episode's seed and actions so far.
        self._episode_seeds = [0] * num_envs
        self._episode_actions: list[list[list[np.ndarray]]] = [[] for _ in range(num_envs)]
        self._current: tuple[list[np.ndarray], np.ndarray] | None = None
        self._active = np.ones((num_envs, len(self.spec.agents)), dtype=bool)

    def _next_seed(self) -> int:
        return int(self._reset_seeds.integers(2**31 - 1))

    def reset(self) -> tuple[list[np.ndarray], np.ndarray]:
        if self._has_reset:
            seeds = [self._next_seed() for _ in range(self.num_envs)]
        else:
            seeds = [self._first_seed + j for j in range(self.num_envs)]
            self._has_reset = True
        results = [env.reset(seed=s) for env, s in zip(self._envs, seeds)]
        self._episode_seeds = list(seeds)
        self._episode_actions = [[] for _ in range(self.num_envs)]
        self._returns[:] = 0.0
        self._lengths[:] = 0
        self._current = _stack([obs for obs, _ in results]), np.stack([state for _, state in results])
        self._active = np.array([env.active for env in self._envs], dtype=bool)
        return self._current

    def step(self, actions: list[np.ndarray]) -> VecStep:
        if len(actions) != len(self.spec.agents):
            raise ValueError(f"expected {len(self.spec.agents)} action arrays, got {len(actions)}")
        actions = [np.asarray(a, dtype=np.float32).reshape(self.num_envs, -1) for a in actions]
        next_obs, next_states, obs, states = [], [], [], []
        reward = np.zeros(self.num_envs, dtype=np.float32)
        terminated = np.zeros(self.num_envs, dtype=bool)
        truncated = np.zeros(self.num_envs, dtype=bool)
        episode_returns: list[tuple[int, float, int]] = []
        active = np.empty_like(self._active)
        for j, env in enumerate(self._envs):
            copy_actions = [agent_actions[j].copy() for agent_actions in actions]
            result = env.step(copy_actions)
            self._episode_actions[j].append(copy_actions)
            reward[j] = result.reward
            terminated[j], truncated[j] = result.terminated, result.truncated
            self._returns[j] += result.reward
            self._lengths[j] += 1
            next_obs.append(result.obs)
            next_states.append(result.state)
            if result.terminated or result.truncated:
                episode_returns.append((j, float(self._returns[j]), int(self._lengths[j])))
                self._returns[j], self._lengths[j] = 0.0, 0
                self._episode_seeds[j] = self._next_seed()
                self._episode_actions[j] = []
                reset_obs, reset_state = env.reset(seed=self._episode_seeds[j])
                obs.append(reset_obs)
                states.append(reset_state)
            else:
                obs.append(result.obs)
                states.append(result.state)
            active[j] = env.active
        self._current = _stack(obs), np.stack(states)
        self._active = active
        return VecStep(
            obs=self._current[0],
            state=self._current[1],
            next_obs=_stack(next_obs),
            next_state=np.stack(next_states),
            reward=reward,
            terminated=terminated,
            truncated=truncated,
            episode_returns=episode_returns,
            active=active.copy(),
        )

    def current(self) -> tuple[list[np.ndarray], np.ndarray]:
        """The observations and state the next `step` acts on."""
        if self._current is None:
            raise RuntimeError("call reset() first")
        return self._current

    @property
    def active(self) -> np.ndarray:
        """[num_envs, n_agents] bool: which agents act on the current observations."""
        return self._active.copy()

    def mask_departed(self, actions: np.ndarray) -> np.ndarray:
        """Per-agent stacked actions [n_agents, num_envs, ...] with the rows of agents that have left
        set to zero (the env ignores them; a learner stores them as zeros)."""
        mask = self._active.T
        return actions * mask.reshape(mask.shape + (1,) * (actions.ndim - 2))

    @property
    def copies(self) -> tuple[MultiAgentEnv, ...]:
        """The environment copies, in order (read-only access, e.g. to the MuJoCo state)."""
        return tuple(self._envs)

    def render(self, copy: int = 0) -> np.ndarray:
        return self._envs[copy].render()

    def snapshot(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Plain JSON + arrays from which `restore` rebuilds every copy mid-episode, exactly:
        each copy is reset with its episode seed and the episode's actions are replayed."""
        meta = {
            "reset_rng": self._reset_seeds.bit_generator.state,
            "has_reset": self._has_reset,
            "episode_seeds": list(self._episode_seeds),
            "episode_lengths": [len(a) for a in self._episode_actions],
            "returns": self._returns.tolist(),
            "lengths": self._lengths.tolist(),
        }
        arrays = {}
        for j, history in enumerate(self._episode_actions):
            for i in range(len(self.spec.agents)):
                if history:
                    arrays[f"{j}.{i}"] = np.stack([step[i] for step in history]).astype(np.float32)
        return meta, arrays

    def restore(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self._reset_seeds.bit_generator.state = meta["reset_rng"]
        self._has_reset = bool(meta["has_reset"])
        self._episode_seeds = [int(s) for s in meta["episode_seeds"]]
        self._returns[:] = meta["returns"]
        self._lengths[:] = meta["lengths"]
        per_copy_obs, states = [], []
        for j, env in enumerate(self._envs):
            obs, state = env.reset(seed=self._episode_seeds[j])
            history = [
                [arrays[f"{j}.{i}"][t] for i in range(len(self.spec.agents))]
                for t in range(int(meta["episode_lengths"][j]))
            ]
            for step_actions in history:
                result = env.step(step_actions)
                obs, state = result.obs, result.state
            self._active[j] = env.active
            self._episode_actions[j] = history
            per_copy_obs.append(obs)
            states.append(state)
        self._current = _stack(per_copy_obs), np.stack(states)

    def close(self) -> None:
        for env in self._envs:
            env.close()
