"""A small client for one agent's policy server (torch-free; numpy, grpcio and protobuf only).

    with PolicyClient("127.0.0.1:50051") as client:
        spec = client.spec()                          # agent, dims, bounds, K, model hash
        actions = client.act(obs)                     # obs [B, d_o] -> actions [B, d_a]
        timing = client.last_timing                   # server queue/inference times, round trip
        with client.stream() as session:              # closed loop: one long-lived stream
            action = session.act(obs, noise)          # (every policy source answers act(obs, noise))

Every failure surfaces as `PolicyCallError`, carrying the gRPC status code. Unary calls retry
with exponential backoff on UNAVAILABLE only (the server is starting, draining or unreachable);
any other code means the request itself is wrong, so retrying would not help.
"""

from __future__ import annotations

import queue
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from omad_core.errors import OmadError
from omad_serve._generated import policy_pb2, policy_pb2_grpc
from omad_serve.tensors import from_tensor, to_tensor

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class PolicyCallError(OmadError):
    """A failed call to a policy server; `code` is the grpc.StatusCode."""

    def __init__(self, addr: str, code: grpc.StatusCode, details: str):
        super().__init__(f"{addr}: {code.name}: {details}")
        self.addr = addr
        self.code = code
        self.details = details


@dataclass(frozen=True)
class ActTiming:
    """Server-side times from the reply, plus the round trip the client saw; microseconds."""

    queue_us: int
    inference_us: int
    total_us: int
    batch_size: int
    round_trip_us: int


def channel_credentials(
    tls_ca: str | Path | None = None, tls_cert: str | Path | None = None, tls_key: str | Path | None = None
) -> grpc.ChannelCredentials | None:
    """None for plaintext; TLS when a CA (or a client cert) is given; mTLS with cert and key."""
    if tls_ca is None and tls_cert is None and tls_key is None:
        return None
    if (tls_cert is None) != (tls_key is None):
        raise OmadError("a client certificate needs both tls_cert and tls_key")
    read = lambda path: Path(path).read_bytes() if path is not None else None  # noqa: E731
    return grpc.ssl_channel_credentials(
        root_certificates=read(tls_ca), private_key=read(tls_key), certificate_chain=read(tls_cert)
    )


def open_channel(addr: str, credentials: grpc.ChannelCredentials | None, server_name: str | None = None) -> grpc.Channel:
    options: list[tuple[str, int | str]] = [
        ("grpc.max_receive_message_length", DEFAULT_MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", DEFAULT_MAX_MESSAGE_BYTES),
    ]
    if server_name:  # the name the server certificate was issued for, when addr is an IP
        options.append(("grpc.ssl_target_name_override", server_name))
    if credentials is None:
        return grpc.insecure_channel(addr, options=options)
    return grpc.secure_channel(addr, credentials, options=options)


class PolicyClient:
    def __init__(
        self,
        addr: str,
        token: str | None = None,
        tls_ca: str | Path | None = None,
        tls_cert: str | Path | None = None,
        tls_key: str | Path | None = None,
        tls_server_name: str | None = None,
        timeout_s: float = 5.0,
        retries: int = 3,
        backoff_s: float = 0.05,
    ):
        self.addr = addr
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self._channel = open_channel(addr, channel_credentials(tls_ca, tls_cert, tls_key), tls_server_name)
        self._stub = policy_pb2_grpc.PolicyStub(self._channel)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.last_timing: ActTiming | None = None  # of the latest `act`

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def spec(self, timeout: float | None = None) -> policy_pb2.Spec:
        """The agent's spec: dims, bounds, K, noise steps, env id, model hash, server version, max batch."""
        return self._unary(self._stub.GetSpec, policy_pb2.SpecRequest(), timeout)

    def act(
        self,
        obs: np.ndarray,
        noise: np.ndarray | None = None,
        seed: int | None = None,
        zero_noise: bool = False,
        timeout: float | None = None,
        request_id: str = "",
    ) -> np.ndarray:
        """Actions [B, d_a] for obs [B, d_o] (a single obs [d_o] gives a single action [d_a]); the
        call's timing goes to `last_timing`.

        noise [K+1, B, d_a] makes the call exactly reproducible; so does a seed; zero_noise gives the
        deterministic policy; with none of them the server draws the noise.
        """
        request, single = act_request(obs, noise, seed, zero_noise, request_id)
        started = time.perf_counter_ns()
        reply = self._unary(self._stub.Act, request, timeout)
        actions, self.last_timing = decode_reply(reply, started, single)
        return actions

    def stream(self, timeout: float | None = None) -> PolicyStream:
        """A streaming session (one long-lived ActStream call); `timeout` bounds the whole session."""
        return PolicyStream(self.addr, self._stub, self._metadata, timeout)

    def _unary(self, method, request, timeout: float | None):
        delay = self.backoff_s
        for attempt in range(self.retries + 1):
            try:
                return method(request, timeout=timeout or self.timeout_s, metadata=self._metadata)
            except grpc.RpcError as err:
                if err.code() != grpc.StatusCode.UNAVAILABLE or attempt == self.retries:
                    raise PolicyCallError(self.addr, err.code(), err.details() or "") from None
            time.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")


class PolicyStream:
    """Closed-loop session: each `act` sends one request on the open stream and waits for its reply."""

    _END = object()

    def __init__(self, addr: str, stub: policy_pb2_grpc.PolicyStub, metadata, timeout: float | None):
        self.addr = addr
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self._replies = stub.ActStream(iter(self._requests.get, self._END), timeout=timeout, metadata=metadata)
        self._closed = False
        self.last_timing: ActTiming | None = None  # of the latest `act`

    def __enter__(self) -> PolicyStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def act(
        self, obs: np.ndarray, noise: np.ndarray | None = None, seed: int | None = None, zero_noise: bool = False,
        request_id: str = "",
    ) -> np.ndarray:
        """As `PolicyClient.act`, on the open stream; the call's timing goes to `last_timing`."""
        if self._closed:
            raise OmadError("this stream is closed; open a new one with client.stream()")
        request, single = act_request(obs, noise, seed, zero_noise, request_id)
        started = time.perf_counter_ns()
        self._requests.put(request)
        try:
            reply = next(self._replies)
        except grpc.RpcError as err:
            self._closed = True
            raise PolicyCallError(self.addr, err.code(), err.details() or "") from None
        except StopIteration:
            self._closed = True
            raise PolicyCallError(self.addr, grpc.StatusCode.UNAVAILABLE, "the server ended the stream") from None
        actions, self.last_timing = decode_reply(reply, started, single)
        return actions

    def close(self) -> None:
        """Half-close, so the server ends the call cleanly."""
        if self._closed:
            return
        self._closed = True
        self._requests.put(self._END)
        try:
            for _ in self._replies:
                pass
        except grpc.RpcError:
            pass


def act_request(
    obs: np.ndarray, noise: np.ndarray | None, seed: int | None, zero_noise: bool, request_id: str = ""
) -> tuple[policy_pb2.ActRequest, bool]:
    """The wire request, and whether obs was a single observation [d_o] (so the reply is unbatched)."""
    obs = np.asarray(obs, np.float32)
    single = obs.ndim == 1
    if single:
        obs = obs[None, :]
        if noise is not None and np.ndim(noise) == 2:
            noise = np.asarray(noise)[:, None, :]
    request = policy_pb2.ActRequest(obs=to_tensor(obs), zero_noise=zero_noise, request_id=request_id)
    if noise is not None:
        request.noise.CopyFrom(to_tensor(noise))
    if seed is not None:
        request.seed = seed
    return request, single


def decode_reply(reply: policy_pb2.ActReply, started_ns: int, single: bool) -> tuple[np.ndarray, ActTiming]:
    round_trip_us = (time.perf_counter_ns() - started_ns) // 1000
    actions = from_tensor(reply.action, "action")
    t = reply.timing
    timing = ActTiming(t.queue_us, t.inference_us, t.total_us, t.batch_size, round_trip_us)
    return (actions[0] if single else actions), timing


def check_health(
    addr: str, timeout_s: float = 3.0, service: str = "", credentials: grpc.ChannelCredentials | None = None,
    server_name: str | None = None,
) -> str:
    """The server's grpc.health.v1 status name (SERVING, NOT_SERVING, ...), or the gRPC error code
    name when it cannot answer (UNAVAILABLE, DEADLINE_EXCEEDED, ...)."""
    with open_channel(addr, credentials, server_name) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError as err:
            return err.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def wait_until_serving(addr: str, timeout_s: float = 30.0, **health_options) -> None:
    """Poll health until SERVING; PolicyCallError(UNAVAILABLE) if the server is not up in time."""
    deadline = time.monotonic() + timeout_s
    status = "UNKNOWN"
    while time.monotonic() < deadline:
        status = check_health(addr, timeout_s=min(1.0, max(0.05, deadline - time.monotonic())), **health_options)
        if status == "SERVING":
            return
        time.sleep(0.05)
    raise PolicyCallError(addr, grpc.StatusCode.UNAVAILABLE, f"not SERVING after {timeout_s:.0f} s (last status: {status})")
