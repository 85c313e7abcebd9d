"""One agent's contract, defined once: what its policy takes and what it gives.

`AgentSpec` is what an environment declares about one of its agents: its name, the sizes of its
observation and action, and the action bounds. `AgentContract` adds what a policy for that agent
fixes: K, the number of denoising steps (so the noise input is [K+1, B, d_a]), and the environment
it was trained for. `action = pi(obs[B, obs_dim], noise[K+1, B, act_dim])`, in the bounds.

Everything else derives from these two classes: the export metadata and manifest (omad.runtime.schema,
whose `ModelInfo` is a contract plus provenance), the GetSpec reply of a server (omad.serve), the
check that a reloaded model keeps the contract of the one it replaces, and the check that each
policy of a team fits the environment before an evaluation steps it (omad.evaluation).

Outside Python (metadata keys, manifest entries, the wire) the agent's name is spelled "agent", and
the noise input's first axis `noise_steps` = K + 1 is written out beside K: see `record`.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Protocol

import numpy as np

from omad.core.errors import OmadError

# Field name -> its key in records (export metadata, manifests, the wire); the others keep their name.
_RECORD_KEYS = {"name": "agent"}


class ContractError(OmadError, ValueError):
    """A contract that cannot hold (bounds of the wrong length, a negative K, a malformed record)."""


@dataclass(frozen=True)
class AgentSpec:
    name: str
    obs_dim: int
    act_dim: int
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]


class DescribesAgent(Protocol):
    """A policy object that carries its contract but the environment's id (a torch AgentPolicy)."""

    @property
    def name(self) -> str: ...
    @property
    def obs_dim(self) -> int: ...
    @property
    def act_dim(self) -> int: ...
    @property
    def action_low(self) -> Sequence[float]: ...
    @property
    def action_high(self) -> Sequence[float]: ...
    @property
    def denoising_steps(self) -> int: ...


@dataclass(frozen=True)
class AgentContract(AgentSpec):
    denoising_steps: int  # K
    env_id: str  # "" where a source does not say (then no environment check can use it)

    def __post_init__(self) -> None:
        where = f"agent {self.name!r}"
        if not isinstance(self.name, str) or not self.name:
            raise ContractError(f"an agent's name must be a non-empty string, got {self.name!r}")
        for field in ("obs_dim", "act_dim"):
            value = getattr(self, field)
            if not _is_int(value) or value < 1:
                raise ContractError(f"{where}: {field} must be an integer >= 1, got {value!r}")
        if not _is_int(self.denoising_steps) or self.denoising_steps < 0:
            raise ContractError(f"{where}: denoising_steps (K) must be an integer >= 0, got {self.denoising_steps!r}")
        for field in ("action_low", "action_high"):
            bounds = getattr(self, field)
            if not isinstance(bounds, tuple) or len(bounds) != self.act_dim:
                raise ContractError(f"{where}: {field} must be a tuple of act_dim = {self.act_dim} numbers")
        if not np.all(np.asarray(self.action_low) <= np.asarray(self.action_high)):
            raise ContractError(f"{where}: action_low {self.action_low} is above action_high {self.action_high}")
        if not isinstance(self.env_id, str):
            raise ContractError(f"{where}: env_id must be a string, got {self.env_id!r}")

    @property
    def noise_steps(self) -> int:
        """K + 1: the noise input's first axis (the prior draw, then one per denoising step)."""
        return self.denoising_steps + 1

    @classmethod
    def of(cls, policy: DescribesAgent, env_id: str) -> AgentContract:
        return AgentContract(
            name=policy.name,
            obs_dim=int(policy.obs_dim),
            act_dim=int(policy.act_dim),
            action_low=tuple(float(x) for x in policy.action_low),
            action_high=tuple(float(x) for x in policy.action_high),
            denoising_steps=int(policy.denoising_steps),
            env_id=env_id,
        )

    @property
    def contract(self) -> AgentContract:
        """The bare contract (of a subclass that adds more, such as the runtime's ModelInfo)."""
        return AgentContract(**contract_values(self))

    @property
    def spec(self) -> AgentSpec:
        """The part an environment declares."""
        return AgentSpec(**{f.name: getattr(self, f.name) for f in fields(AgentSpec)})

    def record(self) -> dict[str, Any]:
        """The contract as its flat record: the keys of export metadata, manifests and the wire."""
        out = {record_key(f.name): getattr(self, f.name) for f in fields(AgentContract)}
        out["noise_steps"] = self.noise_steps
        return out

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> AgentContract:
        """The inverse of `record`: checks types, and that noise_steps is K + 1."""
        return AgentContract(**values_from_record(AgentContract, record))

    def differences(self, other: AgentContract) -> dict[str, tuple[Any, Any]]:
        """Record key -> (this value, the other's) for every part of the contract that differs."""
        return {
            record_key(f.name): (getattr(self, f.name), getattr(other, f.name))
            for f in fields(AgentContract)
            if getattr(self, f.name) != getattr(other, f.name)
        }

    def misfits(self, env_id: str, agent: AgentSpec) -> list[str]:
        """Why this policy cannot act for `agent` of environment `env_id` (empty: it can). Bounds are
        compared at float32 precision, the precision the policies compute in."""
        problems = []
        if self.env_id and self.env_id != env_id:
            problems.append(f"trained for env {self.env_id!r}, not {env_id!r}")
        if self.name != agent.name:
            problems.append(f"a policy for agent {self.name!r}, not {agent.name!r} (check the order of the sources)")
        if (self.obs_dim, self.act_dim) != (agent.obs_dim, agent.act_dim):
            problems.append(f"obs/act sizes {self.obs_dim}/{self.act_dim}, env wants {agent.obs_dim}/{agent.act_dim}")
        elif not (
            _same_float32(self.action_low, agent.action_low) and _same_float32(self.action_high, agent.action_high)
        ):
            problems.append(
                f"action bounds {list(self.action_low)}..{list(self.action_high)}, "
                f"env has {list(agent.action_low)}..{list(agent.action_high)}"
            )
        return problems


def record_key(field: str) -> str:
    """A contract field's key in records."""
    return _RECORD_KEYS.get(field, field)


# The keys of a contract's record, in order.
CONTRACT_KEYS: tuple[str, ...] = (*(record_key(f.name) for f in fields(AgentContract)), "noise_steps")


def contract_values(contract: AgentContract) -> dict[str, Any]:
    """Field name -> value of the contract's own fields (to build a subclass instance from a contract)."""
    return {f.name: getattr(contract, f.name) for f in fields(AgentContract)}


def values_from_record(cls: type[AgentContract], record: Mapping[str, Any], skip: Sequence[str] = ()) -> dict[str, Any]:
    """Field name -> value of `cls`'s fields (a contract, or a subclass of it) read from a record, each
    checked against its declared type (text, integer, or bounds: a list of numbers, made a tuple of
    floats); noise_steps must be K + 1. Fields named in `skip` are left to the caller."""
    types = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in fields(cls):
        if f.name in skip:
            continue
        key = record_key(f.name)
        if key not in record:
            raise ContractError(f"{key!r} is missing")
        value, kind = record[key], types[f.name]
        if kind is str:
            if not isinstance(value, str):
                raise ContractError(f"{key!r} must be text, got {value!r}")
        elif kind is int:
            if not _is_int(value):
                raise ContractError(f"{key!r} must be an integer, got {value!r}")
            value = int(value)
        else:  # the bounds
            if isinstance(value, (str, bytes, Mapping)) or not _is_sequence_of_numbers(value):
                raise ContractError(f"{key!r} must be a list of numbers, got {value!r}")
            value = tuple(float(v) for v in value)
        values[f.name] = value
    noise_steps = record.get("noise_steps")
    if not _is_int(noise_steps) or noise_steps != values["denoising_steps"] + 1:
        raise ContractError(f"K = {values['denoising_steps']} but {noise_steps!r} noise steps (expected K + 1)")
    return values


def _is_sequence_of_numbers(value: Any) -> bool:
    try:
        return all(_is_number(v) for v in value)
    except TypeError:
        return False


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _same_float32(a: Sequence[float], b: Sequence[float]) -> bool:
    return len(a) == len(b) and bool(np.array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32)))
