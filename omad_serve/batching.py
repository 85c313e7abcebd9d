"""Micro-batching: concurrent requests become one inference call on one thread off the event loop.

Every job carries its own noise (explicit, drawn from its seed, zeros, or drawn by the server)
before it is queued, so a merged call computes exactly what the separate calls would have:
observations concatenate along axis 0, noise [K+1, B, d_a] along axis 1.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

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
        self._on_batch = on_batch  # (rows, inference seconds), for metrics
        self._queue: deque[Job] = deque()
        self._queued_rows = 0
        self._arrived = asyncio.Event()
        # One thread: ONNX Runtime parallelises inside a call (--threads); queued requests merge
        # into the next call instead of competing for cores.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="omad-infer")
        self._worker: asyncio.Task | None = None
        self._closed = False

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._run(), name="omad-batcher")

    async def submit(self, job: Job) -> JobResult:
        """Queue the job and wait for its slice of a batch. Cancelling the wait drops the job."""
        if self._closed:
            raise BatcherClosed("the server is shutting down")
        job.future = asyncio.get_running_loop().create_future()
        job.enqueued_ns = time.perf_counter_ns()
        self._queue.append(job)
        self._queued_rows += job.rows
        self._arrived.set()
        return await job.future

    async def close(self) -> None:
        self._closed = True
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        _fail(list(self._queue), BatcherClosed("the server is shutting down"))
        self._queue.clear()
        self._executor.shutdown(wait=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
            if self._merge and self._max_delay_s > 0:
                await self._wait_for_more(loop)
            jobs = self._take_batch()
            if jobs:
                await self._run_batch(jobs, loop)

    async def _wait_for_more(self, loop: asyncio.AbstractEventLoop) -> None:
        deadline = loop.time() + self._max_delay_s
        while self._queued_rows < self._max_batch:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                return

    def _take_batch(self) -> list[Job]:
        jobs: list[Job] = []
        rows = 0
        while self._queue:
            job = self._queue[0]
            if not job.future.done() and jobs and (not self._merge or rows + job.rows > self._max_batch):
                break
            self._queue.popleft()
            self._queued_rows -= job.rows
            if job.future.done():  # its caller gave up (deadline, cancel): skip the work
                continue
            jobs.append(job)
            rows += job.rows
        return jobs

    async def _run_batch(self, jobs: list[Job], loop: asyncio.AbstractEventLoop) -> None:
        if len(jobs) == 1:
            obs, noise = jobs[0].obs, jobs[0].noise
        else:
            obs = np.concatenate([job.obs for job in jobs], axis=0)
            noise = np.concatenate([job.noise for job in jobs], axis=1)
        started = time.perf_counter_ns()
        try:
            actions = await loop.run_in_executor(self._executor, self._infer, obs, noise)
        except asyncio.CancelledError:  # closing: nobody may wait forever
            _fail(jobs, BatcherClosed("the server is shutting down"))
            raise
        except Exception as err:  # noqa: BLE001 - reported to every caller of this batch
            _fail(jobs, err)
            return
        inference_ns = time.perf_counter_ns() - started
        if self._on_batch is not None:
            self._on_batch(obs.shape[0], inference_ns / 1e9)
        offset = 0
        for job in jobs:
            if not job.future.done():
                result = JobResult(actions[offset : offset + job.rows], started - job.enqueued_ns, inference_ns, obs.shape[0])
                job.future.set_result(result)
            offset += job.rows


def _fail(jobs: list[Job], error: BaseException) -> None:
    for job in jobs:
        if not job.future.done():
            job.future.set_exception(error)
