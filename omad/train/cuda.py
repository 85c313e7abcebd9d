"""The learner's fast path on a CUDA device: replay samples gathered on the device, and OMAD's whole
update captured as CUDA graphs.

Replay (`DeviceReplay`): the replay buffer (numpy, omad/train/replay.py) stays the record that
checkpoints save; a copy of its rows, one float32 row per transition (`RowLayout`), lives on the
device when the full buffer takes at most DEVICE_REPLAY_SHARE of the device's free memory, else in
pinned host memory. Before each sample the rows written since the last one are uploaded (one copy
per contiguous run of rows), then one gather writes the batch into one [B, width] tensor whose
fields are views: no per-field copies. The indices come from the buffer's own rule
(`ReplayBuffer.sample_indices`) with the caller's generator, so a device sample holds exactly the
host sample's values.

Update (`GraphedUpdate`): OMAD's update is two fixed kernel sequences, a critic-only update and one
that also steps the actors and the temperature (every `policy_delay` updates). Each is run eagerly a
few times (compiling, when compile is on, and creating the optimizers' state), then captured once
into a CUDA graph and replayed: one launch per update instead of hundreds. The graph reads its batch
from static rows (the sampler writes there directly) and its noise from static buffers filled from
the same generator calls, in the same order, as the eager update, so both compute the same function.
Adam runs with `capturable` on while warming up and capturing, and off otherwise, so checkpoints
resume on any device.

On the CPU none of this is used: the trainer samples from the numpy buffer and updates eagerly or
through torch.compile, exactly as before.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from omad.train.replay import ReplayBuffer, ReplaySample, RowLayout

# The largest share of the device's free memory (at the sampler's start) a full replay copy may take
# on the device; a larger buffer stays in pinned host memory and each batch crosses as one copy.
DEVICE_REPLAY_SHARE = 0.25

Sampler = Callable[[np.random.Generator], ReplaySample[torch.Tensor]]


def make_sampler(
    buffer: ReplayBuffer, device: torch.device, batch_size: int, rows: torch.Tensor | None = None
) -> Sampler:
    """`sampler(rng)` -> a batch of `batch_size` transitions on `device`. On CUDA a `DeviceReplay`
    (writing into `rows` when given: a captured update's static input); elsewhere the numpy sample,
    each field moved with `torch.from_numpy(...).to(device)`."""
    if device.type == "cuda":
        return DeviceReplay(buffer, device, batch_size, rows).sample
    return lambda rng: buffer.sample(rng, batch_size).map(lambda v: torch.from_numpy(v).to(device))


def replay_fits_on_device(nbytes: int, device: torch.device) -> bool:
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= DEVICE_REPLAY_SHARE * free


class DeviceReplay:
    """A copy of a ReplayBuffer's rows on `device` (or in pinned host memory), sampled in one gather.

    on_device: keep the copy on the device; default: when the full buffer fits (`replay_fits_on_device`).
    On a CPU `device` the copy is an ordinary CPU tensor (the same code path, for testing).
    """

    def __init__(
        self,
        buffer: ReplayBuffer,
        device: torch.device | str,
        batch_size: int,
        rows: torch.Tensor | None = None,
        on_device: bool | None = None,
    ):
        self.buffer, self.device, self.batch_size = buffer, torch.device(device), batch_size
        layout: RowLayout = buffer.layout
        cuda = self.device.type == "cuda"
        if on_device is None:
            on_device = not cuda or replay_fits_on_device(buffer.capacity * layout.width * 4, self.device)
        self.on_device = on_device
        self.pinned = cuda and not on_device
        self.storage = self._empty(0)
        if rows is None:
            rows = torch.empty((batch_size, layout.width), dtype=torch.float32, device=self.device)
        if (
            rows.shape != (batch_size, layout.width)
            or rows.device.type != self.device.type
            or rows.dtype != torch.float32
        ):
            raise ValueError(
                f"sample rows must be float32 [{batch_size}, {layout.width}] on {self.device}, "
                f"got {rows.dtype} {list(rows.shape)} on {rows.device}"
            )
        self.rows = rows
        self.batch: ReplaySample[torch.Tensor] = layout.unpack(rows)
        self.synced_writes, self.synced_loads = 0, -1  # -1: nothing uploaded yet

    def _empty(self, n: int) -> torch.Tensor:
        where = self.device if self.on_device else torch.device("cpu")
        return torch.empty((n, self.buffer.layout.width), dtype=torch.float32, device=where, pin_memory=self.pinned)

    def sync(self) -> None:
        """Upload the rows written since the last sync (all of them after a `load_state`)."""
        buf = self.buffer
        allocated = len(buf.data["reward"])
        if self.storage.shape[0] < allocated:  # the host buffer grew: grow alike, keeping the uploaded rows
            grown = self._empty(allocated)
            grown[: self.storage.shape[0]].copy_(self.storage)
            self.storage = grown
        new = buf.writes - self.synced_writes
        if buf.loads != self.synced_loads or new >= buf.size:
            self._upload(0, buf.size)
        elif new > 0:  # the last `new` writes end just before `pos`, perhaps wrapping around the ring
            start = (buf.pos - new) % buf.capacity
            if start < buf.pos:
                self._upload(start, buf.pos)
            else:
                self._upload(start, buf.capacity)
                self._upload(0, buf.pos)
        self.synced_writes, self.synced_loads = buf.writes, buf.loads

    def _upload(self, start: int, stop: int) -> None:
        if stop <= start:
            return
        rows = torch.from_numpy(self.buffer.layout.pack(self.buffer.data, start, stop))
        if self.storage.is_cuda:  # from pinned memory, asynchronously (the allocator keeps it until copied)
            self.storage[start:stop].copy_(rows.pin_memory(), non_blocking=True)
        else:
            self.storage[start:stop].copy_(rows)

    def sample(self, rng: np.random.Generator) -> ReplaySample[torch.Tensor]:
        """A batch drawn as `ReplayBuffer.sample` draws it (same indices for the same generator state),
        written into `rows`; the returned fields are views of `rows`, overwritten by the next sample."""
        self.sync()
        idx = torch.from_numpy(self.buffer.sample_indices(rng, self.batch_size))
        if self.storage.device.type == self.device.type:  # "cuda" and "cuda:0" alike
            if self.storage.is_cuda:
                idx = idx.pin_memory().to(self.device, non_blocking=True)
            torch.index_select(self.storage, 0, idx, out=self.rows)
        else:  # pinned host rows: gather on the host, then one copy to the device
            staging = torch.empty((self.batch_size, self.storage.shape[1]), dtype=torch.float32, pin_memory=True)
            torch.index_select(self.storage, 0, idx, out=staging)
            self.rows.copy_(staging, non_blocking=True)
        return self.batch


# -- CUDA graphs of the update ---------------------------------------------------------------------
class GraphableAlgorithm(Protocol):
    """What `GraphedUpdate` needs of an algorithm (omad.train.algos.omad.OMAD)."""

    device: torch.device

    def step(
        self, batch: ReplaySample[torch.Tensor], noise: Callable[[int], torch.Tensor], actor_step: bool
    ) -> dict[str, torch.Tensor]: ...

    def noise(self, batch: int) -> torch.Tensor: ...

    def noise_shape(self, batch: int) -> tuple[int, ...]: ...

    def optimizers(self) -> dict[str, torch.optim.Optimizer]: ...


@dataclass
class Captured:
    graph: torch.cuda.CUDAGraph
    noise: list[torch.Tensor]  # static noise buffers, in the order the update draws them
    keys: list[str]  # metric names
    metrics: torch.Tensor  # the metrics stacked, written by each replay


def set_capturable(optimizers: Iterable[torch.optim.Optimizer], on: bool) -> None:
    """Adam's `capturable` flag (device-side step counts, needed under graph capture). Turning it on
    also moves step counts restored from a checkpoint onto their parameters' device."""
    for opt in optimizers:
        for group in opt.param_groups:
            group["capturable"] = on
            if not on:
                continue
            for p in group["params"]:
                state = opt.state.get(p)
                if state and "step" in state and state["step"].device != p.device:
                    state["step"] = state["step"].to(p.device, torch.float32)


class GraphedUpdate:
    """`update(batch, actor_step)` through CUDA graphs (see the module docstring). `rows` [B, width]
    is the static batch: a sampler writing there costs no copy; any other batch is copied in."""

    WARMUP = 3  # eager updates of each kind before its capture

    def __init__(self, algo: GraphableAlgorithm, rows: torch.Tensor, layout: RowLayout):
        self.algo, self.rows = algo, rows
        self.batch: ReplaySample[torch.Tensor] = layout.unpack(rows)
        self.stream = torch.cuda.Stream(algo.device)
        self.graphs: dict[bool, Captured] = {}
        self.eager_runs = {False: 0, True: 0}
        self.replays = 0
        self.failure: str | None = None  # why capture failed, after which updates run eagerly
        self.captured_states: list[object] | None = None

    def reset(self) -> None:
        """Drop the graphs (they hold the optimizer state tensors of their capture): warm up again."""
        self.graphs.clear()
        self.eager_runs = {False: 0, True: 0}
        self.captured_states = None

    def _optimizer_states(self) -> list[object]:
        return [opt.state for opt in self.algo.optimizers().values()]

    def __call__(self, batch: ReplaySample[torch.Tensor], actor_step: bool) -> dict[str, torch.Tensor]:
        if not all(a.data_ptr() == b.data_ptr() and a.stride() == b.stride() for a, b in zip(batch, self.batch)):
            for static, value in zip(self.batch, batch):
                static.copy_(value)
        if self.failure is not None:
            return self.algo.step(self.batch, self.algo.noise, actor_step)
        if self.captured_states is not None and any(
            a is not b for a, b in zip(self.captured_states, self._optimizer_states())
        ):
            self.reset()  # an optimizer's state was replaced (a checkpoint restored): recapture
        captured = self.graphs.get(actor_step)
        if captured is None:
            if self.eager_runs[actor_step] < self.WARMUP:
                self.eager_runs[actor_step] += 1
                return self._eager(actor_step)
            try:
                captured = self.graphs[actor_step] = self._capture(actor_step)
            except Exception as err:  # noqa: BLE001 - the update still runs, eagerly, and says why
                self.failure = f"{type(err).__name__}: {err}"
                warnings.warn(
                    f"CUDA graph capture of the update failed ({self.failure}); updating eagerly", stacklevel=2
                )
                return self.algo.step(self.batch, self.algo.noise, actor_step)
        for buf in captured.noise:
            buf.copy_(self.algo.noise(buf.shape[2]))
        captured.graph.replay()
        self.replays += 1
        return dict(zip(captured.keys, captured.metrics.clone().unbind()))

    def _eager(self, actor_step: bool) -> dict[str, torch.Tensor]:
        """One warm-up update, on a side stream (as capture will run), with capturable optimizers."""
        algo, opts = self.algo, list(self.algo.optimizers().values())
        current = torch.cuda.current_stream(algo.device)
        self.stream.wait_stream(current)
        set_capturable(opts, True)
        try:
            with torch.cuda.stream(self.stream), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*capturable=True.*")  # on purpose, until capture
                metrics = algo.step(self.batch, algo.noise, actor_step)
        finally:
            set_capturable(opts, False)
        current.wait_stream(self.stream)
        for value in metrics.values():
            value.record_stream(current)
        return metrics

    def _capture(self, actor_step: bool) -> Captured:
        algo, opts = self.algo, list(self.algo.optimizers().values())
        shape = algo.noise_shape(self.rows.shape[0])
        buffers = [torch.empty(shape, device=algo.device) for _ in range(2)]  # critic's, then the actors'
        drawn: list[torch.Tensor] = []

        def noise(batch: int) -> torch.Tensor:
            drawn.append(buffers[len(drawn)])
            return drawn[-1]

        graph = torch.cuda.CUDAGraph()
        set_capturable(opts, True)
        try:
            with torch.cuda.graph(graph):
                metrics = algo.step(self.batch, noise, actor_step)
                keys = list(metrics)
                packed = torch.stack([metrics[k].reshape(()).float() for k in keys])
        finally:
            set_capturable(opts, False)
        self.captured_states = self._optimizer_states()
        return Captured(graph, drawn, keys, packed)
