"""PolicyClient against a scripted fake server: retries on UNAVAILABLE only, bounded, with backoff;
per-call deadlines; errors carry the gRPC code."""

from __future__ import annotations

import time
from concurrent import futures

import grpc
import numpy as np
import pytest

from omad_core.errors import OmadError
from omad_serve._generated import policy_pb2, policy_pb2_grpc
from omad_serve.client import PolicyCallError, PolicyClient, check_health, wait_until_serving
from omad_serve.tensors import from_tensor, to_tensor


class ScriptedPolicy(policy_pb2_grpc.PolicyServicer):
    """Fails the first calls with the scripted codes, then answers action = 2 * obs[:, :2]."""

    def __init__(self):
        self.script: list[grpc.StatusCode] = []
        self.calls: list[float] = []
        self.delay_s = 0.0
        self.metadata: list[dict] = []

    def Act(self, request, context):
        self.calls.append(time.monotonic())
        self.metadata.append(dict(context.invocation_metadata()))
        time.sleep(self.delay_s)
        if self.script:
            context.abort(self.script.pop(0), "scripted failure")
        obs = from_tensor(request.obs, "obs")
        return policy_pb2.ActReply(action=to_tensor(2 * obs[:, :2]), timing=policy_pb2.Timing(total_us=7, batch_size=len(obs)))

    def GetSpec(self, request, context):
        return policy_pb2.Spec(agent="fake", obs_dim=3, act_dim=2)


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


@pytest.mark.parametrize("code", [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INTERNAL])
def test_other_codes_are_not_retried(fake, code):
    servicer, addr = fake
    servicer.script = [code]
    with PolicyClient(addr, retries=3, backoff_s=0.001) as client, pytest.raises(PolicyCallError) as caught:
        client.act(np.ones((1, 3), np.float32))
    err = caught.value
    assert err.code == code and "scripted failure" in str(err) and addr in str(err)
    assert isinstance(err, OmadError) and len(servicer.calls) == 1


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
    with PolicyClient("127.0.0.1:1", retries=1, backoff_s=0.01, timeout_s=2) as client, pytest.raises(PolicyCallError) as caught:
        client.spec()
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert check_health("127.0.0.1:1", timeout_s=1) == "UNAVAILABLE"
    with pytest.raises(PolicyCallError):
        wait_until_serving("127.0.0.1:1", timeout_s=0.3)


def test_stream_on_a_closed_session_is_a_clear_error(fake):
    _servicer, addr = fake
    with PolicyClient(addr) as client:
        session = client.stream()
        with pytest.raises(PolicyCallError) as caught:  # the fake has no ActStream
            session.act(np.ones((1, 3), np.float32))
        assert caught.value.code == grpc.StatusCode.UNIMPLEMENTED
        with pytest.raises(OmadError, match="closed"):
            session.act(np.ones((1, 3), np.float32))
