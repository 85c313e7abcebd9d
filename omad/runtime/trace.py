"""Evaluation traces (`omad eval --trace FILE`), read back by `omad replay FILE`.

A trace holds every step of an evaluation: each agent's observations, the noise it was given, the
actions it answered, the sha256 (and team id) of the model that computed them, and the latency of
the call. It is one `.npz` file (numpy arrays, no pickled objects) read with
`np.load(..., allow_pickle=False)`:

    meta            uint8   the JSON header below, UTF-8
    obs_<i>         float32 [T, E, d_o_i]        agent i's observations at each of the T steps (E episodes)
    noise_<i>       float32 [T, K_i + 1, E, d_a_i]
    action_<i>      float32 [T, E, d_a_i]
    latency_us_<i>  float64 [T]                  the agent's call, measured by the evaluator
    model_<i>       int32   [T]                  index into the header's agents[i].models

The header: {"format": "omad-trace", "version": 1, "source": "grpc" | "onnx" | "torch", "where": the
servers, export dir or run dir, "env", "seed", "episodes", "noise": "stochastic" | "zero", "steps": T,
"mixed_steps": steps whose replies came from models of more than one team, "agents": [{"name",
"obs_dim", "act_dim", "noise_steps", "models": [{"sha256", "team_id"}, ...]}, ...]} in env order.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from omad.core.errors import OmadError
from omad.runtime.team import ModelRef

TRACE_FORMAT = "omad-trace"
TRACE_VERSION = 1
ARRAYS = {"obs": np.float32, "noise": np.float32, "action": np.float32, "latency_us": np.float64, "model": np.int32}


class TraceError(OmadError):
    pass


@dataclass
class AgentTrace:
    name: str
    obs_dim: int
    act_dim: int
    noise_steps: int
    models: list[ModelRef] = field(default_factory=list)
    obs: list[np.ndarray] = field(default_factory=list)
    noise: list[np.ndarray] = field(default_factory=list)
    action: list[np.ndarray] = field(default_factory=list)
    latency_us: list[float] = field(default_factory=list)
    model: list[int] = field(default_factory=list)

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            name: np.asarray(np.stack(values) if name in ("obs", "noise", "action") else values, dtype)
            for name, dtype in ARRAYS.items()
            for values in [getattr(self, name)]
        }


@dataclass
class Trace:
    """A trace in memory: the header fields and each agent's per-step records."""

    meta: dict[str, Any]
    agents: list[AgentTrace]

    @property
    def steps(self) -> int:
        return len(self.agents[0].obs) if self.agents else 0

    def step(self, t: int) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
        """(obs, noise, actions) per agent at step t."""
        return [a.obs[t] for a in self.agents], [a.noise[t] for a in self.agents], [a.action[t] for a in self.agents]


class TraceRecorder:
    """Collects the steps of one evaluation; `save` writes them."""

    def __init__(self, agents: Sequence[tuple[str, int, int, int]]):
        """agents: (name, obs_dim, act_dim, noise_steps) in env order."""
        self.trace = Trace({}, [AgentTrace(*agent) for agent in agents])

    def record(
        self,
        obs: Sequence[np.ndarray],
        noise: Sequence[np.ndarray],
        actions: Sequence[np.ndarray],
        latency_us: Sequence[float],
        models: Sequence[ModelRef],
    ) -> None:
        for i, agent in enumerate(self.trace.agents):
            agent.obs.append(np.array(obs[i], np.float32))
            agent.noise.append(np.array(noise[i], np.float32))
            agent.action.append(np.array(actions[i], np.float32))
            agent.latency_us.append(float(latency_us[i]))
            if models[i] not in agent.models:
                agent.models.append(models[i])
            agent.model.append(agent.models.index(models[i]))

    def save(self, path: str | Path, **meta: Any) -> Path:
        trace = self.trace
        if not trace.steps:
            raise TraceError("no step was recorded; nothing to write")
        header = {
            "format": TRACE_FORMAT,
            "version": TRACE_VERSION,
            **meta,
            "steps": trace.steps,
            "agents": [
                {
                    "name": a.name,
                    "obs_dim": a.obs_dim,
                    "act_dim": a.act_dim,
                    "noise_steps": a.noise_steps,
                    "models": [{"sha256": m.sha256, "team_id": m.team_id} for m in a.models],
                }
                for a in trace.agents
            ],
        }
        arrays: dict[str, np.ndarray] = {"meta": np.frombuffer(json.dumps(header).encode(), np.uint8)}
        for i, agent in enumerate(trace.agents):
            arrays.update({f"{name}_{i}": value for name, value in agent.arrays().items()})
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()  # np.savez adds ".npz" to a name without it; a buffer keeps the name given
        np.savez_compressed(buffer, allow_pickle=False, **arrays)
        path.write_bytes(buffer.getvalue())
        return path


def load_trace(path: str | Path) -> Trace:
    """Read and check a trace file; TraceError (one line) for anything that is not one."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except FileNotFoundError:
        raise TraceError(f"{path}: no such trace file") from None
    except (OSError, ValueError, EOFError) as err:  # not a zip, or an array that needs pickle
        raise TraceError(f"{path}: not an omad trace ({err})") from None
    try:
        meta = json.loads(bytes(arrays.pop("meta")).decode())
    except KeyError:
        raise TraceError(f"{path}: not an omad trace (no header)") from None
    except (UnicodeDecodeError, ValueError) as err:
        raise TraceError(f"{path}: unreadable trace header ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != TRACE_FORMAT:
        raise TraceError(f"{path}: not an omad trace")
    if meta.get("version") != TRACE_VERSION:
        raise TraceError(f"{path}: trace version {meta.get('version')!r}, this omad reads version {TRACE_VERSION}")
    try:
        agents = [_agent(path, i, entry, arrays, int(meta["steps"])) for i, entry in enumerate(meta["agents"])]
    except (KeyError, TypeError, ValueError) as err:
        raise TraceError(f"{path}: malformed trace header ({err!r})") from None
    if not agents:
        raise TraceError(f"{path}: the trace has no agents")
    return Trace(meta, agents)


def _agent(path: Path, i: int, entry: dict, arrays: dict[str, np.ndarray], steps: int) -> AgentTrace:
    agent = AgentTrace(
        str(entry["name"]),
        int(entry["obs_dim"]),
        int(entry["act_dim"]),
        int(entry["noise_steps"]),
        [ModelRef(str(m["sha256"]), str(m["team_id"])) for m in entry["models"]],
    )
    got = {}
    for name, dtype in ARRAYS.items():
        key = f"{name}_{i}"
        if key not in arrays:
            raise TraceError(f"{path}: array {key!r} is missing")
        value = arrays[key]
        if value.dtype != dtype or len(value) != steps:
            raise TraceError(
                f"{path}: array {key!r} is {value.dtype}[{len(value)}], expected {np.dtype(dtype)}[{steps}]"
            )
        got[name] = value
    batch = got["obs"].shape[1] if got["obs"].ndim == 3 else -1
    expected = {
        "obs": (steps, batch, agent.obs_dim),
        "noise": (steps, agent.noise_steps, batch, agent.act_dim),
        "action": (steps, batch, agent.act_dim),
        "latency_us": (steps,),
        "model": (steps,),
    }
    for name, shape in expected.items():
        if got[name].shape != shape or batch < 1:
            raise TraceError(f"{path}: {name}_{i} has shape {list(got[name].shape)}, expected {list(shape)}")
    if steps and (got["model"].min() < 0 or got["model"].max() >= len(agent.models)):
        raise TraceError(f"{path}: model_{i} indexes past the {len(agent.models)} models of agent {agent.name}")
    agent.obs, agent.noise, agent.action = list(got["obs"]), list(got["noise"]), list(got["action"])
    agent.latency_us, agent.model = got["latency_us"].tolist(), got["model"].tolist()
    return agent
