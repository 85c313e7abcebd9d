"""What every call goes through, whichever service it belongs to.

`ServingState` is what the handlers share with the server's life cycle: the loaded model (or why
there is none), the in-flight count and open streams a drain waits for, and the metrics. Its
`unary` and `stream` wrap a handler: admission, in-flight counting, request metrics, and turning
every failure into a gRPC status whose message says what to change.

A handler that needs the model receives the `LoadedModel` it was admitted with, never None; it
submits its job before it next awaits, so a reload (which retires the old model's batcher on a
later turn of the event loop) cannot strand it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, NoReturn, TypeVar

import grpc
import numpy as np
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, Message

from omad.runtime.onnx_policy import RuntimeModelError, check_noise_source
from omad.serve import logs
from omad.serve._generated import policy_pb2
from omad.serve.batching import BatcherClosed, BatcherFailed, Job, JobResult, NonFiniteActions
from omad.serve.config import ServeConfig
from omad.serve.loaded import LoadedModel
from omad.serve.metrics import ServerMetrics

Status = grpc.StatusCode
log = logs.get_logger("omad.serve.calls")
DRAINING_MESSAGE = "the server is draining (shutting down); retry on another replica"

Request = TypeVar("Request")
Reply = TypeVar("Reply")
# grpc.aio ships no type information: a context is grpc.aio.ServicerContext at run time.
Context = Any


class RequestError(Exception):
    """Ends a call with a gRPC status; the message tells the caller what to change."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Unparsable:
    """Stands in for a request whose bytes are not a valid message, so the handler can say so."""

    message_type: str
    error: str


class OpenStream:
    """A streaming call, as the drain sees it."""

    __slots__ = ("drained", "idle")

    def __init__(self) -> None:
        self.idle = False  # waiting for the client's next request
        self.drained = False  # ended by the drain (not by the client)


class ServingState:
    def __init__(self, config: ServeConfig, metrics: ServerMetrics):
        self.config = config
        self.metrics = metrics
        self.loaded: LoadedModel | None = None  # swapped whole, in one assignment, by the life cycle
        self.draining = False
        self.failure: BaseException | None = None  # the inference machinery broke: nothing is served any more
        self.in_flight = 0
        self.streams: dict[asyncio.Task[Any], OpenStream] = {}
        self._noise_rng = np.random.default_rng(config.seed)

    @property
    def serving(self) -> LoadedModel | None:
        """The model that answers calls now, or None while loading, draining or broken."""
        if self.draining or self.failure is not None:
            return None
        return self.loaded

    def admit(self) -> LoadedModel:
        """The model a call runs with, or UNAVAILABLE saying why there is none."""
        if self.draining:
            raise RequestError(Status.UNAVAILABLE, DRAINING_MESSAGE)
        if self.failure is not None:
            raise RequestError(Status.UNAVAILABLE, "this server's inference failed and it serves nothing; restart it")
        if self.loaded is None:
            raise RequestError(Status.UNAVAILABLE, "the model is still loading; retry shortly")
        return self.loaded

    # ---- the policy ------------------------------------------------------------------------

    async def run_policy(
        self, model: LoadedModel, obs: np.ndarray, noise: np.ndarray | None, seed: int | None, zero_noise: bool
    ) -> JobResult:
        return await model.batcher.submit(self._job(model, obs, noise, seed, zero_noise))

    def _job(
        self, model: LoadedModel, obs: np.ndarray, noise: np.ndarray | None, seed: int | None, zero_noise: bool
    ) -> Job:
        """Validate one request and fix its noise now, so that merging it with others changes nothing."""
        try:
            check_noise_source(model.info.name, noise, seed, zero_noise)
            obs, noise = model.policy.validate(obs, noise)
        except RuntimeModelError as err:
            raise RequestError(Status.INVALID_ARGUMENT, str(err)) from None
        rows = obs.shape[0]
        if rows > self.config.max_batch:
            raise RequestError(
                Status.INVALID_ARGUMENT,
                f"batch of {rows} observations is over this server's limit of {self.config.max_batch} (--max-batch); split it",
            )
        if noise is None:
            if seed is not None or zero_noise:  # the same noise as OnnxPolicy.act(obs, seed=seed) would use
                noise = model.policy.sample_noise(rows, seed=seed, zero_noise=zero_noise)
            else:
                shape = (model.info.noise_steps, rows, model.info.act_dim)
                noise = self._noise_rng.standard_normal(shape, dtype=np.float32)
        return Job(obs, noise)

    # ---- wrapping handlers -------------------------------------------------------------------

    def unary(
        self, method: str, handle: Callable[[LoadedModel, Request, Context], Awaitable[Reply]]
    ) -> Callable[[Request | Unparsable, Context], Awaitable[Reply]]:
        """A unary handler that runs with the model it is admitted with (UNAVAILABLE if there is none)."""

        async def run(request: Request | Unparsable, context: Context) -> Reply:
            model = self.admit()
            return await handle(model, check_parsed(request), context)

        return self._guarded(method, run)

    def unary_open(
        self, method: str, handle: Callable[[Request, Context], Awaitable[Reply]]
    ) -> Callable[[Request | Unparsable, Context], Awaitable[Reply]]:
        """A unary handler that answers whether or not a model is loaded (liveness, readiness)."""

        async def run(request: Request | Unparsable, context: Context) -> Reply:
            return await handle(check_parsed(request), context)

        return self._guarded(method, run)

    def _guarded(
        self, method: str, run: Callable[[Request | Unparsable, Context], Awaitable[Reply]]
    ) -> Callable[[Request | Unparsable, Context], Awaitable[Reply]]:
        async def call(request: Request | Unparsable, context: Context) -> Reply:
            started = time.perf_counter()
            self.in_flight += 1
            try:
                return await run(request, context)
            except Exception as err:  # noqa: BLE001 - becomes a status; the server keeps serving
                await self.abort(method, err, context)
            except asyncio.CancelledError:  # deadline passed or the client went away
                self.metrics.observe_error(method, cancel_code(context))
                raise
            finally:
                self.in_flight -= 1
                self.metrics.observe_request(method, time.perf_counter() - started)

        return call

    def stream(
        self, method: str, handle: Callable[[OpenStream, Context], Awaitable[None]]
    ) -> Callable[[AsyncIterator[Any], Context], Awaitable[None]]:
        """A bidirectional stream, opened once a model is loaded. The handler reads the requests from
        the context and admits each one again (`admit`), so a stream that outlives a reload runs on
        the new model. Known as open while it runs, so a drain can end it."""

        async def call(requests: AsyncIterator[Any], context: Context) -> None:
            task = asyncio.current_task()
            assert task is not None  # a gRPC handler always runs in a task
            self.in_flight += 1
            stream = self.streams[task] = OpenStream()
            try:
                self.admit()
                await handle(stream, context)
            except Exception as err:  # noqa: BLE001
                await self.abort(method, err, context)
            except asyncio.CancelledError:
                self.metrics.observe_error(method, cancel_code(context))
                raise
            finally:
                del self.streams[task]
                self.in_flight -= 1

        return call

    async def abort(self, method: str, err: Exception, context: Context) -> NoReturn:
        """End the call with the status `err` stands for (counted and logged)."""
        if isinstance(err, grpc.aio.AbortError):  # already aborted below us
            raise err
        if isinstance(err, (BatcherClosed, BatcherFailed)):
            err = RequestError(Status.UNAVAILABLE, str(err))
        elif isinstance(err, NonFiniteActions):
            self.metrics.nonfinite_actions.inc()
            err = RequestError(
                Status.INTERNAL,
                f"the policy computed NaN or inf actions ({err}) from finite inputs: the observations or noise are "
                "far outside the range the network was trained on; send values of a realistic magnitude",
            )
        if not isinstance(err, RequestError):
            log.exception("internal error in %s", method)
            err = RequestError(Status.INTERNAL, f"internal server error in {method}; see the server log")
        logs.log_event(log, "call_failed", logging.DEBUG, method=method, code=err.code.name, reason=err.message)
        self.metrics.observe_error(method, err.code.name)
        await context.abort(err.code, err.message)
        raise AssertionError("grpc's context.abort returned instead of raising")

    def count_unauthenticated(self, method_path: str) -> None:
        self.metrics.observe_error(method_path.rsplit("/", 1)[-1], Status.UNAUTHENTICATED.name)


def add_service(
    server: Any,
    service: ServiceDescriptor,
    module: ModuleType,
    behaviors: dict[str, Callable[[Any, Context], Awaitable[Any]]],
) -> None:
    """Register a service from its descriptor, with parsers that turn bad bytes into INVALID_ARGUMENT."""
    handlers = {}
    for method in service.methods:
        request_class = getattr(module, method.input_type.name)
        kind = {
            (False, False): grpc.unary_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler,
        }[(method.client_streaming, method.server_streaming)]
        handlers[method.name] = kind(
            behaviors[method.name], request_deserializer=_lenient_parser(request_class), response_serializer=_serialize
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    server.add_registered_method_handlers(service.full_name, handlers)


def check_parsed(request: Request | Unparsable) -> Request:
    if isinstance(request, Unparsable):
        raise RequestError(
            Status.INVALID_ARGUMENT, f"request bytes are not a valid {request.message_type} message ({request.error})"
        )
    return request


def timing(result: JobResult, received_ns: int) -> policy_pb2.Timing:
    return policy_pb2.Timing(
        queue_us=result.queue_ns // 1000,
        inference_us=result.inference_ns // 1000,
        total_us=(time.perf_counter_ns() - received_ns) // 1000,
        batch_size=result.batch_size,
    )


def cancel_code(context: Context) -> str:
    remaining = context.time_remaining()
    return Status.DEADLINE_EXCEEDED.name if remaining is not None and remaining <= 0 else Status.CANCELLED.name


def _lenient_parser(message_class: type[Message]) -> Callable[[bytes], Message | Unparsable]:
    def parse(data: bytes) -> Message | Unparsable:
        try:
            return message_class.FromString(data)
        except DecodeError as err:
            return Unparsable(message_class.DESCRIPTOR.full_name, str(err))

    return parse


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()
