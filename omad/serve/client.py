"""A small client for one agent's policy server (torch-free; numpy, grpcio and protobuf only).

    with PolicyClient("127.0.0.1:50051") as client:
        spec = client.spec()                          # agent, dims, bounds, K, model hash
        contract = client.contract()                  # the same fields as omad.core.agent.AgentContract
        actions = client.act(obs)                     # obs [B, d_o] -> actions [B, d_a]
        timing = client.last_timing                   # server queue/inference times, round trip
        model = client.last_model                     # sha256 and team id of the model that answered
        with client.stream() as session:              # closed loop: one long-lived stream
            action = session.act(obs, noise)          # (every policy source answers act(obs, noise))

Every failure surfaces as `PolicyCallError`, carrying the gRPC status code. Unary calls retry
with exponential backoff on UNAVAILABLE only (the server is starting, draining or unreachable);
any other code means the request itself is wrong, so retrying would not help. A batch larger than
the server's max_batch is split into requests it accepts. Streams never hang: each reply has a
deadline, and closing a stream cancels it.
"""

from __future__ import annotations

import queue
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from omad.core.agent import AgentContract
from omad.core.errors import OmadError
from omad.runtime.team import UNKNOWN_TEAM, ModelRef
from omad.serve._generated import policy_pb2, policy_pb2_grpc
from omad.serve.spec import contract_from_spec
from omad.serve.tensors import from_tensor, to_tensor

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


def open_channel(
    addr: str, credentials: grpc.ChannelCredentials | None, server_name: str | None = None
) -> grpc.Channel:
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
        self._spec: policy_pb2.Spec | None = None
        self.last_timing: ActTiming | None = None  # of the latest `act`
        self.last_model: ModelRef | None = None  # the model that answered the latest `act`

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def spec(self, timeout: float | None = None) -> policy_pb2.Spec:
        """The agent's spec: dims, bounds, K, noise steps, env id, model hash, server version, max batch."""
        self._spec = self._unary(self._stub.GetSpec, policy_pb2.SpecRequest(), timeout)
        return self._spec

    def contract(self, timeout: float | None = None) -> AgentContract:
        """The served agent's contract (omad.core.agent), from its spec; ContractError if it cannot hold."""
        return contract_from_spec(self.spec(timeout))

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
        deterministic policy; with none of them the server draws the noise. A batch over the
        server's max_batch (from GetSpec) goes out as several requests, with the same result.
        """
        started = time.perf_counter_ns()
        replies = [
            self._unary(self._stub.Act, request, timeout)
            for request in self._requests(obs, noise, seed, zero_noise, request_id)
        ]
        actions, self.last_timing = decode_replies(replies, started, np.ndim(obs) == 1)
        self.last_model = answered_by(replies)
        return actions

    def stream(self, timeout: float | None = None, session_timeout: float | None = None) -> PolicyStream:
        """A streaming session (one long-lived ActStream call). `timeout` bounds the wait for each
        reply (default: the client's timeout_s): past it the stream is cancelled and the call fails
        with DEADLINE_EXCEEDED. `session_timeout` is the gRPC deadline of the whole stream."""
        return PolicyStream(self, timeout or self.timeout_s, session_timeout)

    def _requests(self, obs, noise, seed, zero_noise: bool, request_id: str) -> list[policy_pb2.ActRequest]:
        """The wire requests for one batch: one, or several if it is larger than the server's max_batch."""
        obs = np.asarray(obs, np.float32)
        if obs.ndim == 1:
            obs = obs[None, :]
            if noise is not None and np.ndim(noise) == 2:
                noise = np.asarray(noise)[:, None, :]
        rows = obs.shape[0] if obs.ndim == 2 else 0
        spec = self._known_spec() if rows > 1 else None  # (max_batch >= 1: one row always fits)
        if spec is None or not spec.max_batch or rows <= spec.max_batch:
            return [act_request(obs, noise, seed, zero_noise, request_id)[0]]
        limit = spec.max_batch
        if seed is not None and noise is None:  # the noise the server would draw for the whole batch
            noise = np.random.default_rng(seed).standard_normal(
                (spec.noise_steps, rows, spec.act_dim), dtype=np.float32
            )
            seed = None
        return [
            act_request(
                obs[i : i + limit],
                None if noise is None else np.asarray(noise)[:, i : i + limit],
                seed,
                zero_noise,
                request_id,
            )[0]
            for i in range(0, rows, limit)
        ]

    def _known_spec(self) -> policy_pb2.Spec:
        """The server's spec, asked once (its max_batch 0 means no limit is known)."""
        return self._spec if self._spec is not None else self.spec()

    def _unary(self, method, request, timeout: float | None):
        delay = self.backoff_s
        for attempt in range(self.retries + 1):
            try:
                return method(request, timeout=timeout or self.timeout_s, metadata=self._metadata)
            except grpc.RpcError as err:
                code = err.code()
                if code != grpc.StatusCode.UNAVAILABLE or attempt == self.retries:
                    retried = f" (after {attempt} retries)" if attempt else ""
                    raise PolicyCallError(self.addr, code, (err.details() or "") + retried) from None
            time.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")


class PolicyStream:
    """Closed-loop session: each `act` sends its request(s) on the open stream and waits for the reply.

    Nothing here can hang: every wait for a reply has a deadline, enforced by a shared watchdog
    thread that cancels the stream (DEADLINE_EXCEEDED); `close()` from any thread cancels a call in
    progress; the threads involved are daemons. Not for concurrent `act` calls from several threads.
    """

    _END = object()

    def __init__(self, client: PolicyClient, timeout_s: float, session_timeout: float | None = None):
        self.addr = client.addr
        self.timeout_s = timeout_s
        self._client = client
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self._replies = client._stub.ActStream(
            iter(self._requests.get, self._END), timeout=session_timeout, metadata=client._metadata
        )
        self._closed = False
        self.wait_deadline: float | None = None  # monotonic time the current wait for a reply must end by
        self._expired = False
        self.last_timing: ActTiming | None = None  # of the latest `act`
        self.last_model: ModelRef | None = None  # the model that answered the latest `act`
        _WATCHDOG.watch(self)

    def __enter__(self) -> PolicyStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def act(
        self,
        obs: np.ndarray,
        noise: np.ndarray | None = None,
        seed: int | None = None,
        zero_noise: bool = False,
        request_id: str = "",
    ) -> np.ndarray:
        """As `PolicyClient.act`, on the open stream; the call's timing goes to `last_timing`."""
        if self._closed:
            raise OmadError("this stream is closed; open a new one with client.stream()")
        started = time.perf_counter_ns()
        requests = self._client._requests(obs, noise, seed, zero_noise, request_id)
        self.wait_deadline = time.monotonic() + self.timeout_s
        try:
            for request in requests:
                self._requests.put(request)
            replies = [next(self._replies) for _ in requests]
        except grpc.RpcError as err:
            self._closed = True
            if self._expired:
                raise PolicyCallError(
                    self.addr,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"no reply within {self.timeout_s:g} s; the stream was cancelled",
                ) from None
            raise PolicyCallError(self.addr, err.code(), err.details() or "") from None
        except StopIteration:
            self._closed = True
            raise PolicyCallError(self.addr, grpc.StatusCode.UNAVAILABLE, "the server ended the stream") from None
        finally:
            self.wait_deadline = None
        actions, self.last_timing = decode_replies(replies, started, np.ndim(obs) == 1)
        self.last_model = answered_by(replies)
        return actions

    def close(self) -> None:
        """Half-close and let the server end the call; cancel it instead if a reply is being awaited
        (from another thread) or the server does not end it within the timeout."""
        if self._closed:
            self._replies.cancel()  # a no-op on a finished call
            return
        self._closed = True
        if self.wait_deadline is not None:  # another thread waits in act(): wake it up
            self._replies.cancel()
            return
        self._requests.put(self._END)
        self.wait_deadline = time.monotonic() + self.timeout_s
        try:
            for _ in self._replies:
                pass
        except grpc.RpcError:
            pass
        finally:
            self.wait_deadline = None

    def _expire(self) -> None:
        """Called by the watchdog when a wait passed its deadline."""
        self._expired = True
        self._replies.cancel()


class _Watchdog:
    """One daemon thread for every stream: cancels those whose current wait passed its deadline.

    Checking a few times per second costs each `act` two attribute writes, and no thread or timer."""

    TICK_S = 0.02

    def __init__(self):
        self._streams: weakref.WeakSet[PolicyStream] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def watch(self, stream: PolicyStream) -> None:
        with self._lock:
            self._streams.add(stream)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="omad-stream-watchdog", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(self.TICK_S)
            now = time.monotonic()
            with self._lock:
                streams = list(self._streams)
                if not streams:
                    self._thread = None
                    return
            for stream in streams:
                deadline = stream.wait_deadline
                if deadline is not None and now > deadline:
                    stream.wait_deadline = None
                    stream._expire()


_WATCHDOG = _Watchdog()


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


def decode_replies(replies: list[policy_pb2.ActReply], started_ns: int, single: bool) -> tuple[np.ndarray, ActTiming]:
    """Actions and timing of one batch, sent as one request or split into several (their times
    add up, except the queue time and batch size: the largest)."""
    round_trip_us = (time.perf_counter_ns() - started_ns) // 1000
    actions = from_tensor(replies[0].action, "action")
    t = replies[0].timing
    timing = ActTiming(t.queue_us, t.inference_us, t.total_us, t.batch_size, round_trip_us)
    if len(replies) > 1:
        actions = np.concatenate([from_tensor(r.action, "action") for r in replies])
        times = [r.timing for r in replies]
        timing = ActTiming(
            max(t.queue_us for t in times),
            sum(t.inference_us for t in times),
            sum(t.total_us for t in times),
            max(t.batch_size for t in times),
            round_trip_us,
        )
    return (actions[0] if single else actions), timing


def answered_by(replies: list[policy_pb2.ActReply]) -> ModelRef:
    """The model that computed the last reply of a batch: its sha256 and team id ("unknown" when the
    server's graph carries none)."""
    return ModelRef(replies[-1].model_sha256, replies[-1].team_id or UNKNOWN_TEAM)


def check_health(
    addr: str,
    timeout_s: float = 3.0,
    service: str = "",
    credentials: grpc.ChannelCredentials | None = None,
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
    raise PolicyCallError(
        addr, grpc.StatusCode.UNAVAILABLE, f"not SERVING after {timeout_s:.0f} s (last status: {status})"
    )
