"""Micro-batching: concurrent requests become one inference call, on one thread off the event loop.

Handlers put jobs on a thread-safe queue and await a future. The inference thread takes the first
job, gathers whatever else is queued (waiting up to max_delay_us for more, if asked) up to max_batch
rows, runs ONNX Runtime once, and hands every caller its slice back on the event loop in one
callback. One thread wake-up and one loop wake-up per batch keeps the loopback round trip short.

Every job carries its own noise (explicit, drawn from its seed, zeros, or drawn by the server)
before it is queued, so a merged call computes exactly what the separate calls would have:
observations concatenate along axis 0, noise [K+1, B, d_a] along axis 1.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

InferFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(eq=False)
class Job:
    obs: np.ndarray  # [B, d_o]
    noise: np.ndarray  # [K+1, B, d_a]
    future: asyncio.Future = field(init=False)
    enqueued_ns: int = field(init=False, default=0)

    @property
    def rows(self) -> int:
        return self.obs.shape[0]


@dataclass(frozen=True)
class JobResult:
    action: np.ndarray  # [B, d_a]
    queue_ns: int  # queued -> its inference call started
    inference_ns: int  # the (shared) inference call
    batch_size: int  # rows in that call


class BatcherClosed(RuntimeError):
    pass


_STOP = None  # queued by close(): the thread finishes the jobs before it, then exits


class MicroBatcher:
    def __init__(
        self,
        infer: InferFn,
        max_batch: int,
        max_delay_us: int = 0,
        merge: bool = True,
        on_batch: Callable[[int, float], None] | None = None,
    ):
        self._infer = infer
        self._max_batch = max_batch
        self._max_delay_s = max_delay_us / 1e6
        self._merge = merge
        self._on_batch = on_batch  # (rows, inference seconds), for metrics; called on the thread
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        # One thread: ONNX Runtime parallelises inside a call (--threads); queued requests merge
        # into the next call instead of competing for cores.
        self._thread = threading.Thread(target=self._run, name="omad-infer", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread.start()

    async def submit(self, job: Job) -> JobResult:
        """Queue the job and wait for its slice of a batch. Cancelling the wait drops the job."""
        if self._closed:
            raise BatcherClosed("the server is shutting down")
        job.future = self._loop.create_future()
        job.enqueued_ns = time.perf_counter_ns()
        self._jobs.put(job)
        return await job.future

    async def close(self, timeout_s: float = 30.0) -> None:
        """Finish the queued jobs, stop the thread, fail anything left."""
        if self._closed:
            return
        self._closed = True
        self._jobs.put(_STOP)
        deadline = time.monotonic() + timeout_s
        while self._thread.is_alive() and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None and not job.future.done():
                job.future.set_exception(BatcherClosed("the server is shutting down"))

    # ---- the inference thread ----------------------------------------------------------------

    def _run(self) -> None:
        carried: Job | None = None  # a job that did not fit into the previous batch
        stopping = False
        while not stopping:
            first = carried if carried is not None else self._jobs.get()
            carried = None
            if first is _STOP:
                return
            jobs, rows = [first], first.rows
            deadline = time.monotonic() + self._max_delay_s
            while self._merge and rows < self._max_batch:
                remaining = deadline - time.monotonic()
                try:
                    job = self._jobs.get(timeout=remaining) if remaining > 0 else self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is _STOP:
                    stopping = True
                    break
                if rows + job.rows > self._max_batch:
                    carried = job
                    break
                jobs.append(job)
                rows += job.rows
            self._run_batch(jobs)

    def _run_batch(self, jobs: list[Job]) -> None:
        # A caller that gave up (deadline, cancel) needs no work. Reading the flag off the loop
        # thread is a benign race: at worst its rows are computed and then dropped in _deliver.
        jobs = [job for job in jobs if not job.future.cancelled()]
        if not jobs:
            return
        if len(jobs) == 1:
            obs, noise = jobs[0].obs, jobs[0].noise
        else:
            obs = np.concatenate([job.obs for job in jobs], axis=0)
            noise = np.concatenate([job.noise for job in jobs], axis=1)
        started = time.perf_counter_ns()
        try:
            actions, error = self._infer(obs, noise), None
        except Exception as err:  # noqa: BLE001 - reported to every caller of this batch
            actions, error = None, err
        inference_ns = time.perf_counter_ns() - started
        if self._on_batch is not None and error is None:
            self._on_batch(obs.shape[0], inference_ns / 1e9)
        try:
            self._loop.call_soon_threadsafe(_deliver, jobs, actions, error, started, inference_ns)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass


def _deliver(jobs: list[Job], actions: np.ndarray | None, error: Exception | None, started_ns: int, inference_ns: int) -> None:
    """On the event loop: give each caller its slice (or the batch's error)."""
    offset, batch_size = 0, sum(job.rows for job in jobs)
    for job in jobs:
        if not job.future.done():
            if error is not None:
                job.future.set_exception(error)
            else:
                action = actions[offset : offset + job.rows]
                job.future.set_result(JobResult(action, started_ns - job.enqueued_ns, inference_ns, batch_size))
        offset += job.rows
