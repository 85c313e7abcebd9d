"""MicroBatcher driven directly (no gRPC): merged calls hand every caller exactly its own rows, also when
a caller in the middle of a batch gave up before or after the inference call; how calls fill up to
max_batch, the merge delay, failed calls, metering, shutdown and the inference thread."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
import types

import numpy as np
import pytest

from omad.serve.batching import BatcherClosed, BatcherFailed, Job, MicroBatcher, NonFiniteActions

OBS_DIM, ACT_DIM, NOISE_STEPS = 3, 2, 2
WAIT_S = 10.0  # a hang guard, never a timing assertion


def fake_model(obs: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Row-wise, and every output value names its input row: action[b] = (obs[b, 0], noise[-1, b, 1])."""
    return np.stack([obs[:, 0], noise[-1, :, 1]], axis=1)


def caller_job(caller: int, rows: int) -> Job:
    """Inputs no other caller has: obs[r, 0] = 100 * caller + r, noise[-1, r, 1] = -(100 * caller + r)."""
    ids = 100.0 * caller + np.arange(rows, dtype=np.float32)
    obs = np.repeat(ids[:, None], OBS_DIM, axis=1).astype(np.float32)
    noise = np.repeat(-ids[None, :, None], ACT_DIM, axis=2).repeat(NOISE_STEPS, axis=0).astype(np.float32)
    return Job(obs, noise)


def plain(fn):
    """A model for MicroBatcher (which calls `run`) from a function."""
    return types.SimpleNamespace(run=fn)


class GatedModel:
    """The fake model on the inference thread, with hooks to hold a call and to act while it runs.
    (A batch of more than one job runs on the thread; a lone job while nothing else waits would run
    on the event loop, so the held first call carries two callers.)"""

    def __init__(self):
        self.calls: list[np.ndarray] = []  # the merged obs of every call
        self.entered = threading.Event()
        self.release = threading.Event()
        self.during_call = None  # run on the thread after the output is computed, before returning it

    def run(self, obs: np.ndarray, noise: np.ndarray) -> np.ndarray:
        self.calls.append(obs.copy())
        self.entered.set()
        assert self.release.wait(WAIT_S), "the test never released the inference call"
        actions = fake_model(obs, noise)
        if self.during_call is not None:
            self.during_call()
        return actions


async def cancel(task: asyncio.Task) -> None:
    task.cancel()


def callers_in(call_obs: np.ndarray) -> list[int]:
    """The callers whose rows an inference call saw, in order."""
    return list(dict.fromkeys(int(value) // 100 for value in call_obs[:, 0]))


@pytest.mark.parametrize("merge", [True, False])
def test_each_caller_gets_its_own_rows_when_batch_mates_give_up(merge):
    """Callers 1..5 queue behind a held call (of callers 0 and 7). Caller 2 gives up while queued, caller 3
    while the call that holds its rows runs; 0, 7, 1, 4 and 5 must each get their own rows, wherever they
    sit in the batch."""
    rows = {0: 2, 7: 1, 1: 3, 2: 1, 3: 2, 4: 4, 5: 1}
    model = GatedModel()

    async def scenario():
        loop = asyncio.get_running_loop()
        batcher = MicroBatcher(model, max_batch=sum(rows.values()), merge=merge)
        batcher.start()
        jobs = {caller: caller_job(caller, n) for caller, n in rows.items()}
        jobs[6] = caller_job(6, 2)  # comes after the others
        tasks = {caller: asyncio.create_task(batcher.submit(jobs[caller])) for caller in (0, 7)}  # one loop iteration
        assert await asyncio.to_thread(model.entered.wait, WAIT_S), "the first call never started"
        for caller in range(1, 6):  # queued while call 0 is held, so they share the next call(s)
            tasks[caller] = asyncio.create_task(batcher.submit(jobs[caller]))
        await asyncio.sleep(0.05)  # every submit has queued its job (call 0 is still held)

        tasks[2].cancel()  # before its inference

        def cancel_caller_3_once_its_rows_were_computed():
            if 3 in callers_in(model.calls[-1]):
                model.during_call = None
                asyncio.run_coroutine_threadsafe(cancel(tasks[3]), loop).result(WAIT_S)  # done before we return

        model.during_call = cancel_caller_3_once_its_rows_were_computed
        model.release.set()
        done = await asyncio.wait_for(asyncio.gather(*tasks.values(), return_exceptions=True), WAIT_S)
        results = dict(zip(tasks, done))
        results[6] = await asyncio.wait_for(batcher.submit(jobs[6]), WAIT_S)  # still serving
        await batcher.close()
        return jobs, results

    jobs, results = asyncio.run(scenario())

    assert isinstance(results[2], asyncio.CancelledError) and isinstance(results[3], asyncio.CancelledError)
    for caller in (0, 7, 1, 4, 5, 6):
        job = jobs[caller]
        np.testing.assert_array_equal(
            results[caller].action, fake_model(job.obs, job.noise), err_msg=f"caller {caller}"
        )
    # the scenario happened: caller 3's rows were computed, with a later caller's after them when merged
    calls_with_3 = [callers_in(call) for call in model.calls if 3 in callers_in(call)]
    assert len(calls_with_3) == 1
    if merge:
        assert calls_with_3[0][-1] != 3, calls_with_3


def test_without_offload_merged_batches_run_inline_and_split_at_max_batch():
    """offload=False (--inference-thread off): concurrent callers still merge, up to max_batch rows per
    call, but every call runs on the event loop's thread, and each caller gets exactly its own rows."""
    calls: list[tuple[threading.Thread, int]] = []

    class RecordingModel:
        def run(self, obs: np.ndarray, noise: np.ndarray) -> np.ndarray:
            calls.append((threading.current_thread(), obs.shape[0]))
            return fake_model(obs, noise)

    rows = {1: 2, 2: 1, 3: 3, 4: 1}
    model = RecordingModel()

    async def scenario():
        batcher = MicroBatcher(model, max_batch=5, offload=False)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit(caller_job(c, n)) for c, n in rows.items()))
        await batcher.close(WAIT_S)
        return results

    started = time.perf_counter_ns()
    results = asyncio.run(scenario())
    wall_ns = time.perf_counter_ns() - started
    for (caller, n), result in zip(rows.items(), results):
        job = caller_job(caller, n)
        np.testing.assert_array_equal(result.action, fake_model(job.obs, job.noise))
        # the reply's timing: time queued before its call, and the call's own time, both within the run
        assert 0 <= result.queue_ns <= wall_ns and 0 < result.inference_ns <= wall_ns
    assert [n for _, n in calls] == [3, 4]  # callers 1 + 2 (3 rows), then 3 + 4 (3 + 3 would pass 5)
    assert all(thread is threading.main_thread() for thread, _ in calls)
    assert [r.batch_size for r in results] == [3, 3, 4, 4]


class Crash(BaseException):
    """Not an Exception, so the model call's `except Exception` lets it through: the machinery itself broke."""


@pytest.mark.parametrize(
    ("offload", "breaks"), [(True, "inference"), (False, "inference"), (True, "delivery"), (False, "delivery")]
)
def test_a_broken_inference_call_fails_every_caller_once_and_refuses_later_jobs(offload, breaks):
    """Three callers, max_batch 2: the first call (on the thread, or inline without offload) crashes, or
    handing out its results does. The callers in it and the one still queued all get BatcherFailed,
    on_failure hears the crash exactly once, and a later job is refused at once."""
    crash = Crash("the inference thread broke")
    failures: list[BaseException] = []

    class CrashingModel:
        def run(self, obs: np.ndarray, noise: np.ndarray) -> np.ndarray:
            if breaks == "inference":
                raise crash
            return fake_model(obs, noise)

    def broken_delivery(batch):
        raise crash

    async def scenario():
        batcher = MicroBatcher(CrashingModel(), max_batch=2, offload=offload, on_failure=failures.append)
        if breaks == "delivery":
            batcher._deliver = broken_delivery
        batcher.start()
        tasks = [asyncio.create_task(batcher.submit(caller_job(caller, 1))) for caller in range(3)]
        outcomes = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), WAIT_S)
        with pytest.raises(BatcherFailed, match="inference failed earlier"):
            await batcher.submit(caller_job(9, 1))
        await batcher.close(timeout_s=1.0)
        return outcomes, batcher.failure

    outcomes, failure = asyncio.run(scenario())
    assert [type(o) for o in outcomes] == [BatcherFailed] * 3
    assert all("must be restarted" in str(o) and "the inference thread broke" in str(o) for o in outcomes)
    assert failure is crash
    assert failures == [crash]


def test_non_finite_rows_fail_only_their_caller_and_name_its_own_rows():
    """One merged call; the model returns NaN for rows 1-6 of caller 2 (7 rows). Caller 2 alone gets
    NonFiniteActions naming the first five bad rows by its own row index; callers 1 and 3, before and
    after it in the batch, get their actions."""
    bad = {201.0, 202.0, 203.0, 204.0, 205.0, 206.0}  # obs[:, 0] of caller 2's rows 1-6

    class PartlyNaNModel:
        def run(self, obs: np.ndarray, noise: np.ndarray) -> np.ndarray:
            actions = fake_model(obs, noise)
            actions[np.isin(obs[:, 0], list(bad)), 1] = np.nan
            return actions

    rows = {1: 2, 2: 7, 3: 1}

    async def scenario():
        batcher = MicroBatcher(PartlyNaNModel(), max_batch=16, offload=False)
        batcher.start()
        tasks = [batcher.submit(caller_job(caller, n)) for caller, n in rows.items()]
        return await asyncio.gather(*tasks, return_exceptions=True)

    first, second, third = asyncio.run(scenario())
    assert isinstance(second, NonFiniteActions) and str(second) == "rows [1, 2, 3, 4, 5]"
    for caller, result in ((1, first), (3, third)):
        job = caller_job(caller, rows[caller])
        np.testing.assert_array_equal(result.action, fake_model(job.obs, job.noise))
        assert result.batch_size == 10  # all three shared one call


def test_a_caller_that_gave_up_at_the_head_of_the_queue_does_not_stall_the_callers_behind_it():
    """Callers 1 and 2 queue behind a held call; caller 1, first in line, gives up. When the held call
    ends, the next flush must skip caller 1 and run caller 2."""
    model = GatedModel()

    async def scenario():
        batcher = MicroBatcher(model, max_batch=16)
        batcher.start()
        held = [asyncio.create_task(batcher.submit(caller_job(c, 1))) for c in (0, 7)]  # merged: on the thread
        assert await asyncio.to_thread(model.entered.wait, WAIT_S), "the first call never started"
        quitter = asyncio.create_task(batcher.submit(caller_job(1, 1)))
        stayer = asyncio.create_task(batcher.submit(caller_job(2, 1)))
        await asyncio.sleep(0.05)  # both queued behind the held call
        quitter.cancel()
        model.release.set()
        results = await asyncio.wait_for(asyncio.gather(*held, stayer), WAIT_S)
        await batcher.close(WAIT_S)
        return results

    results = asyncio.run(scenario())
    for caller, result in zip((0, 7, 2), results):
        job = caller_job(caller, 1)
        np.testing.assert_array_equal(result.action, fake_model(job.obs, job.noise))
    assert [callers_in(obs) for obs in model.calls] == [[0, 7], [2]]


def test_a_lone_request_runs_on_the_loop_and_a_merged_batch_on_the_inference_thread():
    """With offload on, a request that arrives alone skips the hand-off (inline on the event loop's
    thread); two that arrive together go to the omad-infer thread. Every call is metered with its rows
    and its seconds."""
    threads: list[str] = []
    metered: list[tuple[int, float]] = []

    class RecordingModel:
        def run(self, obs: np.ndarray, noise: np.ndarray) -> np.ndarray:
            threads.append(threading.current_thread().name)
            return fake_model(obs, noise)

    async def scenario():
        batcher = MicroBatcher(RecordingModel(), max_batch=16, on_batch=lambda rows, s: metered.append((rows, s)))
        batcher.start()
        await batcher.submit(caller_job(1, 2))
        await asyncio.gather(batcher.submit(caller_job(2, 1)), batcher.submit(caller_job(3, 3)))
        await batcher.close(WAIT_S)

    started = time.perf_counter()
    asyncio.run(scenario())
    wall_s = time.perf_counter() - started
    assert threads == [threading.main_thread().name, "omad-infer"]
    assert [rows for rows, _ in metered] == [2, 4]
    assert all(0 < seconds < wall_s for _, seconds in metered), (metered, wall_s)


def test_a_caller_queued_behind_a_running_call_counts_that_wait_in_its_window():
    """max_delay_us = 0.6 s. Caller 1 queues while a full batch (callers 0 and 7) is held for 0.4 s, so
    once that call ends it has 0.2 s of its window left: it goes about 0.6 s after it came, not 0.6 s
    after the call ended (1.0 s) or later."""
    model = GatedModel()

    async def scenario():
        batcher = MicroBatcher(model, max_batch=2, max_delay_us=600_000)
        batcher.start()
        held = [asyncio.create_task(batcher.submit(caller_job(caller, 1))) for caller in (0, 7)]
        await asyncio.to_thread(model.entered.wait, WAIT_S)
        started = time.perf_counter()
        queued = asyncio.create_task(batcher.submit(caller_job(1, 1)))
        await asyncio.sleep(0.4)
        model.release.set()
        await asyncio.wait_for(asyncio.gather(*held), WAIT_S)
        await asyncio.wait_for(queued, WAIT_S)
        waited = time.perf_counter() - started
        await batcher.close(WAIT_S)
        return waited

    waited = asyncio.run(scenario())
    assert [callers_in(call) for call in model.calls] == [[0, 7], [1]]
    assert 0.6 <= waited < 0.9, waited


def test_a_lone_caller_goes_once_the_merge_window_has_passed():
    """max_delay_us = 0.1 s: a caller that nobody joins waits out the window, then goes alone (the
    upper bound is loose: it only tells a 0.1 s window from a much longer one)."""

    async def scenario():
        batcher = MicroBatcher(plain(fake_model), max_batch=16, max_delay_us=100_000)
        batcher.start()
        started = time.perf_counter()
        await asyncio.wait_for(batcher.submit(caller_job(1, 1)), WAIT_S)
        waited = time.perf_counter() - started
        await batcher.close(WAIT_S)
        return waited

    assert 0.1 <= asyncio.run(scenario()) < 0.8


# -- call composition, the merge delay, errors, metrics and shutdown --------------------------------


async def held_start(
    model: GatedModel, batcher: MicroBatcher, jobs: dict[int, Job], companion: int
) -> dict[int, asyncio.Task]:
    """Caller 0's call is held on the inference thread while the other callers queue behind it. A lone
    job would run on the event loop itself, so `companion` is submitted in the same loop iteration as
    caller 0: with merging on (and room) it shares caller 0's call, otherwise it waits for the next."""
    batcher.start()
    tasks = {caller: asyncio.create_task(batcher.submit(jobs[caller])) for caller in (0, companion)}
    assert await asyncio.to_thread(model.entered.wait, WAIT_S), "the first call never started"
    for caller in sorted(jobs):
        if caller not in tasks:
            tasks[caller] = asyncio.create_task(batcher.submit(jobs[caller]))
    await asyncio.sleep(0.05)  # every submit has queued its job
    return tasks


def assert_own_rows(jobs: dict[int, Job], results: dict) -> None:
    for caller, result in results.items():
        np.testing.assert_array_equal(
            result.action, fake_model(jobs[caller].obs, jobs[caller].noise), err_msg=f"caller {caller}"
        )


@pytest.mark.parametrize("merge", [True, False])
def test_calls_fill_up_to_max_batch_and_carry_the_job_that_does_not_fit(merge):
    rows = {0: 1, 1: 3, 2: 3, 3: 4, 4: 2, 5: 1}
    model = GatedModel()

    async def scenario():
        batcher = MicroBatcher(model, max_batch=6, merge=merge)
        jobs = {caller: caller_job(caller, n) for caller, n in rows.items()}
        tasks = await held_start(model, batcher, jobs, companion=1)
        model.release.set()
        done = await asyncio.wait_for(asyncio.gather(*tasks.values()), WAIT_S)
        await batcher.close()
        return jobs, dict(zip(tasks, done))

    started = time.perf_counter_ns()
    jobs, results = asyncio.run(scenario())
    elapsed = time.perf_counter_ns() - started
    assert_own_rows(jobs, results)
    calls = [callers_in(call) for call in model.calls]
    # 4 does not fit after 3 (7 > 6), so it opens the next call, which 2 fills to exactly 6
    assert calls == ([[0, 1], [2], [3, 4], [5]] if merge else [[c] for c in rows])
    call_rows = {c: len(call_obs) for call_obs in model.calls for c in callers_in(call_obs)}
    for caller, result in results.items():
        assert result.batch_size == call_rows[caller] and 0 < result.inference_ns < elapsed
        # callers after the held call were queued before it was released, which the test did 0.05 s later
        assert (0 if caller in calls[0] else 0.05e9) <= result.queue_ns < elapsed


def test_the_merge_delay_waits_for_a_second_caller_and_not_for_a_full_batch():
    calls = []

    def model(obs, noise):
        calls.append(callers_in(obs))
        return fake_model(obs, noise)

    async def scenario():
        batcher = MicroBatcher(plain(model), max_batch=8, max_delay_us=500_000)  # 0.5 s
        batcher.start()
        jobs = {1: caller_job(1, 2), 2: caller_job(2, 3), 3: caller_job(3, 8)}
        first = asyncio.create_task(batcher.submit(jobs[1]))
        await asyncio.sleep(0.05)  # well inside the 0.5 s the first call waits for company
        second = asyncio.create_task(batcher.submit(jobs[2]))
        results = dict(zip((1, 2), await asyncio.wait_for(asyncio.gather(first, second), WAIT_S)))
        slow = MicroBatcher(
            plain(model), max_batch=8, max_delay_us=600_000_000
        )  # 10 minutes: only a full batch goes at once
        slow.start()
        results[3] = await asyncio.wait_for(slow.submit(jobs[3]), WAIT_S)
        await batcher.close()
        await slow.close(timeout_s=WAIT_S)
        return jobs, results

    jobs, results = asyncio.run(scenario())
    assert_own_rows(jobs, results)
    assert calls == [[1, 2], [3]]


def test_a_failed_call_fails_each_of_its_callers_and_only_good_calls_are_metered():
    metered = []
    model = GatedModel()
    wrapped = model.run

    def failing_for_caller_2(obs, noise):
        actions = wrapped(obs, noise)
        if 2 in callers_in(obs):
            raise ValueError("model failed")
        return actions

    async def scenario():
        batcher = MicroBatcher(
            plain(failing_for_caller_2), max_batch=8, on_batch=lambda rows, seconds: metered.append((rows, seconds))
        )
        jobs = {0: caller_job(0, 1), 3: caller_job(3, 1), 1: caller_job(1, 2), 2: caller_job(2, 3)}
        tasks = await held_start(model, batcher, jobs, companion=3)
        model.release.set()
        done = await asyncio.wait_for(asyncio.gather(*tasks.values(), return_exceptions=True), WAIT_S)
        await batcher.close()
        return jobs, dict(zip(tasks, done))

    jobs, results = asyncio.run(scenario())
    assert_own_rows(jobs, {0: results[0], 3: results[3]})
    for caller in (1, 2):  # merged into the call that failed
        assert isinstance(results[caller], ValueError) and str(results[caller]) == "model failed"
    assert [rows for rows, _ in metered] == [2] and metered[0][1] > 0


def test_close_finishes_the_queued_jobs_then_refuses_new_ones():
    model = GatedModel()

    async def scenario():
        batcher = MicroBatcher(model, max_batch=2)
        jobs = {0: caller_job(0, 1), 1: caller_job(1, 2), 2: caller_job(2, 1)}
        tasks = await held_start(model, batcher, jobs, companion=1)  # 1 + 2 rows > 2: caller 0 alone
        closing = asyncio.create_task(batcher.close(timeout_s=WAIT_S))
        await asyncio.sleep(0.05)
        model.release.set()
        await asyncio.wait_for(closing, WAIT_S + 1)
        done = await asyncio.wait_for(asyncio.gather(*tasks.values()), WAIT_S)
        with pytest.raises(BatcherClosed, match=r"^the server is shutting down$"):
            await batcher.submit(caller_job(3, 1))
        await batcher.close()  # a second close is a no-op
        return jobs, dict(zip(tasks, done)), batcher._thread.is_alive()

    jobs, results, alive = asyncio.run(scenario())
    assert_own_rows(jobs, results)
    assert not alive


def test_close_stops_a_thread_that_waits_to_merge():
    async def scenario():
        batcher = MicroBatcher(plain(fake_model), max_batch=8, max_delay_us=600_000_000)
        batcher.start()
        job = caller_job(1, 2)
        task = asyncio.create_task(batcher.submit(job))
        await asyncio.sleep(0.05)  # the thread holds the job, waiting for company
        await batcher.close(timeout_s=WAIT_S)
        return job, await asyncio.wait_for(task, WAIT_S), batcher._thread.is_alive()

    job, result, alive = asyncio.run(scenario())
    np.testing.assert_array_equal(result.action, fake_model(job.obs, job.noise))
    assert not alive


def test_close_gives_up_on_a_stuck_call_and_fails_the_jobs_still_queued():
    model = GatedModel()

    async def scenario():
        batcher = MicroBatcher(model, max_batch=1)
        jobs = {0: caller_job(0, 1), 1: caller_job(1, 1), 2: caller_job(2, 1)}
        tasks = await held_start(model, batcher, jobs, companion=1)
        await asyncio.wait_for(batcher.close(timeout_s=0.2), WAIT_S)
        queued = await asyncio.wait_for(asyncio.gather(tasks[1], tasks[2], return_exceptions=True), WAIT_S)
        model.release.set()  # the stuck call still answers its caller
        return jobs, queued, await asyncio.wait_for(tasks[0], WAIT_S)

    jobs, queued, first = asyncio.run(scenario())
    for error in queued:
        assert isinstance(error, BatcherClosed) and str(error) == "the server is shutting down"
    assert_own_rows(jobs, {0: first})


def test_the_inference_thread_is_a_daemon_named_omad_infer_so_an_unclosed_batcher_lets_the_process_exit():
    """Its inference thread is a daemon named omad-infer (so a py-spy dump shows it). The child process
    gets this process's sys.path, so under `make mutation` it imports the mutated code too."""
    code = (
        "import asyncio, threading\nfrom omad.serve.batching import MicroBatcher\n"
        "async def main():\n    MicroBatcher(lambda obs, noise: obs, 4).start()\n"
        "    print([(t.name, t.daemon) for t in threading.enumerate() if t is not threading.main_thread()])\n"
        "asyncio.run(main())\n"
    )

    async def new_threads():  # in this process too: mutmut maps a test to the code it calls in-process
        before = set(threading.enumerate())
        batcher = MicroBatcher(lambda obs, noise: obs, 4)
        batcher.start()
        started = [(t.name, t.daemon) for t in set(threading.enumerate()) - before]
        await batcher.close(timeout_s=5.0)
        return started

    assert asyncio.run(new_threads()) == [("omad-infer", True)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    done = subprocess.run([sys.executable, "-c", code], check=True, timeout=30, capture_output=True, text=True, env=env)
    assert done.stdout.strip() == "[('omad-infer', True)]"


def test_a_batch_delivered_without_an_outcome_fails_its_callers_with_a_message_that_says_so():
    """A call handed back with neither actions nor an error (a broken invariant, not a normal path)
    must still release its callers, each with BatcherFailed saying what happened."""

    async def scenario():
        batcher = MicroBatcher(plain(fake_model), max_batch=4)
        deliver = batcher._deliver

        def outcome_lost(batch):
            batch.actions, batch.error = None, None
            deliver(batch)

        batcher._deliver = outcome_lost
        batcher.start()
        tasks = [asyncio.create_task(batcher.submit(caller_job(caller, 1))) for caller in range(2)]
        outcomes = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), WAIT_S)
        await batcher.close(timeout_s=1.0)
        return outcomes

    outcomes = asyncio.run(scenario())
    assert [type(o) for o in outcomes] == [BatcherFailed] * 2
    assert all(str(o) == "a batch was delivered before it ran" for o in outcomes)
