"""One adapter from any PettingZoo parallel env to omad's `MultiAgentEnv`.

What it guarantees (each is checked, and a breach is one line naming the env and the agent):
- agents in `possible_agents` order; each agent's observation and action space is a Box (any shape,
  flattened), actions bounded; the spaces are the same after every reset;
- observations and state are 1-D float32; state = `env.state()` when the env implements it, else the
  agents' observations concatenated (`EnvSpec.state_source` says which), of a fixed size;
- actions are clipped to their Box bounds and reshaped to the space's shape before reaching the env;
- reward = mean of the rewards of the agents that took part in the step;
- an agent leaves when it is terminated, truncated or no longer listed: from then on it is sent no
  action, its observation is zeros (never its last one) and `StepResult.active` marks it inactive;
- the episode ends when every agent has left: `terminated` if one of the agents that left on the
  last step was terminated (or dropped without a flag), else `truncated` (a time limit: bootstrapped);
  a state() that fails on a terminal step gives zeros there (nothing bootstraps from a terminal state);
- `reset(seed=s)` seeds the env, so the same seed and actions replay the same episode.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from omad.core.envs.base import AgentSpec, EnvSpec, MultiAgentEnv, StepResult
from omad.core.errors import OmadError


class EnvContractError(OmadError, ValueError):
    """The environment breaks what omad needs of it (a space, an agent list, the state's size)."""


def one_line(err: BaseException) -> str:
    """An exception as `Type: first line`, for messages that must stay on one line."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


def episode_end_flags(terminations: Mapping[str, bool], truncations: Mapping[str, bool]) -> tuple[bool, bool]:
    """(terminated, truncated) of agents that end on the same step: a true terminal state wins over a
    time limit, so at most one flag is set and a replay buffer never bootstraps through a fall."""
    terminated = any(bool(v) for v in terminations.values())
    truncated = any(bool(v) for v in truncations.values()) and not terminated
    return terminated, truncated


@dataclass(frozen=True)
class _AgentSpaces:
    obs_shape: tuple[int, ...]
    act_shape: tuple[int, ...]
    act_dtype: np.dtype
    low: np.ndarray  # flat, in the space's dtype
    high: np.ndarray

    def same_as(self, other: _AgentSpaces) -> bool:
        return (
            self.obs_shape == other.obs_shape
            and self.act_shape == other.act_shape
            and np.array_equal(self.low, other.low)
            and np.array_equal(self.high, other.high)
        )


def _describe(space: Any) -> str:
    return " ".join(repr(space).split())


def _agent_spaces(env_id: str, env: Any, name: str) -> _AgentSpaces:
    from gymnasium import spaces

    try:
        obs_space, act_space = env.observation_space(name), env.action_space(name)
    except Exception as err:  # noqa: BLE001 - an env's space lookup failing is reported in one line
        raise EnvContractError(f"env {env_id}: agent {name}'s spaces cannot be read ({one_line(err)})") from None
    if not isinstance(obs_space, spaces.Box):
        raise EnvContractError(
            f"env {env_id}: agent {name} has observation space {_describe(obs_space)}; omad needs a Box"
        )
    if not isinstance(act_space, spaces.Box) or not np.issubdtype(act_space.dtype, np.floating):
        raise EnvContractError(
            f"env {env_id}: agent {name} has action space {_describe(act_space)}; "
            "omad trains continuous actions and needs a float Box"
        )
    low = np.asarray(act_space.low).reshape(-1)
    high = np.asarray(act_space.high).reshape(-1)
    unbounded = np.flatnonzero(~(np.isfinite(low) & np.isfinite(high)))
    if unbounded.size:
        raise EnvContractError(
            f"env {env_id}: agent {name}'s action space {_describe(act_space)} is unbounded in dims "
            f"{unbounded.tolist()}; omad needs finite bounds (rescale the actions in a wrapper)"
        )
    if np.any(low > high):
        raise EnvContractError(f"env {env_id}: agent {name}'s action space has low > high: {_describe(act_space)}")
    return _AgentSpaces(tuple(obs_space.shape), tuple(act_space.shape), np.dtype(act_space.dtype), low, high)


class ParallelEnvAdapter(MultiAgentEnv):
    def __init__(
        self,
        env_id: str,
        parallel_env: Any,
        options: dict[str, Any],
        reference: str = "",
        render_mode: str | None = None,
    ):
        self._env = parallel_env
        self._env_id = env_id
        self._render_mode = render_mode
        for attribute in ("possible_agents", "reset", "step", "observation_space", "action_space"):
            if not hasattr(parallel_env, attribute):
                raise EnvContractError(
                    f"env {env_id}: the factory returned a {type(parallel_env).__name__} without {attribute!r}; "
                    "it must return a PettingZoo ParallelEnv"
                )
        self._names = list(parallel_env.possible_agents)
        if not self._names or len(set(self._names)) != len(self._names):
            raise EnvContractError(f"env {env_id}: possible_agents must list distinct agents, got {self._names!r}")
        self._spaces = {name: _agent_spaces(env_id, parallel_env, name) for name in self._names}
        agents = tuple(self._agent_spec(name) for name in self._names)
        state_source, state_dim = self._probe_state(sum(a.obs_dim for a in agents))
        self.spec = EnvSpec(
            env_id=env_id,
            agents=agents,
            state_dim=state_dim,
            max_episode_steps=self._max_episode_steps(options),
            options=dict(options),
            state_source=state_source,
            reference=reference or env_id,
        )
        self._active = dict.fromkeys(self._names, False)
        self._needs_reset = True

    # -- the spec ------------------------------------------------------------------------------
    def _agent_spec(self, name: str) -> AgentSpec:
        spaces = self._spaces[name]
        return AgentSpec(
            name=name,
            obs_dim=int(np.prod(spaces.obs_shape)),
            act_dim=int(spaces.low.size),
            action_low=tuple(float(x) for x in spaces.low),
            action_high=tuple(float(x) for x in spaces.high),
        )

    def _probe_state(self, obs_total: int) -> tuple[str, int]:
        """("state", its size) when the env implements state(), else ("observations", their total size)."""
        state_space = getattr(self._env, "state_space", None)
        if state_space is not None and getattr(state_space, "shape", None) is not None:
            return "state", int(np.prod(state_space.shape))
        try:
            return "state", int(np.asarray(self._env.state()).size)
        except NotImplementedError:
            return "observations", obs_total
        except Exception:  # noqa: BLE001 - some envs compute state() only after a reset: try once more
            pass
        self._env.reset(seed=0)
        try:
            return "state", int(np.asarray(self._env.state()).size)
        except NotImplementedError:
            return "observations", obs_total
        except Exception as err:  # noqa: BLE001 - reported in one line
            raise EnvContractError(f"env {self._env_id}: state() raised {one_line(err)}") from None

    def _max_episode_steps(self, options: dict[str, Any]) -> int:
        """The episode's time limit where the env says it (0 = not known): an env attribute
        `max_episode_steps` or PettingZoo's `max_cycles`, else the option of that name."""
        for holder in (self._env, getattr(self._env, "unwrapped", None), options):
            for name in ("max_episode_steps", "max_cycles"):
                value = holder.get(name) if isinstance(holder, dict) else getattr(holder, name, None)
                if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                    return value
        return 0

    # -- the interface -------------------------------------------------------------------------
    def torso_xy(self) -> np.ndarray:
        """MaMuJoCo: the robot's torso (x, y), `qpos[:2]` of the MuJoCo model under the env."""
        single_agent_env = getattr(self._env, "single_agent_env", None)
        if single_agent_env is None:
            raise NotImplementedError(f"{self.spec.env_id} has no MuJoCo torso")
        return np.array(single_agent_env.unwrapped.data.qpos[:2], dtype=np.float64)

    def reset(self, seed: int | None = None) -> tuple[list[np.ndarray], np.ndarray]:
        raw_obs, _infos = self._env.reset(seed=seed)
        self._check_spaces()
        listed = self._listed()
        self._active = {name: name in raw_obs and name in listed for name in self._names}
        self._needs_reset = not any(self._active.values())
        if self._needs_reset:
            raise EnvContractError(f"env {self._env_id}: reset() returned no observation for any agent")
        obs = self._observations(raw_obs, self._active)
        return obs, self._state(obs)

    def step(self, actions: list[np.ndarray]) -> StepResult:
        if self._needs_reset:
            raise RuntimeError("the episode has ended (or never started): call reset() first")
        if len(actions) != len(self._names):
            raise ValueError(f"expected {len(self._names)} actions, got {len(actions)}")
        acting = [name for name in self._names if self._active[name]]
        env_actions = {name: self._to_env(name, action) for name, action in zip(self._names, actions) if name in acting}
        raw_obs, rewards, terminations, truncations, _infos = self._env.step(env_actions)
        present = [rewards[name] for name in acting if name in rewards]
        team_reward = float(np.mean(present)) if present else 0.0

        listed = self._listed()
        leaving = {
            name: (bool(terminations.get(name, False)), bool(truncations.get(name, False)))
            for name in acting
            if terminations.get(name, False)
            or truncations.get(name, False)
            or name not in raw_obs
            or name not in listed
        }
        # The step's observation of an agent that just left is its last true one (what a time limit
        # bootstraps from); it is zeros when the env gave none.
        obs = self._observations(raw_obs, {name: name in acting for name in self._names})
        for name in leaving:
            self._active[name] = False
        terminated = truncated = False
        if not any(self._active.values()):
            # dropped without a flag counts as terminated: nothing to bootstrap from
            terminated, truncated = episode_end_flags(
                {name: term or not trunc for name, (term, trunc) in leaving.items()},
                {name: trunc for name, (_term, trunc) in leaving.items()},
            )
            self._needs_reset = True
        return StepResult(
            obs=obs,
            state=self._state(obs, terminal=terminated),
            reward=team_reward,
            terminated=terminated,
            truncated=truncated,
            active=self.active,
        )

    @property
    def render_modes(self) -> tuple[str, ...]:
        return tuple(getattr(self._env, "metadata", {}).get("render_modes", ()))

    @property
    def active(self) -> tuple[bool, ...]:
        return tuple(self._active[name] for name in self._names)

    def check(self) -> None:
        """Two seeded resets and a step at the middle of the bounds: spaces, observation and state
        sizes are checked on the way (each breach raises EnvContractError naming the agent)."""
        self.reset(seed=0)
        if not self._needs_reset:
            self.step([(np.array(a.action_low) + np.array(a.action_high)) / 2 for a in self.spec.agents])
        self.reset(seed=1)

    def render(self) -> np.ndarray:
        if self._render_mode != "rgb_array":
            raise RuntimeError("render() needs the env made with render_mode='rgb_array'")
        return np.ascontiguousarray(self._env.render(), dtype=np.uint8)

    def close(self) -> None:
        self._env.close()

    # -- helpers -------------------------------------------------------------------------------
    def _listed(self) -> set[str]:
        agents = getattr(self._env, "agents", None)
        return set(self._names) if agents is None else set(agents)

    def _check_spaces(self) -> None:
        if list(self._env.possible_agents) != self._names:
            raise EnvContractError(
                f"env {self._env_id}: possible_agents changed between resets: {self._names} -> "
                f"{list(self._env.possible_agents)}"
            )
        for name in self._names:
            now = _agent_spaces(self._env_id, self._env, name)
            if not now.same_as(self._spaces[name]):
                raise EnvContractError(
                    f"env {self._env_id}: agent {name}'s spaces changed between resets: "
                    f"{_describe(self._env.observation_space(name))}, {_describe(self._env.action_space(name))}"
                )

    def _to_env(self, name: str, action: np.ndarray) -> np.ndarray:
        spaces = self._spaces[name]
        flat = np.asarray(action, dtype=spaces.act_dtype).reshape(-1)
        if flat.size != spaces.low.size:
            raise ValueError(f"action of {name} must have {spaces.low.size} values, got {flat.size}")
        return np.clip(flat, spaces.low, spaces.high).reshape(spaces.act_shape)

    def _observations(self, raw_obs: Mapping[str, Any], taking_part: Mapping[str, bool]) -> list[np.ndarray]:
        out = []
        for agent in self.spec.agents:
            if taking_part[agent.name] and agent.name in raw_obs:
                obs = np.asarray(raw_obs[agent.name], dtype=np.float32).reshape(-1)
                if obs.size != agent.obs_dim:
                    raise EnvContractError(
                        f"env {self._env_id}: agent {agent.name}'s observation has {obs.size} values, "
                        f"its observation space {agent.obs_dim}"
                    )
                out.append(obs)
            else:
                out.append(np.zeros(agent.obs_dim, np.float32))
        return out

    def _state(self, obs: list[np.ndarray], terminal: bool = False) -> np.ndarray:
        if self.spec.state_source == "observations":
            return np.concatenate(obs)
        try:
            state = np.asarray(self._env.state(), dtype=np.float32).reshape(-1)
        except Exception as err:  # noqa: BLE001 - reported in one line, or zeros at a terminal state
            if terminal:  # some envs cannot describe a finished episode (a removed body); nothing bootstraps from it
                return np.zeros(self.spec.state_dim, np.float32)
            raise EnvContractError(f"env {self._env_id}: state() raised {one_line(err)}") from None
        if state.size != self.spec.state_dim:
            raise EnvContractError(
                f"env {self._env_id}: state() returned {state.size} values, {self.spec.state_dim} before"
            )
        return state
