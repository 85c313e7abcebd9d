"""The one environment interface every adapter implements (torch-free).

An `EnvSpec` is the single definition of an environment's agents: their names in a fixed
order, observation and action sizes, and action bounds. Training, export, serving and
evaluation all read it from here (or from the `spec.json` a run dir stores).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class AgentSpec:
    name: str
    obs_dim: int
    act_dim: int
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]


@dataclass(frozen=True)
class EnvSpec:
    env_id: str
    agents: tuple[AgentSpec, ...]
    state_dim: int
    max_episode_steps: int
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def agent_names(self) -> list[str]:
        return [a.name for a in self.agents]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EnvSpec:
        agents = tuple(
            AgentSpec(
                name=a["name"],
                obs_dim=int(a["obs_dim"]),
                act_dim=int(a["act_dim"]),
                action_low=tuple(float(x) for x in a["action_low"]),
                action_high=tuple(float(x) for x in a["action_high"]),
            )
            for a in d["agents"]
        )
        return cls(
            env_id=d["env_id"],
            agents=agents,
            state_dim=int(d["state_dim"]),
            max_episode_steps=int(d["max_episode_steps"]),
            options=dict(d.get("options", {})),
        )


@dataclass
class StepResult:
    """One step of a single environment copy.

    `reward` is the team reward: the mean of the agents' rewards at this step.
    `terminated` means a true terminal state (no bootstrap); `truncated` means a time limit
    (bootstrap through it).
    """

    obs: list[np.ndarray]  # per agent, float32 [d_o]
    state: np.ndarray  # float32 [d_s]
    reward: float
    terminated: bool
    truncated: bool


class MultiAgentEnv:
    """Interface of one environment copy. Observations and actions are per agent, in spec order."""

    spec: EnvSpec

    def reset(self, seed: int | None = None) -> tuple[list[np.ndarray], np.ndarray]:
        raise NotImplementedError

    def step(self, actions: list[np.ndarray]) -> StepResult:
        raise NotImplementedError

    def render(self) -> np.ndarray:
        """An RGB frame, uint8 [H, W, 3]."""
        raise NotImplementedError

    def torso_xy(self) -> np.ndarray:
        """The robot's torso (x, y) position, float64 [2] (MuJoCo robots only; for state coverage)."""
        raise NotImplementedError

    def close(self) -> None:
        pass
