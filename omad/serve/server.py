"""`omad serve --model AGENT.onnx`: one agent's policy over gRPC.

One port carries the omad.v1.Policy service, the KServe v2 GRPCInferenceService, the standard
health service and reflection. Requests are validated on the event loop, then handed to the
micro-batcher (batching.py): a lone request runs at once, concurrent ones merge into one call.

Life cycle: listen (health NOT_SERVING) -> load, verify and warm up the model -> SERVING.
  SIGHUP: reload the model from the same path; verified and warmed up beside the old one, swapped
          in between batches; a file that fails verification is refused and the old one keeps serving.
  SIGTERM: drain: health NOT_SERVING, new calls and idle streams get UNAVAILABLE at once, a busy
          stream after its current reply, in-flight calls finish (within --grace-s) -> exit.
  The inference machinery failing: health NOT_SERVING, every call UNAVAILABLE (restart the server).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import metadata
from typing import Any, cast

import grpc
import numpy as np
from google.protobuf import descriptor_pool
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from omad.runtime.onnx_policy import OnnxPolicy, RuntimeModelError, check_noise_source
from omad.runtime.schema import ACTION_OUTPUT, NOISE_INPUT, OBS_INPUT, ModelInfo
from omad.serve import logs
from omad.serve._generated import grpc_service_pb2 as kserve_pb2
from omad.serve._generated import policy_pb2
from omad.serve.batching import BatcherClosed, BatcherFailed, Job, JobResult, MicroBatcher, NonFiniteActions
from omad.serve.config import ServeConfig, ServeConfigError
from omad.serve.metrics import ServerMetrics
from omad.serve.security import BearerTokenInterceptor, server_credentials
from omad.serve.tensors import FLOAT32_LE, TensorError, decode_float32, from_tensor, to_tensor

POLICY_SERVICE = policy_pb2.DESCRIPTOR.services_by_name["Policy"]
KSERVE_SERVICE = kserve_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
KSERVE_MODEL_VERSION = "1"
KSERVE_PLATFORM = "onnxruntime_onnx"
MAX_WARMUP_ROWS = 256
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
DRAINING_MESSAGE = "the server is draining (shutting down); retry on another replica"
# What a reloaded model must share with the one it replaces: clients were told these by GetSpec.
CONTRACT_FIELDS = (
    "agent",
    "obs_dim",
    "act_dim",
    "denoising_steps",
    "noise_steps",
    "action_low",
    "action_high",
    "env_id",
)

Status = grpc.StatusCode
log = logs.get_logger("omad.serve.server")


def server_version() -> str:
    try:
        return metadata.version("omad")
    except metadata.PackageNotFoundError:
        return "unknown"


class RequestError(Exception):
    """Ends a call with a gRPC status; the message tells the caller what to change."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class _OpenStream:
    """An ActStream call, as the drain sees it."""

    __slots__ = ("drained", "idle")

    def __init__(self):
        self.idle = False  # waiting for the client's next request
        self.drained = False  # ended by the drain (not by the client)


@dataclass(frozen=True)
class Unparsable:
    """Stands in for a request whose bytes are not a valid message, so the handler can say so."""

    message_type: str
    error: str


class PolicyServer:
    def __init__(
        self, config: ServeConfig, token: str | None = None, tls: tuple[bytes, bytes, bytes | None] | None = None
    ):
        self.config = config
        self.metrics = ServerMetrics()
        self.metrics.in_flight.set_function(lambda: self._in_flight)  # read at scrape time, free per call
        self.port: int | None = None
        self.metrics_port: int | None = None
        self.info: ModelInfo | None = None
        self._token = token
        self._tls = tls
        self._policy: OnnxPolicy | None = None
        self._noise_rng = np.random.default_rng(config.seed)
        self._health = health.aio.HealthServicer()
        self._server: grpc.aio.Server | None = None
        self._batcher: MicroBatcher | None = None
        self._ready = False
        self._draining = False
        self._in_flight = 0
        self._spec: policy_pb2.Spec | None = None
        self._streams: dict[asyncio.Task, _OpenStream] = {}
        self._reload: asyncio.Task | None = None
        self._reload_again = False
        self._background: set[asyncio.Task] = set()  # tasks started from callbacks, kept until done

    # ---- life cycle -------------------------------------------------------------------------

    async def start(self) -> int:
        """Listen, load and warm up the model, then report SERVING. Returns the bound port."""
        await self.listen()
        try:
            await self.load_model()
        except BaseException:
            await self.stop(grace_s=0)
            raise
        return self.port

    async def listen(self) -> None:
        """Bind the port and start answering: health NOT_SERVING, model calls UNAVAILABLE until loaded."""
        cfg = self.config
        interceptors = []
        if self._token is not None:
            interceptors.append(BearerTokenInterceptor(self._token, on_reject=self._count_unauthenticated))
        server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", cfg.max_message_bytes),
                ("grpc.max_send_message_length", cfg.max_message_bytes),
                ("grpc.so_reuseport", 0),  # a port already in use is an error, not a silent share
            ],
        )
        self._add_service(
            server,
            POLICY_SERVICE,
            policy_pb2,
            {
                "GetSpec": self._unary("GetSpec", self._get_spec),
                "Act": self._unary("Act", self._act),
                "ActStream": self._stream("ActStream", self._act_stream),
            },
        )
        self._add_service(
            server,
            KSERVE_SERVICE,
            kserve_pb2,
            {
                "ServerLive": self._unary("ServerLive", self._server_live, needs_model=False),
                "ServerReady": self._unary("ServerReady", self._server_ready, needs_model=False),
                "ModelReady": self._unary("ModelReady", self._model_ready, needs_model=False),
                "ServerMetadata": self._unary("ServerMetadata", self._server_metadata, needs_model=False),
                "ModelMetadata": self._unary("ModelMetadata", self._model_metadata),
                "ModelInfer": self._unary("ModelInfer", self._model_infer),
                "ModelConfig": self._unary("ModelConfig", self._model_config),
            },
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        services = [POLICY_SERVICE.full_name, KSERVE_SERVICE.full_name, HEALTH_SERVICE, reflection.SERVICE_NAME]
        reflection.enable_server_reflection(services, server, pool=_reflection_pool())

        address = f"{cfg.host}:{cfg.port}"
        try:
            if self._tls is not None:
                port = server.add_secure_port(address, server_credentials(*self._tls))
            else:
                port = server.add_insecure_port(address)
        except RuntimeError as err:
            port, reason = 0, str(err)
        else:
            reason = "address in use or not available"
        if not port:
            raise ServeConfigError(f"cannot listen on {address}: {reason}")
        if cfg.metrics_port is not None:
            try:
                self.metrics_port = self.metrics.serve_http(cfg.host.strip("[]"), cfg.metrics_port)
            except OSError as err:
                raise ServeConfigError(f"cannot serve metrics on {cfg.host}:{cfg.metrics_port}: {err}") from None
        await server.start()
        self._server, self.port = server, port
        logs.log_event(
            log,
            "listening",
            addr=f"{cfg.host}:{port}",
            port=port,
            metrics_port=self.metrics_port,
            tls=self._tls is not None,
            mtls=bool(self._tls and self._tls[2]),
            auth=self._token is not None,
            config=cfg.model_dump(mode="json"),
        )
        if cfg.host not in LOOPBACK_HOSTS and (self._tls is None or self._token is None):
            logs.log_event(
                log,
                "exposed",
                logging.WARNING,
                host=cfg.host,
                advice="serving beyond loopback: consider --tls-cert/--tls-key (and --tls-client-ca) plus --token-file",
            )

    def _load_and_warm_up(self) -> OnnxPolicy:
        """Load and verify the model file (runtime.OnnxPolicy: metadata, weights hash, manifest if
        present), then run it once per warm-up size: first calls allocate buffers."""
        cfg = self.config
        policy = OnnxPolicy(cfg.model, threads=cfg.threads, provider=cfg.provider)
        for rows in sorted({1, min(cfg.max_batch, MAX_WARMUP_ROWS)}):
            policy.act(np.zeros((rows, policy.info.obs_dim), np.float32), zero_noise=True)
        return policy

    async def load_model(self) -> None:
        """Load, verify and warm up the model in a thread (health stays NOT_SERVING meanwhile), then SERVING."""
        cfg = self.config
        started = time.perf_counter()
        policy = await asyncio.to_thread(self._load_and_warm_up)
        self._use(policy)
        self._batcher = MicroBatcher(
            policy,
            cfg.max_batch,
            cfg.max_delay_us,
            merge=cfg.batching,
            offload=cfg.offload_inference,
            on_batch=self.metrics.observe_batch,
            on_failure=self._inference_failed,
        )
        self._batcher.start()
        self.metrics.queued.set_function(lambda: self._batcher.queued)
        info = policy.info
        logs.log_event(
            log,
            "model_loaded",
            agent=info.agent,
            obs_dim=info.obs_dim,
            act_dim=info.act_dim,
            denoising_steps=info.denoising_steps,
            provider=cfg.provider,
            inference_thread=cfg.offload_inference,
            seconds=round(time.perf_counter() - started, 3),
        )
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        self._ready = True
        logs.log_event(
            log, "serving", agent=info.agent, addr=f"{cfg.host}:{self.port}", port=self.port, model_sha256=info.sha256
        )

    def _use(self, policy: OnnxPolicy) -> None:
        """Make `policy` the one that answers from now on (start-up, or a reload between batches)."""
        cfg, info = self.config, policy.info
        self._policy, self.info = policy, info
        self._spec = policy_pb2.Spec(
            agent=info.agent,
            obs_dim=info.obs_dim,
            act_dim=info.act_dim,
            action_low=info.action_low,
            action_high=info.action_high,
            denoising_steps=info.denoising_steps,
            noise_steps=info.noise_steps,
            env_id=info.env_id,
            algo=info.algo,
            model_sha256=info.sha256,
            server_version=server_version(),
            max_batch=cfg.max_batch,
            weights_sha256=info.weights_sha256,
            format_version=str(info.format_version),
            source_run=info.source_run,
        )
        if self._batcher is not None:
            self._batcher.model = policy

    def request_reload(self) -> None:
        """SIGHUP: reload the model from its path. Signals that arrive during a reload cause one more."""
        if self._reload is not None and not self._reload.done():
            self._reload_again = True
            return
        self._reload = asyncio.ensure_future(self.reload())

    async def reload(self) -> bool:
        """Load, verify and warm up the model file again beside the serving one, then swap it in
        between batches. A file that fails is refused (logged, counted) and the old model keeps serving."""
        while True:
            self._reload_again = False
            swapped = await self._reload_once()
            if not self._reload_again:
                return swapped

    async def _reload_once(self) -> bool:
        if not self._ready or self._draining:
            logs.log_event(log, "reload_skipped", logging.WARNING, reason="not serving (loading or draining)")
            return False
        old = self.info
        started = time.perf_counter()
        try:
            policy = await asyncio.to_thread(self._load_and_warm_up)
            changed = [f for f in CONTRACT_FIELDS if getattr(policy.info, f) != getattr(old, f)]
            if changed:
                raise RuntimeModelError(
                    f"{self.config.model}: "
                    + "; ".join(f"{f} {getattr(policy.info, f)!r} != serving {getattr(old, f)!r}" for f in changed)
                    + " (a reload must keep the agent's contract; start a new server for another model)"
                )
        except Exception as err:  # noqa: BLE001 - whatever breaks a reload, the old model keeps serving
            reason = str(err) if isinstance(err, RuntimeModelError) else f"{self.config.model}: {err!r}"
            self.metrics.reloads.labels("refused").inc()
            logs.log_event(log, "reload_refused", logging.ERROR, reason=reason, model_sha256=old.sha256)
            return False
        if self._draining or self._batcher.failure is not None:
            return False
        self._use(policy)
        self.metrics.reloads.labels("ok").inc()
        logs.log_event(
            log,
            "reloaded",
            agent=policy.info.agent,
            old_model_sha256=old.sha256,
            model_sha256=policy.info.sha256,
            seconds=round(time.perf_counter() - started, 3),
        )
        return True

    def _inference_failed(self, err: BaseException) -> None:
        """The batcher's thread or bookkeeping broke: every later call gets UNAVAILABLE; say so loudly."""
        self.metrics.inference_failures.inc()
        logs.log_event(
            log,
            "inference_failed",
            logging.ERROR,
            error=repr(err),
            advice="health is NOT_SERVING and every call gets UNAVAILABLE; restart this server",
        )
        self._spawn(self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING))

    async def _set_health(self, status) -> None:
        for service in ("", POLICY_SERVICE.full_name, KSERVE_SERVICE.full_name):
            await self._health.set(service, status)

    def _spawn(self, coroutine) -> None:
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain(self) -> None:
        """Health NOT_SERVING; new calls and idle streams get UNAVAILABLE at once, busy streams after
        their current reply; stop as soon as in-flight calls finish (at most --grace-s)."""
        if self._draining:
            return
        self._draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.grace_s
        logs.log_event(
            log, "draining", in_flight=self._in_flight, open_streams=len(self._streams), grace_s=self.config.grace_s
        )
        await self._health.enter_graceful_shutdown()
        for task, stream in self._streams.items():
            if stream.idle:  # waiting for the client's next request: end it now
                stream.drained = True
                task.cancel()
        while self._in_flight > 0 and loop.time() < deadline:
            await asyncio.sleep(0.005)
        await self.stop(grace_s=max(0.0, deadline - loop.time()))

    async def stop(self, grace_s: float = 0.0) -> None:
        self._draining = True
        if self._server is not None:
            await self._server.stop(grace_s)
        if self._batcher is not None:
            await self._batcher.close()
        await asyncio.to_thread(self.metrics.stop_http)
        logs.log_event(log, "stopped", unfinished_calls=self._in_flight)

    # ---- call plumbing ----------------------------------------------------------------------

    @staticmethod
    def _add_service(server: grpc.aio.Server, service, module, behaviors: dict[str, Callable]) -> None:
        """Register a service from its descriptor, with parsers that turn bad bytes into INVALID_ARGUMENT."""
        handlers = {}
        for method in service.methods:
            request_class = getattr(module, method.input_type.name)
            kind = {
                (False, False): grpc.unary_unary_rpc_method_handler,
                (True, True): grpc.stream_stream_rpc_method_handler,
            }[(method.client_streaming, method.server_streaming)]
            handlers[method.name] = kind(
                behaviors[method.name],
                request_deserializer=_lenient_parser(request_class),
                response_serializer=_serialize,
            )
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
        server.add_registered_method_handlers(service.full_name, handlers)

    def _admit(self, needs_model: bool) -> None:
        if not needs_model:
            return
        if self._draining:
            raise RequestError(Status.UNAVAILABLE, DRAINING_MESSAGE)
        if not self._ready:
            raise RequestError(Status.UNAVAILABLE, "the model is still loading; retry shortly")
        if self._batcher.failure is not None:
            raise RequestError(Status.UNAVAILABLE, "this server's inference failed and it serves nothing; restart it")

    def _unary(self, method: str, handle: Callable[[Any, Any], Awaitable[Any]], needs_model: bool = True):
        async def call(request, context):
            started = time.perf_counter()
            self._in_flight += 1
            try:
                self._admit(needs_model)
                _check_parsed(request)
                return await handle(request, context)
            except Exception as err:  # noqa: BLE001 - becomes a status; the server keeps serving
                await self._abort(method, err, context)
            except asyncio.CancelledError:  # deadline passed or the client went away
                self.metrics.observe_error(method, _cancel_code(context))
                raise
            finally:
                self._in_flight -= 1
                self.metrics.observe_request(method, time.perf_counter() - started)

        return call

    def _stream(self, method: str, handle: Callable[[Any, Any], Awaitable[None]]):
        async def call(requests, context):
            self._in_flight += 1
            try:
                self._admit(needs_model=True)
                await handle(requests, context)
            except Exception as err:  # noqa: BLE001
                await self._abort(method, err, context)
            except asyncio.CancelledError:
                self.metrics.observe_error(method, _cancel_code(context))
                raise
            finally:
                self._in_flight -= 1

        return call

    async def _abort(self, method: str, err: Exception, context) -> None:
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

    def _count_unauthenticated(self, method_path: str) -> None:
        self.metrics.observe_error(method_path.rsplit("/", 1)[-1], Status.UNAUTHENTICATED.name)

    # ---- the policy ------------------------------------------------------------------------

    async def _run_policy(
        self, obs: np.ndarray, noise: np.ndarray | None, seed: int | None, zero_noise: bool
    ) -> JobResult:
        return await self._batcher.submit(self._job(obs, noise, seed, zero_noise))

    def _job(self, obs: np.ndarray, noise: np.ndarray | None, seed: int | None, zero_noise: bool) -> Job:
        """Validate one request and fix its noise now, so that merging it with others changes nothing."""
        try:
            check_noise_source(self.info.agent, noise, seed, zero_noise)
            obs, noise = self._policy.validate(obs, noise)
        except RuntimeModelError as err:
            raise RequestError(Status.INVALID_ARGUMENT, str(err)) from None
        rows = obs.shape[0]
        if rows > self.config.max_batch:
            raise RequestError(
                Status.INVALID_ARGUMENT,
                f"batch of {rows} observations is over this server's limit of {self.config.max_batch} (--max-batch); split it",
            )
        if noise is None:
            noise = self._draw_noise(rows, seed, zero_noise)
        return Job(obs, noise)

    def _draw_noise(self, rows: int, seed: int | None, zero_noise: bool) -> np.ndarray:
        if seed is not None or zero_noise:  # the same noise as OnnxPolicy.act(obs, seed=seed) would use
            return self._policy.sample_noise(rows, seed=seed, zero_noise=zero_noise)
        shape = (self.info.noise_steps, rows, self.info.act_dim)
        return self._noise_rng.standard_normal(shape, dtype=np.float32)

    # ---- omad.v1.Policy ----------------------------------------------------------------------

    async def _get_spec(self, request: policy_pb2.SpecRequest, context) -> policy_pb2.Spec:
        return self._spec

    async def _act(self, request: policy_pb2.ActRequest, context) -> policy_pb2.ActReply:
        return await self._act_once(request, time.perf_counter_ns())

    async def _act_stream(self, requests, context) -> None:
        """One reply per request, in order. A drain ends the stream with UNAVAILABLE: at once if it
        is waiting for a request, else right after the current reply."""
        task = asyncio.current_task()
        assert task is not None  # a gRPC handler always runs in a task
        stream = self._streams[task] = _OpenStream()
        try:
            while not self._draining:
                stream.idle = True
                try:
                    request = await context.read()
                except asyncio.CancelledError:
                    if not stream.drained:  # the client went away or its deadline passed
                        raise
                    task.uncancel()
                    break
                stream.idle = False
                if request is grpc.aio.EOF:
                    return
                received_ns = time.perf_counter_ns()
                _check_parsed(request)
                await context.write(await self._act_once(request, received_ns))
                self.metrics.observe_request("ActStream", (time.perf_counter_ns() - received_ns) / 1e9)
            raise RequestError(Status.UNAVAILABLE, DRAINING_MESSAGE)
        finally:
            del self._streams[task]

    async def _act_once(self, request: policy_pb2.ActRequest, received_ns: int) -> policy_pb2.ActReply:
        try:
            obs = from_tensor(request.obs, "obs")
            noise = from_tensor(request.noise, "noise") if request.HasField("noise") else None
        except TensorError as err:
            raise RequestError(Status.INVALID_ARGUMENT, str(err)) from None
        seed = request.seed if request.HasField("seed") else None
        result = await self._run_policy(obs, noise, seed, request.zero_noise)
        return policy_pb2.ActReply(
            action=to_tensor(result.action),
            timing=_timing(result, received_ns),
            model_sha256=_model_sha256(result),
            request_id=request.request_id,
        )

    # ---- KServe v2 GRPCInferenceService ---------------------------------------------------

    async def _server_live(self, request, context) -> kserve_pb2.ServerLiveResponse:
        return kserve_pb2.ServerLiveResponse(live=True)

    async def _server_ready(self, request, context) -> kserve_pb2.ServerReadyResponse:
        return kserve_pb2.ServerReadyResponse(ready=self._ready and not self._draining)

    async def _model_ready(self, request, context) -> kserve_pb2.ModelReadyResponse:
        ready = self._ready and not self._draining and self._is_this_model(request.name, request.version)
        return kserve_pb2.ModelReadyResponse(ready=ready)

    async def _server_metadata(self, request, context) -> kserve_pb2.ServerMetadataResponse:
        return kserve_pb2.ServerMetadataResponse(name="omad", version=server_version())

    async def _model_metadata(self, request, context) -> kserve_pb2.ModelMetadataResponse:
        self._require_this_model(request.name, request.version)
        info = self.info
        tensor = kserve_pb2.ModelMetadataResponse.TensorMetadata
        return kserve_pb2.ModelMetadataResponse(
            name=info.agent,
            versions=[KSERVE_MODEL_VERSION],
            platform=KSERVE_PLATFORM,
            inputs=[
                tensor(name=OBS_INPUT, datatype="FP32", shape=[-1, info.obs_dim]),
                tensor(name=NOISE_INPUT, datatype="FP32", shape=[info.noise_steps, -1, info.act_dim]),
            ],
            outputs=[tensor(name=ACTION_OUTPUT, datatype="FP32", shape=[-1, info.act_dim])],
        )

    async def _model_config(self, request: kserve_pb2.ModelConfigRequest, context) -> kserve_pb2.ModelConfigResponse:
        """Triton's ModelConfig (perf_analyzer asks for it): max_batch_size 0, since noise batches on axis 1."""
        self._require_this_model(request.name, request.version)
        info, fp32 = self.info, kserve_pb2.TYPE_FP32
        return kserve_pb2.ModelConfigResponse(
            config=kserve_pb2.ModelConfig(
                name=info.agent,
                platform=KSERVE_PLATFORM,
                backend="onnxruntime",
                max_batch_size=0,
                input=[
                    kserve_pb2.ModelInput(name=OBS_INPUT, data_type=fp32, dims=[-1, info.obs_dim]),
                    kserve_pb2.ModelInput(
                        name=NOISE_INPUT, data_type=fp32, dims=[info.noise_steps, -1, info.act_dim], optional=True
                    ),
                ],
                output=[kserve_pb2.ModelOutput(name=ACTION_OUTPUT, data_type=fp32, dims=[-1, info.act_dim])],
            )
        )

    async def _model_infer(self, request: kserve_pb2.ModelInferRequest, context) -> kserve_pb2.ModelInferResponse:
        received_ns = time.perf_counter_ns()
        self._require_this_model(request.model_name, request.model_version)
        inputs = _kserve_inputs(request)
        for output in request.outputs:
            if output.name != ACTION_OUTPUT:
                raise RequestError(
                    Status.INVALID_ARGUMENT,
                    f"unknown output {output.name!r}; this model has one output, {ACTION_OUTPUT!r}",
                )
        seed, zero_noise = _kserve_noise_parameters(request)
        result = await self._run_policy(inputs[OBS_INPUT], inputs.get(NOISE_INPUT), seed, zero_noise)
        action = np.ascontiguousarray(result.action, FLOAT32_LE)
        response = kserve_pb2.ModelInferResponse(
            model_name=self.info.agent,
            model_version=KSERVE_MODEL_VERSION,
            id=request.id,
            outputs=[
                kserve_pb2.ModelInferResponse.InferOutputTensor(name=ACTION_OUTPUT, datatype="FP32", shape=action.shape)
            ],
            raw_output_contents=[action.tobytes()],
        )
        timing = _timing(result, received_ns)
        for name in ("queue_us", "inference_us", "total_us", "batch_size"):
            response.parameters[name].int64_param = getattr(timing, name)
        response.parameters["model_sha256"].string_param = _model_sha256(result)
        return response

    def _is_this_model(self, name: str, version: str) -> bool:
        return name == self.info.agent and version in ("", KSERVE_MODEL_VERSION)

    def _require_this_model(self, name: str, version: str) -> None:
        if not self._is_this_model(name, version):
            raise RequestError(
                Status.NOT_FOUND,
                f"unknown model {name!r} version {version!r}: this server serves {self.info.agent!r} version {KSERVE_MODEL_VERSION}",
            )


def _kserve_inputs(request: kserve_pb2.ModelInferRequest) -> dict[str, np.ndarray]:
    raw = request.raw_input_contents
    if raw and any(tensor.HasField("contents") for tensor in request.inputs):
        raise RequestError(
            Status.INVALID_ARGUMENT, "send every input either in raw_input_contents or in its contents field, not both"
        )
    if raw and len(raw) != len(request.inputs):
        raise RequestError(
            Status.INVALID_ARGUMENT,
            f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs; send one per input",
        )
    arrays: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(request.inputs):
        if tensor.name not in (OBS_INPUT, NOISE_INPUT):
            raise RequestError(
                Status.INVALID_ARGUMENT,
                f"unknown input {tensor.name!r}; this model takes {OBS_INPUT!r} and optionally {NOISE_INPUT!r}",
            )
        if tensor.name in arrays:
            raise RequestError(Status.INVALID_ARGUMENT, f"input {tensor.name!r} appears twice")
        if tensor.datatype != "FP32":
            raise RequestError(
                Status.INVALID_ARGUMENT, f"input {tensor.name!r} has datatype {tensor.datatype!r}; send FP32"
            )
        data = raw[index] if raw else np.asarray(tensor.contents.fp32_contents, FLOAT32_LE).tobytes()
        try:
            arrays[tensor.name] = decode_float32(data, tuple(tensor.shape), tensor.name)
        except TensorError as err:
            raise RequestError(Status.INVALID_ARGUMENT, str(err)) from None
    if OBS_INPUT not in arrays:
        raise RequestError(Status.INVALID_ARGUMENT, f"input {OBS_INPUT!r} is missing")
    return arrays


def _kserve_noise_parameters(request: kserve_pb2.ModelInferRequest) -> tuple[int | None, bool]:
    """Request parameters `seed` (int64) and `zero_noise` (bool): the same options as omad.v1.ActRequest."""
    seed, zero_noise = None, False
    if "seed" in request.parameters:
        param = request.parameters["seed"]
        if param.WhichOneof("parameter_choice") != "int64_param" or param.int64_param < 0:
            raise RequestError(Status.INVALID_ARGUMENT, "parameter 'seed' must be a non-negative int64")
        seed = param.int64_param
    if "zero_noise" in request.parameters:
        param = request.parameters["zero_noise"]
        if param.WhichOneof("parameter_choice") != "bool_param":
            raise RequestError(Status.INVALID_ARGUMENT, "parameter 'zero_noise' must be a bool")
        zero_noise = param.bool_param
    return seed, zero_noise


def _model_sha256(result: JobResult) -> str:
    """The sha256 of the model file that computed the result (a reload may have swapped in another since)."""
    return cast(OnnxPolicy, result.model).info.sha256


def _timing(result: JobResult, received_ns: int) -> policy_pb2.Timing:
    return policy_pb2.Timing(
        queue_us=result.queue_ns // 1000,
        inference_us=result.inference_ns // 1000,
        total_us=(time.perf_counter_ns() - received_ns) // 1000,
        batch_size=result.batch_size,
    )


def _lenient_parser(message_class):
    def parse(data: bytes):
        try:
            return message_class.FromString(data)
        except DecodeError as err:
            return Unparsable(message_class.DESCRIPTOR.full_name, str(err))

    return parse


def _serialize(message) -> bytes:
    return message.SerializeToString()


def _check_parsed(request) -> None:
    if isinstance(request, Unparsable):
        raise RequestError(
            Status.INVALID_ARGUMENT, f"request bytes are not a valid {request.message_type} message ({request.error})"
        )


def _cancel_code(context) -> str:
    remaining = context.time_remaining()
    return Status.DEADLINE_EXCEEDED.name if remaining is not None and remaining <= 0 else Status.CANCELLED.name


def _reflection_pool() -> descriptor_pool.DescriptorPool:
    """Every service on the port, in one pool (the KServe stubs live outside the default pool)."""
    pool = descriptor_pool.DescriptorPool()
    for module in (policy_pb2, kserve_pb2, health_pb2, reflection_pb2):
        pool.AddSerializedFile(module.DESCRIPTOR.serialized_pb)
    return pool


async def serve_until_signalled(config: ServeConfig, token: str | None, tls) -> None:
    """Serve until SIGTERM or SIGINT, then drain; SIGHUP reloads the model."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = PolicyServer(config, token=token, tls=tls)
    loop.add_signal_handler(signal.SIGHUP, server.request_reload)
    await server.start()
    await stop.wait()
    await server.drain()
