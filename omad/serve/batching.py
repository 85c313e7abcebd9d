"""Micro-batching: concurrent requests become one inference call.

All bookkeeping happens on the event loop, so a request costs no lock and no thread wake-up of its
own. A handler appends its job and awaits a future; the first job of a batch schedules one flush
at the end of the loop iteration (or after max_delay_us), so every request that arrived in that
iteration joins it. The flush then runs the batch:
  - a lone request while nothing else runs goes straight through ONNX Runtime on the loop thread:
    no hand-off at all (the loop is blocked for one inference, which the request waits for anyway);
  - a merged batch goes to the inference thread (`offload`), so the loop keeps reading and
    answering requests meanwhile; the thread hands the result back in one loop callback, and
    requests that arrived during the inference form the next batch. That pays only when the loop
    has a core of its own while ONNX Runtime computes: without one, the hand-off adds thread
    wake-ups and GIL contention, and merged batches run inline like lone ones (`offload=False`;
    requests that arrive meanwhile wait in gRPC's buffers and form the next batch all the same).

Every job carries its own noise (explicit, drawn from its seed, zeros, or drawn by the server)
before it is queued, so a merged call computes what the separate calls would have: observations
concatenate along axis 0, noise [K+1, B, d_a] along axis 1. (Whether the rows are bit-identical
also depends on the kernels; see docs/guides/serving.md, "Merged batches are exact".)

Nothing waits forever: if the inference thread dies, or anything but the model fails while running
a batch, the batcher fails every waiting job with BatcherFailed, refuses new ones, and reports it
(the server then turns NOT_SERVING).
"""

from __future__ import annotations

import asyncio
import collections
import queue
import threading
import time
from collections.abc import Callable
from typing import Protocol

import numpy as np


class Model(Protocol):
    """What the batcher runs (omad.runtime.onnx_policy.OnnxPolicy)."""

    def run(self, obs: np.ndarray, noise: np.ndarray) -> np.ndarray: ...


class Job:
    """One request's validated inputs, its noise already fixed."""

    __slots__ = ("noise", "obs")

    def __init__(self, obs: np.ndarray, noise: np.ndarray):
        self.obs = obs  # [B, d_o]
        self.noise = noise  # [K+1, B, d_a]

    @property
    def rows(self) -> int:
        return self.obs.shape[0]


class JobResult:
    __slots__ = ("action", "batch_size", "inference_ns", "queue_ns")

    def __init__(self, action: np.ndarray, queue_ns: int, inference_ns: int, batch_size: int):
        self.action = action  # [B, d_a]
        self.queue_ns = queue_ns  # queued -> its inference call started
        self.inference_ns = inference_ns  # the (shared) inference call
        self.batch_size = batch_size  # rows in that call


class BatcherClosed(RuntimeError):
    """The server is shutting down."""


class BatcherFailed(RuntimeError):
    """The inference machinery broke; nothing will be computed any more."""


class NonFiniteActions(RuntimeError):
    """The model returned NaN or inf for finite inputs."""


class _Waiting:
    """A queued job and the caller waiting for it."""

    __slots__ = ("enqueued_ns", "future", "job")

    def __init__(self, job: Job, future: asyncio.Future[JobResult]):
        self.job = job
        self.future = future
        self.enqueued_ns = time.perf_counter_ns()


class _Batch:
    """One inference call: its jobs, and (once run) its outcome."""

    __slots__ = ("actions", "bad_rows", "error", "inference_ns", "started_ns", "waiting")

    def __init__(self, waiting: list[_Waiting]):
        self.waiting = waiting
        self.actions: np.ndarray | None = None
        self.error: Exception | None = None
        self.bad_rows: np.ndarray | None = None  # per row: True where an action is not finite
        self.started_ns = 0
        self.inference_ns = 0


_STOP = None  # put on the work queue by close(): the thread exits


class MicroBatcher:
    def __init__(
        self,
        model: Model,
        max_batch: int,
        max_delay_us: int = 0,
        merge: bool = True,
        offload: bool = True,
        on_batch: Callable[[int, float], None] | None = None,
        on_failure: Callable[[BaseException], None] | None = None,
    ):
        self.model = model  # the one model this batcher runs (a server's reload starts a new batcher)
        self._max_batch = max_batch
        self._max_delay_s = max_delay_us / 1e6
        self._merge = merge
        self._offload = offload
        self._on_batch = on_batch  # (rows, inference seconds), for metrics
        self._on_failure = on_failure
        self._pending: collections.deque[_Waiting] = collections.deque()
        self._flush_handle: asyncio.Handle | asyncio.TimerHandle | None = None
        self._running: _Batch | None = None  # the batch being computed (inline or on the thread)
        # One thread: ONNX Runtime parallelises inside a call (--threads); queued requests merge
        # into the next call instead of competing for cores. A daemon: it must never keep a
        # process alive.
        self._work: queue.SimpleQueue[_Batch | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._thread_main, name="omad-infer", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self.failure: BaseException | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self._offload:
            self._thread.start()

    @property
    def _event_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("MicroBatcher.start() has not run (on the event loop that submits jobs)")
        return self._loop

    @property
    def queued(self) -> int:
        """Jobs waiting for an inference call (not the one running)."""
        return len(self._pending)

    async def submit(self, job: Job) -> JobResult:
        """Queue the job and wait for its slice of a batch. Cancelling the wait drops the job."""
        if self.failure is not None:
            raise BatcherFailed(f"inference failed earlier ({self.failure!r}); this server must be restarted")
        if self._closed:
            raise BatcherClosed("the server is shutting down")
        waiting = _Waiting(job, self._event_loop.create_future())
        self._pending.append(waiting)
        if self._running is None:  # else the running batch's delivery starts the next one
            self._schedule_flush()
        return await waiting.future

    async def close(self, timeout_s: float = 30.0) -> None:
        """Refuse new jobs, finish the queued ones (for up to timeout_s), stop the thread, and fail
        what is still queued then. A call still running answers its callers whenever it ends."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + timeout_s
        while (self._running is not None or self._pending) and self.failure is None and time.monotonic() < deadline:
            if self._running is None:
                self._schedule_flush()  # at once: no merge delay while closing
            await asyncio.sleep(0.002)
        self._work.put(_STOP)
        self._fail_jobs(BatcherClosed("the server is shutting down"), running=False)
        while self._thread.is_alive() and time.monotonic() < deadline:
            await asyncio.sleep(0.002)

    # ---- on the event loop ---------------------------------------------------------------------

    def _pending_rows(self) -> int:
        return sum(waiting.job.rows for waiting in self._pending)

    def _schedule_flush(self) -> None:
        """Flush at the end of this loop iteration, or once the first queued job has waited
        max_delay_us (at once if the queue fills a batch, or while closing)."""
        if not self._pending:
            return
        delay = 0.0
        if self._max_delay_s > 0 and not self._closed and self._pending_rows() < self._max_batch:
            waited = (time.perf_counter_ns() - self._pending[0].enqueued_ns) / 1e9
            delay = max(0.0, self._max_delay_s - waited)
        if self._flush_handle is not None:
            if delay > 0 or not isinstance(self._flush_handle, asyncio.TimerHandle):
                return  # already due (the merge timer keeps running until the queue is full)
            self._flush_handle.cancel()
        loop = self._event_loop
        self._flush_handle = loop.call_later(delay, self._flush) if delay else loop.call_soon(self._flush)

    def _take_batch(self) -> list[_Waiting]:
        """The next jobs to run together: up to max_batch rows, skipping callers that gave up."""
        batch: list[_Waiting] = []
        rows = 0
        while self._pending:
            waiting = self._pending[0]
            if waiting.future.done():  # cancelled: deadline passed or the client went away
                self._pending.popleft()
                continue
            if batch and (not self._merge or rows + waiting.job.rows > self._max_batch):
                break
            batch.append(self._pending.popleft())
            rows += waiting.job.rows
        return batch

    def _flush(self) -> None:
        self._flush_handle = None
        if self._running is not None or self.failure is not None:
            return
        try:
            waiting = self._take_batch()
            if not waiting:
                return
            batch = self._running = _Batch(waiting)
            if self._offload and (len(waiting) > 1 or self._pending):
                self._work.put(batch)  # merged: compute off the loop, keep serving meanwhile
                return
            self._compute(batch)  # a lone request (or no core to spare for the loop): the shortest path
            self._deliver(batch)
        except BaseException as err:  # noqa: BLE001 - never leave a caller waiting
            self._fail(err)

    def _delivered(self, batch: _Batch) -> None:
        """On the loop, from the thread: deliver, and fail everything rather than leave callers waiting."""
        try:
            self._deliver(batch)
        except BaseException as err:  # noqa: BLE001
            self._fail(err)

    def _deliver(self, batch: _Batch) -> None:
        """Give each caller its slice (or the batch's error), then start the next batch."""
        if self._running is not batch:  # failed meanwhile: its callers were told already
            return
        self._running = None
        actions = batch.actions
        if actions is None:  # the model refused the batch
            error = batch.error if batch.error is not None else BatcherFailed("a batch was delivered before it ran")
            for waiting in batch.waiting:
                if not waiting.future.done():
                    waiting.future.set_exception(error)
            self._schedule_flush()
            return
        offset, batch_size = 0, len(actions)
        for waiting in batch.waiting:
            rows = waiting.job.rows
            if not waiting.future.done():
                if batch.bad_rows is not None and batch.bad_rows[offset : offset + rows].any():
                    where = np.flatnonzero(batch.bad_rows[offset : offset + rows]).tolist()
                    waiting.future.set_exception(NonFiniteActions(f"rows {where[:5]}"))
                else:
                    waiting.future.set_result(
                        JobResult(
                            actions[offset : offset + rows],
                            batch.started_ns - waiting.enqueued_ns,
                            batch.inference_ns,
                            batch_size,
                        )
                    )
            offset += rows
        self._schedule_flush()

    def _fail(self, err: BaseException) -> None:
        if self.failure is not None:
            return
        self.failure = err
        self._fail_jobs(BatcherFailed(f"inference failed ({err!r}); this server must be restarted"), running=True)
        if self._on_failure is not None:
            self._on_failure(err)

    def _fail_jobs(self, error: Exception, running: bool) -> None:
        """Fail the queued jobs, and with `running` those of the running batch too."""
        waiting = list(self._pending)
        self._pending.clear()
        if running and self._running is not None:
            waiting += self._running.waiting
            self._running = None
        for entry in waiting:
            if not entry.future.done():
                entry.future.set_exception(error)

    # ---- the inference call (on the thread, or inline for a lone request) ------------------------

    def _compute(self, batch: _Batch) -> None:
        jobs = [waiting.job for waiting in batch.waiting]
        if len(jobs) == 1:
            obs, noise = jobs[0].obs, jobs[0].noise
        else:
            obs = np.concatenate([job.obs for job in jobs], axis=0)
            noise = np.concatenate([job.noise for job in jobs], axis=1)
        batch.started_ns = time.perf_counter_ns()
        try:
            batch.actions = actions = self.model.run(obs, noise)
        except Exception as err:  # noqa: BLE001 - the model refused this batch: its callers get the error
            batch.error = err
        batch.inference_ns = time.perf_counter_ns() - batch.started_ns
        if batch.error is None:
            finite = np.isfinite(actions)
            if np.count_nonzero(finite) != finite.size:
                batch.bad_rows = ~finite.all(axis=1)
            if self._on_batch is not None:
                self._on_batch(obs.shape[0], batch.inference_ns / 1e9)

    def _thread_main(self) -> None:
        try:
            while (batch := self._work.get()) is not _STOP:
                self._compute(batch)
                self._event_loop.call_soon_threadsafe(self._delivered, batch)
        except BaseException as err:  # noqa: BLE001 - anything else: the thread is gone, say so
            try:
                self._event_loop.call_soon_threadsafe(self._fail, err)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass
