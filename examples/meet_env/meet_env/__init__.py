"""Meet: two agents must meet at a target.

A small continuous cooperative PettingZoo parallel environment, an example of what omad trains:
the two agents see different things and act in different units.

- The arena is the square [-1, 1]^2. Each episode places the scout, the hauler and the target
  uniformly at random (from the seed given to `reset`).
- scout: observes [own x, own y, target - own (2)] (4 values); acts with a velocity in [-1, 1]^2
  and moves up to 0.1 per step along each axis.
- hauler: observes [own x, own y, target - own (2), scout - own (2)] (6 values); acts with
  [throttle in [0, 1], heading in [-pi, pi]] and moves 0.06 * throttle along the heading.
- Reward, every step, for each agent still in the episode: minus the mean of the two agents'
  distances to the target (an agent that has left counts 0); the hauler also pays 0.02 * throttle.
- The episode terminates when both agents are within `radius` of the target at once, and is
  truncated after `max_cycles` steps. With `leave_on_arrival=True` an agent that reaches the target
  leaves the episode at once (terminated on its own) and the other carries on.
- `state()`: [scout x, y, hauler x, y, target x, y] (6 values).
- `render_mode="rgb_array"`: a 128 x 128 picture (target green, scout blue, hauler orange).

`parallel_env(...)` is the factory omad calls: `omad train --env meet:v0` once this package is
installed (its pyproject registers the id), or `--env meet_env:parallel_env` with it on the path.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from gymnasium import spaces
from gymnasium.utils import seeding
from pettingzoo import ParallelEnv

SCOUT, HAULER = "scout", "hauler"
SCOUT_SPEED = 0.1  # per step and axis, at full action
HAULER_SPEED = 0.06  # per step, at full throttle
THROTTLE_COST = 0.02  # per step, at full throttle
FRAME = 128  # rendered picture size in pixels

_COLOURS = {"target": (40, 170, 80), SCOUT: (40, 90, 220), HAULER: (235, 130, 30)}


class MeetEnv(ParallelEnv):
    metadata: ClassVar[dict[str, Any]] = {"name": "meet_v0", "render_modes": ["rgb_array"], "is_parallelizable": True}

    def __init__(
        self,
        max_cycles: int = 50,
        radius: float = 0.1,
        leave_on_arrival: bool = False,
        render_mode: str | None = None,
    ):
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        if int(max_cycles) < 1 or not radius > 0:
            raise ValueError(f"max_cycles must be >= 1 and radius > 0, got {max_cycles}, {radius}")
        self.max_cycles = int(max_cycles)
        self.radius = float(radius)
        self.leave_on_arrival = bool(leave_on_arrival)
        self.render_mode = render_mode
        self.possible_agents = [SCOUT, HAULER]
        self.agents: list[str] = []
        self.observation_spaces = {
            SCOUT: spaces.Box(-np.inf, np.inf, (4,), np.float32),
            HAULER: spaces.Box(-np.inf, np.inf, (6,), np.float32),
        }
        self.action_spaces = {
            SCOUT: spaces.Box(-1.0, 1.0, (2,), np.float32),
            HAULER: spaces.Box(np.array([0.0, -np.pi], np.float32), np.array([1.0, np.pi], np.float32)),
        }
        self.state_space = spaces.Box(-1.0, 1.0, (6,), np.float32)
        self._rng, _ = seeding.np_random(None)
        self._positions = {name: np.zeros(2) for name in self.possible_agents}
        self._target = np.zeros(2)
        self._left: set[str] = set()
        self._steps = 0

    def observation_space(self, agent: str) -> spaces.Box:
        return self.observation_spaces[agent]

    def action_space(self, agent: str) -> spaces.Box:
        return self.action_spaces[agent]

    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        if seed is not None:
            self._rng, _ = seeding.np_random(seed)
        self._target = self._rng.uniform(-1.0, 1.0, 2)
        self._positions = {name: self._rng.uniform(-1.0, 1.0, 2) for name in self.possible_agents}
        self._left = set()
        self._steps = 0
        self.agents = list(self.possible_agents)
        return {name: self._observe(name) for name in self.agents}, {name: {} for name in self.agents}

    def step(self, actions: dict[str, np.ndarray]) -> tuple[dict, dict, dict, dict, dict]:
        acting = list(self.agents)
        throttle = 0.0
        for name in acting:
            action = np.asarray(actions.get(name, np.zeros(2)), dtype=np.float64)
            space = self.action_spaces[name]
            action = np.clip(action, space.low, space.high)
            if name == SCOUT:
                move = SCOUT_SPEED * action
            else:
                throttle = float(action[0])
                move = HAULER_SPEED * throttle * np.array([np.cos(action[1]), np.sin(action[1])])
            self._positions[name] = np.clip(self._positions[name] + move, -1.0, 1.0)
        self._steps += 1

        distance = {
            name: 0.0 if name in self._left else float(np.linalg.norm(self._positions[name] - self._target))
            for name in self.possible_agents
        }
        shared = -float(np.mean(list(distance.values())))
        rewards = {name: shared - (THROTTLE_COST * throttle if name == HAULER else 0.0) for name in acting}
        if self.leave_on_arrival:
            terminations = {name: distance[name] <= self.radius for name in acting}
        else:
            met = all(d <= self.radius for d in distance.values())
            terminations = dict.fromkeys(acting, met)
        truncations = dict.fromkeys(acting, self._steps >= self.max_cycles)
        observations = {name: self._observe(name) for name in acting}
        infos: dict[str, dict[str, Any]] = {name: {} for name in acting}
        done = {name for name in acting if terminations[name] or truncations[name]}
        self._left |= {name for name in done if terminations[name]}
        self.agents = [name for name in acting if name not in done]
        return observations, rewards, terminations, truncations, infos

    def state(self) -> np.ndarray:
        return np.concatenate([self._positions[SCOUT], self._positions[HAULER], self._target]).astype(np.float32)

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        frame = np.full((FRAME, FRAME, 3), 250, np.uint8)
        rows, cols = np.mgrid[0:FRAME, 0:FRAME]

        def disc(centre: np.ndarray, radius: float, colour: tuple[int, int, int], ring: bool = False) -> None:
            x, y = (centre + 1.0) / 2.0 * (FRAME - 1)
            r = radius / 2.0 * (FRAME - 1)
            d = np.hypot(cols - x, (FRAME - 1 - rows) - y)
            frame[(np.abs(d - r) < 1.0) if ring else (d <= r)] = colour

        disc(self._target, self.radius, _COLOURS["target"], ring=True)
        disc(self._target, 0.03, _COLOURS["target"])
        for name in self.possible_agents:
            disc(self._positions[name], 0.05, _COLOURS[name])
        return frame

    def close(self) -> None:
        pass

    def _observe(self, name: str) -> np.ndarray:
        own = self._positions[name]
        parts = [own, self._target - own]
        if name == HAULER:
            parts.append(self._positions[SCOUT] - own)
        return np.concatenate(parts).astype(np.float32)


def parallel_env(
    max_cycles: int = 50, radius: float = 0.1, leave_on_arrival: bool = False, render_mode: str | None = None
) -> MeetEnv:
    """The factory omad calls; its keyword defaults are the id's default options."""
    return MeetEnv(max_cycles=max_cycles, radius=radius, leave_on_arrival=leave_on_arrival, render_mode=render_mode)
