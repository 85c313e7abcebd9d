"""Faults a deployment meets, each provoked for real: a stalled (SIGSTOP), killed or restarted agent
server mid-episode, a drain with idle and busy streams, the inference thread dying, a tampered lone
model file, non-finite actions, reloads (SIGHUP) good and bad, and merged batches computing exactly
what separate calls do."""

from __future__ import annotations

import hashlib
import json
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
from helpers import OMAD, REPO, Process, random_inputs, wait_gone

from omad.evaluation import grpc_source, onnx_source, run_eval
from omad.runtime.onnx_policy import OnnxPolicy, read_manifest
from omad.serve._generated import policy_pb2, policy_pb2_grpc
from omad.serve.client import PolicyCallError, PolicyClient, act_request, check_health
from omad.serve.config import ServeConfig
from omad.serve.tensors import from_tensor
from omad.serve.testing import ServerThread

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
LONG_EPISODE = "{max_cycles: 100000}"  # an MPE episode that lasts until a fault ends it


def metric(port: int, name: str) -> float:
    """A sample of the server's /metrics (0 if absent)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def wait_for(condition, timeout_s: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def error_lines(stderr: str) -> list[str]:
    """What a person reads on stderr: every line but the servers' JSON log events."""
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith("{")]


# ---- a closed loop never hangs ------------------------------------------------------------------


class Agents:
    """The tiny export's three agents: agent_1 in an `omad serve` process (the victim), the others in-process."""

    def __init__(self, stack: ExitStack, export_dir: Path):
        files = [Path(export_dir) / a["file"] for a in read_manifest(export_dir)["agents"]]
        self.threads = [stack.enter_context(ServerThread(ServeConfig(model=f, port=0))) for f in (files[0], files[2])]
        self.model = files[1]
        self.victim = self.start_victim(port=0)
        stack.callback(self.cleanup)

    def start_victim(self, port: int) -> Process:
        victim = Process("serve", "--model", str(self.model), "--port", str(port), "--metrics-port", "0")
        self.metrics_port = victim.wait_for_event("listening")["metrics_port"]
        self.port = victim.wait_for_event("serving")["port"]
        return victim

    @property
    def addrs(self) -> list[str]:
        return [self.threads[0].addr, f"127.0.0.1:{self.port}", self.threads[1].addr]

    def requests_served(self) -> float:
        return metric(self.metrics_port, 'omad_requests_total{method="ActStream"}')

    def cleanup(self) -> None:
        if self.victim.proc.poll() is None:
            self.victim.proc.send_signal(signal.SIGCONT)
        self.victim.kill()


def omad_eval(addrs: list[str], *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [*OMAD, "eval", "--env", "mpe:simple_spread_v3", "--servers", ",".join(addrs), *extra],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_stalled_agent_fails_the_episode_within_the_timeout(tiny_export_dir):
    """SIGSTOP (a stalled, not dead, server) mid-episode: the step's deadline passes, the episode fails
    with one line naming the agent and address, and the process exits non-zero: no thread or stream
    keeps it alive."""
    timeout_s = 2.0
    with ExitStack() as stack:
        agents = Agents(stack, tiny_export_dir)
        evaluation = omad_eval(
            agents.addrs, "--episodes", "2", "--env-options", LONG_EPISODE, "--timeout-s", str(timeout_s)
        )
        stack.callback(lambda: evaluation.poll() is None and evaluation.kill())
        wait_for(lambda: agents.requests_served() >= 30, what="the episode to be under way")
        os.kill(agents.victim.proc.pid, signal.SIGSTOP)
        stalled = time.monotonic()
        _, stderr = evaluation.communicate(timeout=timeout_s + 30)  # a hang fails here
        print(
            f"stalled agent: the episode failed {time.monotonic() - stalled:.2f} s after SIGSTOP (--timeout-s {timeout_s})"
        )
        assert evaluation.returncode == 2
        assert error_lines(stderr) == [next(line for line in stderr.splitlines() if line.startswith("error:"))], stderr
        assert "agent_1" in stderr and agents.addrs[1] in stderr and "DEADLINE_EXCEEDED" in stderr
        assert "Traceback" not in stderr


def test_a_killed_then_restarted_agent_fails_the_episode_and_serves_the_next(tiny_export_dir):
    with ExitStack() as stack:
        agents = Agents(stack, tiny_export_dir)
        evaluation = omad_eval(agents.addrs, "--episodes", "2", "--env-options", LONG_EPISODE, "--timeout-s", "5")
        stack.callback(lambda: evaluation.poll() is None and evaluation.kill())
        wait_for(lambda: agents.requests_served() >= 30, what="the episode to be under way")
        agents.victim.proc.kill()
        agents.victim.proc.wait()
        agents.victim = agents.start_victim(port=agents.port)  # restarted on the same address
        _, stderr = evaluation.communicate(timeout=60)
        assert evaluation.returncode == 2 and len(error_lines(stderr)) == 1, stderr
        assert "agent_1" in stderr and agents.addrs[1] in stderr and "Traceback" not in stderr

        # the restarted server serves the next evaluation: the same returns as in-process ONNX
        served = run_eval("mpe:simple_spread_v3", grpc_source(agents.addrs), 2, seed=3)
        local = run_eval("mpe:simple_spread_v3", onnx_source(tiny_export_dir), 2, seed=3)
        np.testing.assert_array_equal(served["returns"], local["returns"])


def test_eval_splits_episodes_to_each_servers_max_batch(tiny_export_dir):
    """5 episodes against servers that take at most 2 observations per request: every step goes out as
    requests of 2, 2 and 1, and the returns equal in-process ONNX's."""
    with ExitStack() as stack:
        files = [Path(tiny_export_dir) / a["file"] for a in read_manifest(tiny_export_dir)["agents"]]
        servers = [stack.enter_context(ServerThread(ServeConfig(model=f, port=0, max_batch=2))) for f in files]
        served = run_eval("mpe:simple_spread_v3", grpc_source([s.addr for s in servers]), 5, seed=4)
        batches = servers[0].server.metrics.registry.get_sample_value("omad_batch_size_sum")
        count = servers[0].server.metrics.registry.get_sample_value("omad_batch_size_count")
    local = run_eval("mpe:simple_spread_v3", onnx_source(tiny_export_dir), 5, seed=4)
    np.testing.assert_array_equal(served["returns"], local["returns"])
    assert batches == 5 * 25 and count == 3 * 25  # 25 steps, each 5 rows in 3 calls of at most 2


# ---- drain --------------------------------------------------------------------------------------


def test_drain_ends_an_idle_stream_at_once_and_a_busy_one_after_its_reply(model_path, policy):
    """SIGTERM with a 60 s grace: the idle stream is told UNAVAILABLE at once, the busy one gets its
    reply and then UNAVAILABLE, and the server exits as soon as that call is done, long before the grace."""
    server = Process(
        "serve",
        "--model",
        str(model_path),
        "--port",
        "0",
        "--grace-s",
        "60",
        "--max-delay-us",
        "1000000",
        "--max-batch",
        "4",
        "--metrics-port",
        "0",
    )
    try:
        metrics_port = server.wait_for_event("listening")["metrics_port"]
        addr = f"127.0.0.1:{server.wait_for_event('serving')['port']}"
        obs, noise = random_inputs(policy, 1, seed=0)
        with PolicyClient(addr, retries=0) as idle_client, PolicyClient(addr, retries=0) as busy_client:
            idle, busy = idle_client.stream(), busy_client.stream(timeout=30)
            idle.act(obs, noise=noise)  # (waits out the 1 s batching window)
            outcome: dict = {}

            def busy_step() -> None:
                outcome["reply"] = busy.act(obs, noise=noise)  # held for 1 s by the batching window

            caller = threading.Thread(target=busy_step)
            caller.start()
            wait_for(lambda: metric(metrics_port, "omad_queued_requests") == 1, what="the busy stream's request queued")
            server.proc.send_signal(signal.SIGTERM)
            caller.join(30)
            np.testing.assert_array_equal(outcome["reply"], policy.act(obs, noise=noise))
            assert server.proc.wait(timeout=30) == 0  # a 60 s grace not waited out
            for session in (idle, busy):
                with pytest.raises(PolicyCallError) as caught:
                    session.act(obs, noise=noise)
                assert caught.value.code == UNAVAILABLE and "draining" in caught.value.details
    finally:
        server.kill()


# ---- a server that cannot die silently ------------------------------------------------------------


@pytest.mark.parametrize("path", ["inference thread", "inline"])
def test_inference_failure_turns_the_server_not_serving(model_path, policy, path):
    """Anything but the model failing where batches run (here the metrics callback): the waiting calls
    and every later one get UNAVAILABLE, health says NOT_SERVING; nothing waits for a dead thread."""
    merged = path == "inference thread"  # two requests within 0.3 s merge, and a merged batch runs on the thread
    config = ServeConfig(
        model=model_path, port=0, max_delay_us=300_000 if merged else 0, metrics_port=0, inference_thread="on"
    )
    with ServerThread(config, load=False) as broken:

        def failing_metrics(rows: int, seconds: float) -> None:
            raise RuntimeError("metrics backend down")

        broken.server.metrics.observe_batch = failing_metrics
        broken.load()
        outcomes: list = []

        def call(seed: int) -> None:
            obs, noise = random_inputs(policy, 1, seed)
            with PolicyClient(broken.addr, retries=0, timeout_s=20) as c:
                try:
                    outcomes.append(c.act(obs, noise=noise))
                except PolicyCallError as err:
                    outcomes.append(err)

        callers = [threading.Thread(target=call, args=(seed,)) for seed in range(2 if merged else 1)]
        for t in callers:
            t.start()
        for t in callers:
            t.join(30)
        assert len(outcomes) == len(callers)
        assert all(
            isinstance(o, PolicyCallError) and o.code == UNAVAILABLE and "restart" in o.details for o in outcomes
        ), outcomes
        if merged:
            assert not broken.server.loaded.batcher._thread.is_alive()
        wait_for(lambda: check_health(broken.addr) == "NOT_SERVING", 10, "health NOT_SERVING")
        with PolicyClient(broken.addr, retries=0, timeout_s=20) as c:
            with pytest.raises(PolicyCallError) as caught:
                c.act(np.zeros((1, policy.info.obs_dim), np.float32))
            assert caught.value.code == UNAVAILABLE
        assert broken.server.metrics.registry.get_sample_value("omad_inference_failures_total") == 1


def test_non_finite_actions_get_internal_and_are_counted(model_path, policy):
    """Finite inputs near float32's limit overflow inside the network: the caller gets INTERNAL with a
    message, never a NaN action with OK, and the server keeps serving."""
    info = policy.info
    obs = np.full((2, info.obs_dim), 3e38, np.float32)
    obs[:, ::2] *= -1
    noise = np.full((info.noise_steps, 2, info.act_dim), 3e38, np.float32)
    assert not np.isfinite(policy.run(obs, noise)).all()  # in-process ONNX Runtime: NaN / inf
    with ServerThread(ServeConfig(model=model_path, port=0)) as running, PolicyClient(running.addr, retries=0) as c:
        with pytest.raises(PolicyCallError) as caught:
            c.act(obs, noise=noise)
        assert caught.value.code == grpc.StatusCode.INTERNAL and "NaN or inf actions" in caught.value.details
        registry = running.server.metrics.registry
        assert registry.get_sample_value("omad_nonfinite_actions_total") == 1
        assert registry.get_sample_value("omad_errors_total", {"method": "Act", "code": "INTERNAL"}) == 1
        fine, fine_noise = random_inputs(policy, 2, seed=1)
        np.testing.assert_array_equal(c.act(fine, noise=fine_noise), policy.act(fine, fine_noise))


def test_a_tampered_lone_model_file_is_refused_with_one_line(model_path, tmp_path):
    from test_runtime import flip_a_weight_byte

    lone = tmp_path / "agent_0.onnx"  # copied alone, as into a container: no manifest beside it
    shutil.copyfile(model_path, lone)
    flip_a_weight_byte(lone)
    result = subprocess.run(
        [*OMAD, "serve", "--model", str(lone), "--port", "0"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert error_lines(result.stderr) == [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines(result.stderr)) == 1 and str(lone) in result.stderr and "weights_sha256" in result.stderr


# ---- merged batches ------------------------------------------------------------------------------


@pytest.mark.parametrize("inference_thread", ["on", "off"])
def test_merged_rows_equal_separate_calls_exactly(model_path, policy, inference_thread):
    """12 concurrent single-row requests merged by a 0.3 s window: each action equals, bit for bit, the
    same request served alone and in-process ONNX Runtime at batch 1 (docs/guides/serving.md, "Merged batches are exact")."""
    requests = [random_inputs(policy, 1, seed=300 + i) for i in range(12)]
    config = ServeConfig(
        model=model_path, port=0, max_batch=64, max_delay_us=300_000, inference_thread=inference_thread
    )
    with ServerThread(config) as running:
        merged: dict[int, tuple] = {}
        start = threading.Barrier(len(requests))

        def one(index: int) -> None:
            obs, noise = requests[index]
            with PolicyClient(running.addr, retries=0) as c:
                c.spec()
                start.wait(30)
                merged[index] = (c.act(obs, noise=noise), c.last_timing)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(requests))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert max(timing.batch_size for _, timing in merged.values()) > 1
        with PolicyClient(running.addr, retries=0) as c:
            for index, (obs, noise) in enumerate(requests):
                alone = c.act(obs, noise=noise)
                assert c.last_timing.batch_size == 1
                np.testing.assert_array_equal(merged[index][0], alone)
                np.testing.assert_array_equal(alone, policy.run(obs, noise))


# ---- reload (SIGHUP) ------------------------------------------------------------------------------


def retrained(source: Path, target: Path, scale: float) -> None:
    """Another model of the same agent (an output bias scaled), with its weights_sha256 recomputed
    independently (onnx + hashlib): what a new `omad export` of the same run would give."""
    model = onnx.load(source)
    (bias,) = [t for t in model.graph.initializer if t.name == "actors.out.bias"]
    array = onnx.numpy_helper.to_array(bias) * scale + 0.05
    bias.CopyFrom(onnx.numpy_helper.from_array(array.astype(np.float32), bias.name))
    props = {p.key: p.value for p in model.metadata_props}
    del model.metadata_props[:]
    props["omad.weights_sha256"] = hashlib.sha256(model.SerializeToString()).hexdigest()
    onnx.helper.set_model_props(model, props)
    onnx.save_model(model, target)


def replace_file(path: Path, source: Path) -> None:
    """Put `source`'s bytes at `path` in one rename, as a deployment would."""
    staging = path.with_name(path.name + ".new")
    shutil.copyfile(source, staging)
    os.replace(staging, path)


def test_reload_swaps_the_model_without_a_failed_call_and_refuses_a_broken_file(model_path, tiny_export_dir, tmp_path):
    from test_runtime import flip_a_weight_byte

    served_path = tmp_path / "serving" / "agent_0.onnx"
    served_path.parent.mkdir()
    shutil.copyfile(model_path, served_path)
    new_path = tmp_path / "new.onnx"
    retrained(model_path, new_path, scale=1.5)
    old, new = OnnxPolicy(served_path), OnnxPolicy(new_path)
    assert old.info.sha256 != new.info.sha256
    expected = {old.info.sha256: old, new.info.sha256: new}

    server = Process("serve", "--model", str(served_path), "--port", "0", "--metrics-port", "0")
    try:
        metrics_port = server.wait_for_event("listening")["metrics_port"]
        addr = f"127.0.0.1:{server.wait_for_event('serving')['port']}"
        stop = threading.Event()
        seen: dict[str, list[str]] = {"stream": [], "unary": []}
        failures: list = []

        def check(kind: str, step: int, act) -> None:
            obs, noise = random_inputs(old, 2, seed=step)
            actions, reply_sha = act(obs, noise)
            seen[kind].append(reply_sha)
            np.testing.assert_array_equal(actions, expected[reply_sha].run(obs, noise))  # from the model it names

        def stream_client() -> None:
            with grpc.insecure_channel(addr) as channel:
                step, requests = 0, queue.SimpleQueue()
                replies = policy_pb2_grpc.PolicyStub(channel).ActStream(iter(requests.get, None), timeout=120)
                try:
                    while not stop.is_set():

                        def act(obs, noise):
                            request = policy_pb2.ActRequest()
                            request.obs.shape[:], request.obs.data = obs.shape, obs.tobytes()
                            request.noise.shape[:], request.noise.data = noise.shape, noise.tobytes()
                            requests.put(request)
                            reply = next(replies)
                            return np.frombuffer(reply.action.data, "<f4").reshape(2, -1), reply.model_sha256

                        check("stream", step, act)
                        step += 1
                except BaseException as err:  # noqa: BLE001
                    failures.append(err)
                finally:
                    requests.put(None)

        def unary_client() -> None:
            with PolicyClient(addr, retries=0) as c:
                step = 0
                try:
                    while not stop.is_set():

                        def act(obs, noise):
                            request = policy_pb2.ActRequest()
                            request.obs.shape[:], request.obs.data = obs.shape, obs.tobytes()
                            request.noise.shape[:], request.noise.data = noise.shape, noise.tobytes()
                            reply = c._stub.Act(request, timeout=10)
                            return np.frombuffer(reply.action.data, "<f4").reshape(2, -1), reply.model_sha256

                        check("unary", 10_000 + step, act)
                        step += 1
                except BaseException as err:  # noqa: BLE001
                    failures.append(err)

        clients = [threading.Thread(target=stream_client), threading.Thread(target=unary_client)]
        for t in clients:
            t.start()
        wait_for(lambda: min(map(len, seen.values())) >= 20, what="calls before the reload")
        replace_file(served_path, new_path)
        server.proc.send_signal(signal.SIGHUP)
        event = server.wait_for_event("reloaded")
        assert (event["old_model_sha256"], event["model_sha256"]) == (old.info.sha256, new.info.sha256)
        counts = {kind: len(shas) for kind, shas in seen.items()}
        wait_for(lambda: all(len(seen[k]) >= counts[k] + 20 for k in seen), what="calls after the reload")
        stop.set()
        for t in clients:
            t.join(30)
        assert failures == []
        for kind, shas in seen.items():  # old, then new from the swap on, never back
            switch = shas.index(new.info.sha256)
            assert switch > 0 and set(shas[:switch]) == {old.info.sha256} and set(shas[switch:]) == {new.info.sha256}, (
                kind
            )
        with PolicyClient(addr, retries=0) as c:
            assert c.spec().model_sha256 == new.info.sha256

            # a broken file and another agent's file are refused; the new model keeps serving
            broken = tmp_path / "broken.onnx"
            shutil.copyfile(new_path, broken)
            flip_a_weight_byte(broken)
            other_agent = Path(tiny_export_dir) / "agent_1.onnx"
            for offered, reason in ((broken, "weights_sha256"), (other_agent, "agent 'agent_1' != serving 'agent_0'")):
                replace_file(served_path, offered)
                server.proc.send_signal(signal.SIGHUP)
                assert reason in server.wait_for_event("reload_refused")["reason"]
                obs, noise = random_inputs(old, 3, seed=1)
                actions = c.act(obs, noise=noise)
                np.testing.assert_array_equal(actions, new.run(obs, noise))
                assert c.spec().model_sha256 == new.info.sha256
            assert metric(metrics_port, 'omad_reloads_total{result="refused"}') == 2
            assert metric(metrics_port, 'omad_reloads_total{result="ok"}') == 1
            assert check_health(addr) == "SERVING"
    finally:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(timeout=30)
        finally:
            server.kill()


def test_launcher_forwards_sighup_to_every_agent(tiny_export_dir, tmp_path):
    """A new export put in place of the served dir, then SIGHUP to the launcher: every agent's server
    reloads it (GetSpec shows each new file's sha256)."""
    served = tmp_path / "export"
    shutil.copytree(tiny_export_dir, served)
    update = tmp_path / "update"
    shutil.copytree(tiny_export_dir, update)
    manifest = read_manifest(update)
    for entry in manifest["agents"]:  # new provenance metadata: other file bytes, same graph
        model = onnx.load(update / entry["file"])
        for prop in model.metadata_props:
            if prop.key == "omad.source_run":
                prop.value = "re-exported"
        onnx.save_model(model, update / entry["file"])
        entry["sha256"] = hashlib.sha256((update / entry["file"]).read_bytes()).hexdigest()
    (update / "manifest.json").write_text(json.dumps(manifest))
    new_shas = {entry["agent"]: entry["sha256"] for entry in manifest["agents"]}

    launcher = Process("serve", "--export-dir", str(served), "--base-port", "0")
    try:
        children = [launcher.wait_for_event("agent_started")["pid"] for _ in new_shas]
        addrs = dict(launcher.line().split() for _ in new_shas)
        for addr in addrs.values():
            wait_for(lambda addr=addr: check_health(addr) == "SERVING", 60, f"{addr} serving")
        os.rename(served, tmp_path / "old-export")
        os.rename(update, served)
        launcher.proc.send_signal(signal.SIGHUP)
        for agent, addr in addrs.items():
            with PolicyClient(addr) as c:
                wait_for(lambda c=c, agent=agent: c.spec().model_sha256 == new_shas[agent], 60, f"{agent} reloaded")
        assert launcher.proc.poll() is None  # SIGHUP did not stop the launcher
        launcher.proc.send_signal(signal.SIGTERM)
        assert launcher.proc.wait(timeout=30) == 0
        assert wait_gone(children, timeout_s=10) == []
    finally:
        launcher.kill()


def act_with_sha(addr: str, obs: np.ndarray, noise: np.ndarray) -> tuple[np.ndarray, str]:
    """One Act call: the actions and the sha256 of the model the reply says computed them."""
    with grpc.insecure_channel(addr) as channel:
        request, _ = act_request(obs, noise, None, False)
        reply = policy_pb2_grpc.PolicyStub(channel).Act(request, timeout=30)
    return from_tensor(reply.action, "action"), reply.model_sha256


def test_a_reload_while_a_merged_batch_runs_leaves_that_batch_on_the_old_model(model_path, tmp_path):
    """The swap happens while the old model computes a merged batch (held on the inference thread): a
    call that arrives after the swap is answered by the new model at once, the held batch's callers
    get the old model's exact actions, naming it, no call fails, and the old model's batcher ends its
    thread once it has answered."""
    served = tmp_path / "agent_0.onnx"
    shutil.copyfile(model_path, served)
    new_path = tmp_path / "new.onnx"
    retrained(model_path, new_path, scale=1.5)
    old, new = OnnxPolicy(served), OnnxPolicy(new_path)
    inputs = [random_inputs(old, 1, seed=seed) for seed in (1, 2, 3)]
    config = ServeConfig(model=served, port=0, max_delay_us=300_000, inference_thread="on")
    with ServerThread(config) as running:
        first = running.server.loaded
        entered, release = threading.Event(), threading.Event()
        compute = first.policy.run

        def held(obs: np.ndarray, noise: np.ndarray) -> np.ndarray:
            entered.set()
            assert release.wait(30), "the test never released the old model's batch"
            return compute(obs, noise)

        first.policy.run = held  # the old model's batcher calls it; the new model is another object
        replies: dict[int, tuple[np.ndarray, str]] = {}
        together = threading.Barrier(2)

        def call(index: int) -> None:
            together.wait(30)  # within the 0.3 s merge window: one batch of two, on the inference thread
            replies[index] = act_with_sha(running.addr, *inputs[index])

        callers = [threading.Thread(target=call, args=(index,)) for index in (0, 1)]
        for thread in callers:
            thread.start()
        assert entered.wait(30), "the merged batch never started"
        replace_file(served, new_path)
        assert running.run(running.server.reload()) is True
        assert running.server.loaded is not first and running.server.loaded.info.sha256 == new.info.sha256
        actions, sha = act_with_sha(running.addr, *inputs[2])  # while the old batch is still held
        assert sha == new.info.sha256
        np.testing.assert_array_equal(actions, new.run(*inputs[2]))
        assert replies == {} and first.batcher._thread.is_alive()
        release.set()
        for thread in callers:
            thread.join(30)
        for index in (0, 1):
            actions, sha = replies[index]
            assert sha == old.info.sha256
            np.testing.assert_array_equal(actions, old.run(*inputs[index]))
        wait_for(lambda: not first.batcher._thread.is_alive(), 10, "the old batcher's thread to end")
        assert running.server.metrics.registry.get_sample_value("omad_reloads_total", {"result": "ok"}) == 1
        assert (
            running.server.metrics.registry.get_sample_value(
                "omad_errors_total", {"method": "Act", "code": "UNAVAILABLE"}
            )
            is None
        )
