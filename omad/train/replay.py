"""Replay buffer with n-step returns (numpy only).

Each stored transition is (state, obs, joint action, n-step return R, bootstrap discount, done,
next state, next obs). For a window of m <= n steps, R = sum_j gamma^j r_j and the bootstrap
discount is gamma^m. `done` is set only on true termination: a time-limit truncation keeps the
bootstrap from the true next observation.

`RowLayout` lays one transition out as one float32 row (the fields side by side, in storage order):
a device copy of the buffer (omad/train/cuda.py) keeps its rows that way, so one gather yields a
whole batch and each field is a view of it.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, NamedTuple, TypeVar

import numpy as np

T = TypeVar("T")
U = TypeVar("U")


class ReplaySample(NamedTuple, Generic[T]):
    """A batch of transitions, batch first: numpy arrays from `ReplayBuffer.sample`, tensors once
    moved to the learner (`map`). The field order is the storage order."""

    state: T  # [B, d_s]
    obs: T  # [B, n, d_o_max]
    action: T  # [B, sum d_a], the joint action
    reward: T  # [B], the n-step return
    discount: T  # [B], gamma^m for a window of m steps
    done: T  # [B], 1.0 on true termination
    next_state: T  # [B, d_s]
    next_obs: T  # [B, n, d_o_max]

    def map(self, fn: Callable[[T], U]) -> ReplaySample[U]:
        return ReplaySample(*(fn(v) for v in self))


FIELDS = ReplaySample._fields


def field_shapes(shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Per-transition shape of every stored field, from the state, obs and joint action shapes."""
    return {
        "state": tuple(shapes["state"]),
        "obs": tuple(shapes["obs"]),
        "action": tuple(shapes["action"]),
        "reward": (),
        "discount": (),
        "done": (),
        "next_state": tuple(shapes["state"]),
        "next_obs": tuple(shapes["obs"]),
    }


class RowLayout:
    """One transition as one float32 row: field k occupies columns [offset_k, offset_k + size_k)."""

    def __init__(self, shapes: dict[str, tuple[int, ...]]):
        self.shapes = field_shapes(shapes)
        self.offsets: dict[str, int] = {}
        width = 0
        for k in FIELDS:
            self.offsets[k] = width
            width += math.prod(self.shapes[k])
        self.width = width

    def unpack(self, rows):
        """rows [B, width] (numpy array or torch tensor) -> ReplaySample of views of it, no copies."""
        fields = []
        for k in FIELDS:
            shape, start = self.shapes[k], self.offsets[k]
            if shape:
                fields.append(rows[:, start : start + math.prod(shape)].reshape(rows.shape[0], *shape))
            else:
                fields.append(rows[:, start])
        return ReplaySample(*fields)

    def pack(self, data: dict[str, np.ndarray], start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of per-field arrays as one [stop - start, width] float32 array."""
        n = stop - start
        return np.concatenate([data[k][start:stop].reshape(n, -1) for k in FIELDS], axis=1)


@dataclass
class Transition:
    state: np.ndarray
    obs: np.ndarray
    action: np.ndarray
    reward: float
    next_state: np.ndarray
    next_obs: np.ndarray
    terminated: bool
    truncated: bool


class ReplayBuffer:
    def __init__(self, capacity: int, shapes: dict[str, tuple[int, ...]], num_envs: int, n_step: int, gamma: float):
        self.capacity, self.n_step, self.gamma = capacity, n_step, gamma
        self.layout = RowLayout(shapes)
        # Storage grows as it fills (up to capacity), so a large buffer_size costs memory only when used.
        self.data = {k: np.zeros((0, *s), np.float32) for k, s in self.layout.shapes.items()}
        self.pos, self.size = 0, 0
        self.pending: list[deque[Transition]] = [deque() for _ in range(num_envs)]
        # For copies of the storage (omad/train/cuda.py): transitions written so far, and a count of
        # wholesale replacements (`load_state`), after which a copy must start over.
        self.writes, self.loads = 0, 0

    def __len__(self) -> int:
        return self.size

    def add(self, env_index: int, t: Transition) -> None:
        """Add one env step of copy `env_index`; n-step windows are written as they complete."""
        window = self.pending[env_index]
        window.append(t)
        if t.terminated or t.truncated:
            while window:  # the episode ended: every pending start gets a shortened window
                self._write(window)
                window.popleft()
        elif len(window) == self.n_step:
            self._write(window)
            window.popleft()

    def _write(self, window: deque[Transition]) -> None:
        first, last = window[0], window[-1]
        ret = sum(self.gamma**j * t.reward for j, t in enumerate(window))
        i = self.pos
        self._reserve(i + 1)
        d = self.data
        d["state"][i], d["obs"][i], d["action"][i] = first.state, first.obs, first.action
        d["reward"][i] = ret
        d["discount"][i] = self.gamma ** len(window)
        d["done"][i] = float(last.terminated)
        d["next_state"][i], d["next_obs"][i] = last.next_state, last.next_obs
        self.pos = (self.pos + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)
        self.writes += 1

    def _reserve(self, n: int) -> None:
        allocated = len(self.data["reward"])
        if n > allocated:
            grown = min(self.capacity, max(n, 2 * allocated, 1024))
            for k, v in self.data.items():
                bigger = np.zeros((grown, *v.shape[1:]), np.float32)
                bigger[:allocated] = v
                self.data[k] = bigger

    def sample_indices(self, rng: np.random.Generator, batch_size: int) -> np.ndarray:
        """The rows a sample takes: uniform over the stored transitions, with replacement."""
        return rng.integers(0, self.size, size=batch_size)

    def sample(self, rng: np.random.Generator, batch_size: int) -> ReplaySample[np.ndarray]:
        idx = self.sample_indices(rng, batch_size)
        return ReplaySample(*(self.data[k][idx] for k in FIELDS))

    # -- checkpointing: plain arrays, no pickle -------------------------------------------------
    def state_arrays(self) -> dict[str, np.ndarray]:
        arrays = {f"buffer.{k}": v[: self.size] for k, v in self.data.items()}
        for e, window in enumerate(self.pending):
            for j, t in enumerate(window):
                for name in ("state", "obs", "action", "next_state", "next_obs"):
                    arrays[f"pending.{e}.{j}.{name}"] = np.asarray(getattr(t, name), np.float32)
                arrays[f"pending.{e}.{j}.scalars"] = np.array([t.reward, t.terminated, t.truncated], np.float64)
        return arrays

    def state_meta(self) -> dict:
        return {"pos": self.pos, "size": self.size, "pending": [len(w) for w in self.pending]}

    def load_state(self, arrays: dict[str, np.ndarray], meta: dict) -> None:
        self.pos, self.size = int(meta["pos"]), int(meta["size"])
        self.loads += 1
        self._reserve(self.size)
        for k in FIELDS:
            self.data[k][: self.size] = arrays[f"buffer.{k}"]
        for e, count in enumerate(meta["pending"]):
            self.pending[e].clear()
            for j in range(count):
                p = f"pending.{e}.{j}."
                reward, terminated, truncated = arrays[p + "scalars"]
                self.pending[e].append(
                    Transition(
                        arrays[p + "state"],
                        arrays[p + "obs"],
                        arrays[p + "action"],
                        float(reward),
                        arrays[p + "next_state"],
                        arrays[p + "next_obs"],
                        bool(terminated),
                        bool(truncated),
                    )
                )
