"""`omad serve` and `omad health` as real processes: SIGTERM drain, the multi-agent launcher (no
orphans), health exit codes, and 64 concurrent clients with every answer checked."""

from __future__ import annotations

import shutil
import signal
import subprocess
import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest
from helpers import OMAD, REPO, Process, random_inputs, wait_gone

from omad.runtime.onnx_policy import read_manifest
from omad.serve.client import PolicyCallError, PolicyClient, check_health, wait_until_serving
from omad.serve.config import ServeConfig
from omad.serve.testing import ServerThread


def in_flight_calls(metrics_port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("omad_in_flight_calls "):
                return float(line.split()[1])
    raise AssertionError("no omad_in_flight_calls metric")


def test_sigterm_drains_in_flight_calls_then_exits(model_path, policy):
    # A 1 s batching window (4 requests never fill --max-batch 64) holds unary calls in flight.
    grace_s = 10
    server = Process(
        "serve",
        "--model",
        str(model_path),
        "--port",
        "0",
        "--max-delay-us",
        "1000000",
        "--grace-s",
        str(grace_s),
        "--metrics-port",
        "0",
    )
    try:
        metrics_port = server.wait_for_event("listening")["metrics_port"]
        addr = f"127.0.0.1:{server.wait_for_event('serving')['port']}"
        session_client = PolicyClient(addr, retries=0)
        session = session_client.stream()
        obs, noise = random_inputs(policy, 1, seed=0)
        session.act(obs, noise=noise)

        results: dict[int, object] = {}

        def in_flight_call(index: int) -> None:
            obs_i, noise_i = random_inputs(policy, 2, seed=index)
            with PolicyClient(addr, retries=0) as c:
                try:
                    results[index] = (c.act(obs_i, noise=noise_i, timeout=10), policy.act(obs_i, noise=noise_i))
                except PolicyCallError as err:
                    results[index] = err

        callers = [threading.Thread(target=in_flight_call, args=(i,)) for i in range(4)]
        for t in callers:
            t.start()
        deadline = time.monotonic() + 10
        while in_flight_calls(metrics_port) < 5 and time.monotonic() < deadline:  # 4 unary calls + the stream
            time.sleep(0.01)
        assert in_flight_calls(metrics_port) == 5
        server.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()

        deadline = time.monotonic() + 3
        while check_health(addr, timeout_s=1) != "NOT_SERVING" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert check_health(addr, timeout_s=1) == "NOT_SERVING"
        with PolicyClient(addr, retries=0) as late:
            with pytest.raises(PolicyCallError) as caught:
                late.act(obs)
            assert caught.value.code == grpc.StatusCode.UNAVAILABLE and "draining" in caught.value.details

        with pytest.raises(PolicyCallError) as caught:  # an idle open stream is ended at once
            session.act(obs, noise=noise)
        assert caught.value.code == grpc.StatusCode.UNAVAILABLE and "draining" in caught.value.details
        session.close()
        session_client.close()

        for t in callers:
            t.join(10)
        assert len(results) == 4
        for outcome in results.values():
            assert not isinstance(outcome, PolicyCallError), outcome
            np.testing.assert_allclose(outcome[0], outcome[1], atol=1e-6)

        assert server.proc.wait(timeout=grace_s) == 0
        assert time.monotonic() - signalled < grace_s
        server.wait_for_event("stopped", timeout_s=5)
    finally:
        server.kill()


def test_an_idle_open_stream_does_not_hold_the_server(model_path, policy):
    """The idle stream is ended at once: the server exits without waiting out its 60 s grace."""
    server = Process("serve", "--model", str(model_path), "--port", "0", "--grace-s", "60")
    try:
        addr = f"127.0.0.1:{server.wait_for_event('serving')['port']}"
        with PolicyClient(addr, retries=0) as client:
            session = client.stream()
            session.act(np.zeros((1, policy.info.obs_dim), np.float32))
            server.proc.send_signal(signal.SIGTERM)
            assert server.proc.wait(timeout=30) == 0
            with pytest.raises(PolicyCallError) as caught:
                session.act(np.zeros((1, policy.info.obs_dim), np.float32))
            assert caught.value.code == grpc.StatusCode.UNAVAILABLE and "draining" in caught.value.details
    finally:
        server.kill()


def test_port_in_use_is_a_clear_error(model_path):
    with ServerThread(ServeConfig(model=model_path, port=0)) as running:
        server = Process("serve", "--model", str(model_path), "--port", str(running.port))
        try:
            assert server.proc.wait(timeout=60) == 2
            assert "cannot listen on" in "".join(server.stderr)
        finally:
            server.kill()


def test_a_bad_model_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "agent.onnx"
    bad.write_bytes(b"not a graph")
    result = subprocess.run(
        [*OMAD, "serve", "--model", str(bad), "--port", "0"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and "error:" in result.stderr and str(bad) in result.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_launcher_serves_every_agent_and_stops_them_all(tiny_export_dir, sig):
    agents = [entry["agent"] for entry in read_manifest(tiny_export_dir)["agents"]]
    launcher = Process("serve", "--export-dir", str(tiny_export_dir), "--base-port", "0", "--grace-s", "3")
    try:
        started = [launcher.wait_for_event("agent_started") for _ in agents]
        addrs = dict(launcher.line().split() for _ in agents)
        assert list(addrs) == agents
        ports = [int(addr.rsplit(":", 1)[1]) for addr in addrs.values()]
        assert len(set(ports)) == len(agents)
        for agent, addr in addrs.items():
            wait_until_serving(addr, timeout_s=60)
            with PolicyClient(addr) as client:
                assert client.spec().agent == agent
        children = [event["pid"] for event in started]

        launcher.proc.send_signal(sig)
        assert launcher.proc.wait(timeout=20) == 0
        assert wait_gone(children, timeout_s=5) == []
    finally:
        launcher.kill()


def test_launcher_death_takes_its_servers_along(tiny_export_dir):
    launcher = Process("serve", "--export-dir", str(tiny_export_dir), "--base-port", "0")
    try:
        children = [launcher.wait_for_event("agent_started")["pid"] for _ in read_manifest(tiny_export_dir)["agents"]]
        launcher.proc.kill()  # no chance to clean up: the kernel's parent-death signal must
        launcher.proc.wait()
        assert wait_gone(children, timeout_s=15) == []
    finally:
        launcher.kill()


def test_launcher_stops_everything_when_one_agent_fails(tiny_export_dir, tmp_path):
    broken = tmp_path / "export"
    shutil.copytree(tiny_export_dir, broken)
    victim = read_manifest(broken)["agents"][1]["file"]
    with open(broken / victim, "ab") as f:
        f.write(b"tampered")  # sha256 no longer matches the manifest
    launcher = Process("serve", "--export-dir", str(broken), "--base-port", "0")
    try:
        children = [launcher.wait_for_event("agent_started")["pid"] for _ in range(3)]
        assert launcher.proc.wait(timeout=60) == 1
        launcher.wait_for_event("agent_exited", timeout_s=5)
        assert wait_gone(children, timeout_s=5) == []
    finally:
        launcher.kill()


def test_omad_health_exit_codes(model_path):
    def health(addr: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*OMAD, "health", "--addr", addr, "--timeout", "2"], cwd=REPO, capture_output=True, text=True, timeout=60
        )

    with ServerThread(ServeConfig(model=model_path, port=0), load=False) as starting:
        result = health(starting.addr)
        assert result.returncode == 1 and "NOT_SERVING" in result.stdout
        starting.load()
        result = health(starting.addr)
        assert result.returncode == 0 and "SERVING" in result.stdout
        free_port = starting.port
    result = health(f"127.0.0.1:{free_port}")  # nothing listens there any more
    assert result.returncode == 1 and "UNAVAILABLE" in result.stdout


def test_64_concurrent_clients_get_every_answer_right(model_path, policy):
    clients, requests_each = 64, 200
    server = Process("serve", "--model", str(model_path), "--port", "0", "--max-batch", "64")
    try:
        addr = f"127.0.0.1:{server.wait_for_event('serving')['port']}"
        inputs = [random_inputs(policy, requests_each, seed=1000 + i) for i in range(clients)]
        errors: list[BaseException] = []
        mismatches: list[tuple[int, int]] = []
        served_batches: list[int] = []
        start = threading.Barrier(clients)

        def closed_loop_client(index: int) -> None:
            obs, noise = inputs[index]
            expected = np.stack(
                [policy.act(obs[i : i + 1], noise=noise[:, i : i + 1])[0] for i in range(requests_each)]
            )
            try:
                with PolicyClient(addr, retries=0, timeout_s=30) as client:
                    start.wait(timeout=60)
                    for i in range(requests_each):
                        action = client.act(obs[i : i + 1], noise=noise[:, i : i + 1])
                        served_batches.append(client.last_timing.batch_size)
                        if not np.allclose(action[0], expected[i], rtol=0, atol=1e-5):
                            mismatches.append((index, i))
            except BaseException as err:  # noqa: BLE001 - reported below
                errors.append(err)

        threads = [threading.Thread(target=closed_loop_client, args=(i,)) for i in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
        assert not any(t.is_alive() for t in threads)
        assert errors == [] and mismatches == []
        assert len(served_batches) == clients * requests_each
        assert max(served_batches) > 1  # concurrent requests were merged
        assert check_health(addr) == "SERVING"
    finally:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(timeout=15)
        finally:
            server.kill()
