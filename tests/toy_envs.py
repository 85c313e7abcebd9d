"""Small PettingZoo parallel envs that tests name by reference (`toy_envs:<factory>`): each one shows
one thing the adapter must handle or refuse. `tests/` is on the path of the test session; a child
process gets it through PYTHONPATH."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from gymnasium import spaces
from pettingzoo import ParallelEnv


class Toy(ParallelEnv):
    """Agents a, b, c with observation sizes 2, 3, 1 and actions Box [lo, hi] of sizes 1, 2, 1.

    Observation of agent i at step t: [t, 10 * i + k for k in ...] so a stale one shows. Rewards:
    a: 1.0, b: 2.0, c: 4.0 every step. `departures` maps an agent to (step, how) with how in
    "terminated", "truncated", "dropped" (gone from the observations and `agents`, no flag); every
    agent still there is truncated at `max_cycles`. state() is [t, t + 1] unless `with_state` is False.
    """

    metadata: ClassVar[dict[str, Any]] = {"name": "toy", "render_modes": []}

    def __init__(self, max_cycles: int = 6, departures: dict[str, Any] | None = None, with_state: bool = True):
        self.possible_agents = ["a", "b", "c"]
        self.agents: list[str] = []
        self.max_cycles = max_cycles
        self.departures = {name: tuple(v) for name, v in (departures or {}).items()}
        self.with_state = with_state
        self.obs_sizes = {"a": 2, "b": 3, "c": 1}
        self.act_spaces = {
            "a": spaces.Box(-2.0, 0.5, (1,), np.float32),
            "b": spaces.Box(np.array([0.0, -1.0], np.float32), np.array([1.0, 3.0], np.float32)),
            "c": spaces.Box(-1.0, 1.0, (1,), np.float64),
        }
        self.t = 0
        self.start = 0
        self.received: list[dict[str, np.ndarray]] = []

    def observation_space(self, agent: str) -> spaces.Space:
        return spaces.Box(-np.inf, np.inf, (self.obs_sizes[agent],), np.float32)

    def action_space(self, agent: str) -> spaces.Space:
        return self.act_spaces[agent]

    def _obs(self, name: str) -> np.ndarray:
        i = self.possible_agents.index(name)
        return np.array([self.start + self.t] + [10 * i + k for k in range(self.obs_sizes[name] - 1)], np.float32)

    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        self.start = 0 if seed is None else int(seed)
        self.t = 0
        self.agents = list(self.possible_agents)
        return {n: self._obs(n) for n in self.agents}, {n: {} for n in self.agents}

    def step(self, actions: dict) -> tuple[dict, dict, dict, dict, dict]:
        self.received.append({k: np.array(v) for k, v in actions.items()})
        self.t += 1
        acting = list(self.agents)
        term = {n: self.departures.get(n) == (self.t, "terminated") for n in acting}
        trunc = {n: self.departures.get(n) == (self.t, "truncated") or self.t >= self.max_cycles for n in acting}
        dropped = {n for n in acting if self.departures.get(n) == (self.t, "dropped")}
        obs = {n: self._obs(n) for n in acting if n not in dropped}
        rewards = {n: {"a": 1.0, "b": 2.0, "c": 4.0}[n] for n in acting if n not in dropped}
        self.agents = [n for n in acting if not (term[n] or trunc[n]) and n not in dropped]
        return (
            obs,
            rewards,
            {n: v for n, v in term.items() if n not in dropped},
            {n: v for n, v in trunc.items() if n not in dropped},
            {n: {} for n in obs},
        )

    def state(self) -> np.ndarray:
        if not self.with_state:
            raise NotImplementedError
        return np.array([self.t, self.t + 1], np.float32)


def toy(max_cycles: int = 6, departures: dict[str, Any] | None = None, with_state: bool = True) -> Toy:
    return Toy(max_cycles, departures, with_state)


# -- envs omad must refuse, each for one reason ------------------------------------------------------
class _WithActionSpace(Toy):
    def __init__(self, space: spaces.Space, agent: str = "b"):
        super().__init__()
        self.act_spaces[agent] = space


def discrete_action() -> Toy:
    return _WithActionSpace(spaces.Discrete(5))


def multi_discrete_action() -> Toy:
    return _WithActionSpace(spaces.MultiDiscrete([3, 2]))


def dict_action() -> Toy:
    return _WithActionSpace(spaces.Dict({"move": spaces.Box(-1.0, 1.0, (2,))}))


def unbounded_action() -> Toy:
    return _WithActionSpace(spaces.Box(np.array([-1.0, -np.inf], np.float32), np.array([1.0, 1.0], np.float32)))


class _SpacesChangeOnReset(Toy):
    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        self.obs_sizes["c"] += 1
        return super().reset(seed, options)


def spaces_change_on_reset() -> Toy:
    return _SpacesChangeOnReset()


class _StateGrows(Toy):
    def state(self) -> np.ndarray:
        return np.zeros(2 + self.t, np.float32)


def state_grows() -> Toy:
    return _StateGrows()


def raises(**options: Any) -> Toy:
    raise RuntimeError("the simulator licence has expired\nsecond line that must not be shown")


def not_an_env() -> dict:
    return {"agents": ["a"]}


NOT_CALLABLE = 3


class _StateFailsWhenOver(Toy):
    """Like multiwalker, whose state() fails once a fallen walker's body is removed."""

    def state(self) -> np.ndarray:
        if not self.agents:
            raise AttributeError("'NoneType' object has no attribute 'position'")
        return super().state()


def state_fails_when_over(max_cycles: int = 6, departures: dict[str, Any] | None = None) -> Toy:
    return _StateFailsWhenOver(max_cycles, departures)
