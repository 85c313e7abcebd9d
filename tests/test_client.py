"""PolicyClient against a scripted fake server: retries on UNAVAILABLE only, bounded, with backoff;
per-call deadlines; errors carry the gRPC code."""

from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
import numpy as np
import pytest

from omad.core.errors import OmadError
from omad.serve._generated import policy_pb2, policy_pb2_grpc
from omad.serve.client import PolicyCallError, PolicyClient, check_health, wait_until_serving
from omad.serve.tensors import from_tensor, to_tensor


class ScriptedPolicy(policy_pb2_grpc.PolicyServicer):
    """Fails the first calls with the scripted codes, then answers action = 2 * obs[:, :2] (+ noise[0]
    when the request carries noise). ActStream answers the same, after stream_delay_s."""

    def __init__(self):
        self.script: list[grpc.StatusCode] = []
        self.calls: list[float] = []
        self.delay_s = 0.0
        self.stream_delay_s = 0.0
        self.metadata: list[dict] = []
        self.max_batch = 0
        self.requests: list[policy_pb2.ActRequest] = []

    def Act(self, request, context):
        self.calls.append(time.monotonic())
        self.metadata.append(dict(context.invocation_metadata()))
        time.sleep(self.delay_s)
        if self.script:
            context.abort(self.script.pop(0), "scripted failure")
        return self._reply(request)

    def ActStream(self, request_iterator, context):
        for request in request_iterator:
            self.calls.append(time.monotonic())
            time.sleep(self.stream_delay_s)
            if self.script:
                context.abort(self.script.pop(0), "scripted failure")
            yield self._reply(request)

    def _reply(self, request):
        self.requests.append(request)
        obs = from_tensor(request.obs, "obs")
        action = 2 * obs[:, :2]
        if request.HasField("noise"):
            action = action + from_tensor(request.noise, "noise")[0]
        return policy_pb2.ActReply(action=to_tensor(action), timing=policy_pb2.Timing(total_us=7, batch_size=len(obs)))

    def GetSpec(self, request, context):
        return policy_pb2.Spec(agent="fake", obs_dim=3, act_dim=2, noise_steps=2, max_batch=self.max_batch)


@pytest.fixture
def fake():
    servicer = ScriptedPolicy()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    policy_pb2_grpc.add_PolicyServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(0)


def test_act_returns_actions_and_keeps_timing(fake):
    servicer, addr = fake
    with PolicyClient(addr, token="t0k") as client:
        actions = client.act(np.ones((4, 3), np.float32))
        timing = client.last_timing
        assert actions.shape == (4, 2) and np.all(actions == 2)
        assert timing.total_us == 7 and timing.batch_size == 4 and timing.round_trip_us > 0
        assert client.spec().agent == "fake"
    assert servicer.metadata[0]["authorization"] == "Bearer t0k"


def test_unavailable_is_retried_with_growing_backoff(fake):
    servicer, addr = fake
    servicer.script = [grpc.StatusCode.UNAVAILABLE] * 3
    with PolicyClient(addr, retries=3, backoff_s=0.02) as client:
        actions = client.act(np.ones((1, 3), np.float32))
    assert np.all(actions == 2) and len(servicer.calls) == 4
    gaps = np.diff(servicer.calls)
    assert gaps[0] >= 0.02 and gaps[1] >= 0.04 and gaps[2] >= 0.08


def test_retries_are_bounded(fake):
    servicer, addr = fake
    servicer.script = [grpc.StatusCode.UNAVAILABLE] * 10
    with PolicyClient(addr, retries=2, backoff_s=0.001) as client, pytest.raises(PolicyCallError) as caught:
        client.act(np.ones((1, 3), np.float32))
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE and len(servicer.calls) == 3
    assert "after 2 retries" in caught.value.details


@pytest.mark.parametrize(
    "code", [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INTERNAL]
)
def test_other_codes_are_not_retried(fake, code):
    servicer, addr = fake
    servicer.script = [code]
    with PolicyClient(addr, retries=3, backoff_s=0.001) as client, pytest.raises(PolicyCallError) as caught:
        client.act(np.ones((1, 3), np.float32))
    err = caught.value
    assert err.code == code and "scripted failure" in str(err) and addr in str(err)
    assert isinstance(err, OmadError) and len(servicer.calls) == 1
    assert "retries" not in str(err)  # it was not retried, so it must not say so


def test_per_call_deadline(fake):
    servicer, addr = fake
    servicer.delay_s = 0.5
    with PolicyClient(addr, retries=3, timeout_s=10) as client:
        started = time.monotonic()
        with pytest.raises(PolicyCallError) as caught:
            client.act(np.ones((1, 3), np.float32), timeout=0.05)
    assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 0.4 and len(servicer.calls) == 1


def test_nothing_listening_is_unavailable_after_bounded_retries():
    with (
        PolicyClient("127.0.0.1:1", retries=1, backoff_s=0.01, timeout_s=2) as client,
        pytest.raises(PolicyCallError) as caught,
    ):
        client.spec()
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert check_health("127.0.0.1:1", timeout_s=1) == "UNAVAILABLE"
    with pytest.raises(PolicyCallError):
        wait_until_serving("127.0.0.1:1", timeout_s=0.3)


def test_stream_on_a_closed_session_is_a_clear_error(fake):
    servicer, addr = fake
    servicer.script = [grpc.StatusCode.UNIMPLEMENTED]
    with PolicyClient(addr) as client:
        session = client.stream()
        with pytest.raises(PolicyCallError) as caught:  # the scripted failure ends the stream
            session.act(np.ones((1, 3), np.float32))
        assert caught.value.code == grpc.StatusCode.UNIMPLEMENTED
        with pytest.raises(OmadError, match="closed"):
            session.act(np.ones((1, 3), np.float32))


def test_a_batch_over_the_servers_max_batch_is_split(fake):
    """8 rows to a server taking 3: requests of 3, 3 and 2, answers in order. With a seed, the client
    draws the whole batch's noise as the server would for one request (np.random.default_rng(seed))."""
    servicer, addr = fake
    servicer.max_batch = 3
    obs = np.arange(24, dtype=np.float32).reshape(8, 3)
    with PolicyClient(addr) as client:
        actions = client.act(obs)
        assert [r.obs.shape[0] for r in servicer.requests] == [3, 3, 2]
        np.testing.assert_array_equal(actions, 2 * obs[:, :2])
        assert client.last_timing.total_us == 3 * 7 and client.last_timing.batch_size == 3
        servicer.requests.clear()
        with client.stream() as session:
            actions = session.act(obs, seed=5)
        assert [r.obs.shape[0] for r in servicer.requests] == [3, 3, 2] and not any(
            r.HasField("seed") for r in servicer.requests
        )
        noise = np.random.default_rng(5).standard_normal((2, 8, 2), dtype=np.float32)
        np.testing.assert_array_equal(actions, 2 * obs[:, :2] + noise[0])
        servicer.requests.clear()
        client.act(obs[:3], seed=5)  # within the limit: one request, the seed left to the server
        assert len(servicer.requests) == 1 and servicer.requests[0].seed == 5


def test_a_stream_reply_has_a_deadline(fake):
    servicer, addr = fake
    servicer.stream_delay_s = 3.0
    with PolicyClient(addr) as client, client.stream(timeout=0.2) as session, pytest.raises(PolicyCallError) as caught:
        session.act(np.ones((1, 3), np.float32))
    assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED and "0.2 s" in caught.value.details


def test_closing_a_stream_cancels_a_call_in_progress(fake):
    """Another thread's close() wakes the caller stuck on a stalled server (no 'Internal gRPC call
    error' from reading the same stream twice)."""
    servicer, addr = fake
    servicer.stream_delay_s = 3.0
    outcome: list = []
    with PolicyClient(addr) as client:
        session = client.stream(timeout=60)

        def stuck() -> None:
            try:
                session.act(np.ones((1, 3), np.float32))
            except PolicyCallError as err:
                outcome.append(err)

        caller = threading.Thread(target=stuck)
        caller.start()
        while not servicer.calls and caller.is_alive():  # the request reached the stalled server
            time.sleep(0.01)
        session.close()
        caller.join(2)  # well before the server's 3 s answer or the 60 s deadline
        assert not caller.is_alive()
    assert outcome[0].code == grpc.StatusCode.CANCELLED
