"""The one environment interface every adapter implements (torch-free).

An `EnvSpec` is the single definition of an environment's agents: their names in a fixed
order, observation and action sizes, and action bounds. Training, export, serving and
evaluation all read it from here (or from the `spec.json` a run dir stores).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from omad.core.agent import AgentSpec


@dataclass(frozen=True)
class EnvSpec:
    env_id: str  # the registered id or module:factory reference, without options
    agents: tuple[AgentSpec, ...]
    state_dim: int
    max_episode_steps: int  # the time limit, 0 where the env does not say
    options: dict[str, Any] = field(default_factory=dict)  # every option the factory ran with, defaults included
    state_source: str = "state"  # "state": the env's state(); "observations": the agents' observations concatenated
    reference: str = ""  # the id with the options given for it (`id?key=value`): what exports record

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
            state_source=str(d.get("state_source", "state")),
            reference=str(d.get("reference") or d["env_id"]),
        )


@dataclass
class StepResult:
    """One step of a single environment copy.

    `reward` is the team reward: the mean of the rewards of the agents that took part in the step.
    `terminated` means a true terminal state (no bootstrap); `truncated` means a time limit
    (bootstrap through it).
    """

    obs: list[np.ndarray]  # per agent, float32 [d_o]; zeros for an agent that has left
    state: np.ndarray  # float32 [d_s]
    reward: float
    terminated: bool
    truncated: bool
    active: tuple[bool, ...] = ()  # per agent: still in the episode after this step (empty: all are)


class MultiAgentEnv:
    """Interface of one environment copy. Observations and actions are per agent, in spec order."""

    spec: EnvSpec

    def reset(self, seed: int | None = None) -> tuple[list[np.ndarray], np.ndarray]:
        raise NotImplementedError

    def step(self, actions: list[np.ndarray]) -> StepResult:
        raise NotImplementedError

    @property
    def active(self) -> tuple[bool, ...]:
        """Per agent, whether it acts on the current observations (False once it has left the episode)."""
        return (True,) * len(self.spec.agents)

    @property
    def render_modes(self) -> tuple[str, ...]:
        """The render modes the env declares (`rgb_array` makes recordings possible)."""
        return ()

    def check(self) -> None:
        """Exercise the env (reset, step, reset) so that a broken contract fails before training."""

    def render(self) -> np.ndarray:
        """An RGB frame, uint8 [H, W, 3]."""
        raise NotImplementedError

    def torso_xy(self) -> np.ndarray:
        """The robot's torso (x, y) position, float64 [2] (MuJoCo robots only; for state coverage)."""
        raise NotImplementedError

    def close(self) -> None:
        pass
