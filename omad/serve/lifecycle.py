"""`omad serve --model AGENT.onnx`: one agent's policy over gRPC, from start to drain.

One port carries the omad.v1.Policy service (policy_service.py), the KServe v2
GRPCInferenceService (kserve.py), the standard health service and reflection. With --health-port,
a second, plaintext port carries the health service alone (for probes that speak no TLS). Requests are
validated on the event loop, then handed to the micro-batcher (batching.py): a lone request runs
at once, concurrent ones merge into one call.

Life cycle: listen (health NOT_SERVING) -> load, verify and warm up the model -> SERVING.
  SIGHUP: reload the model from the same path: verified and warmed up beside the old one, checked
          to keep the agent's contract, then swapped in whole (loaded.py); the old model's batcher
          finishes what it holds. A file that fails is refused and the old model keeps serving.
  SIGTERM: drain: health NOT_SERVING, new calls and idle streams get UNAVAILABLE at once, a busy
          stream after its current reply, in-flight calls finish (within --grace-s) -> exit.
  The inference machinery failing: health NOT_SERVING, every call UNAVAILABLE (restart the server).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Coroutine
from typing import Any

import grpc
from google.protobuf import descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from omad.runtime.onnx_policy import OnnxPolicy, RuntimeModelError
from omad.serve import logs
from omad.serve._generated import grpc_service_pb2 as kserve_pb2
from omad.serve._generated import policy_pb2
from omad.serve.calls import ServingState
from omad.serve.config import ServeConfig, ServeConfigError
from omad.serve.kserve import KSERVE_SERVICE, KServeService
from omad.serve.loaded import LoadedModel, load_and_warm_up
from omad.serve.metrics import ServerMetrics
from omad.serve.policy_service import POLICY_SERVICE, PolicyService
from omad.serve.security import BearerTokenInterceptor, server_credentials

HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")

log = logs.get_logger("omad.serve.lifecycle")


class PolicyServer:
    def __init__(
        self, config: ServeConfig, token: str | None = None, tls: tuple[bytes, bytes, bytes | None] | None = None
    ):
        self.config = config
        self.metrics = ServerMetrics()
        self.state = ServingState(config, self.metrics)
        self.metrics.in_flight.set_function(lambda: self.state.in_flight)  # read at scrape time, free per call
        self.metrics.queued.set_function(lambda: self.state.loaded.batcher.queued if self.state.loaded else 0)
        self.port = 0  # bound by `listen`
        self.metrics_port: int | None = None
        self.health_port: int | None = None
        self._token = token
        self._tls = tls
        self._health = health.aio.HealthServicer()
        self._server: grpc.aio.Server | None = None
        self._health_server: grpc.aio.Server | None = None
        self._reload: asyncio.Future[bool] | None = None
        self._reload_again = False
        self._background: set[asyncio.Future[Any]] = set()  # tasks started from callbacks, kept until done

    @property
    def loaded(self) -> LoadedModel:
        """The model serving now (for observers: tests, notebooks); RuntimeError before the first load."""
        if self.state.loaded is None:
            raise RuntimeError("no model is loaded yet")
        return self.state.loaded

    # ---- start ----------------------------------------------------------------------------------

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
            interceptors.append(BearerTokenInterceptor(self._token, on_reject=self.state.count_unauthenticated))
        server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", cfg.max_message_bytes),
                ("grpc.max_send_message_length", cfg.max_message_bytes),
                ("grpc.so_reuseport", 0),  # a port already in use is an error, not a silent share
            ],
        )
        PolicyService(self.state).register(server)
        KServeService(self.state).register(server)
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
        if cfg.health_port is not None:
            await self._serve_health_port(cfg.host, cfg.health_port)
        await server.start()
        self._server, self.port = server, port
        logs.log_event(
            log,
            "listening",
            addr=f"{cfg.host}:{port}",
            port=port,
            metrics_port=self.metrics_port,
            health_port=self.health_port,
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

    async def _serve_health_port(self, host: str, port: int) -> None:
        """grpc.health.v1 alone, plaintext, on its own port: the same statuses as the main port."""
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        address = f"{host}:{port}"
        try:
            bound = server.add_insecure_port(address)
        except RuntimeError as err:
            raise ServeConfigError(f"cannot listen on {address} (--health-port): {err}") from None
        if not bound:
            raise ServeConfigError(f"cannot listen on {address} (--health-port): address in use or not available")
        await server.start()
        self._health_server, self.health_port = server, bound

    async def load_model(self) -> None:
        """Load, verify and warm up the model in a thread (health stays NOT_SERVING meanwhile), then SERVING."""
        cfg = self.config
        started = time.perf_counter()
        policy = await asyncio.to_thread(load_and_warm_up, cfg)
        model = self._start_model(policy)
        self.state.loaded = model
        self.metrics.show_model(model.info.name, model.team_id, model.info.sha256)
        info = model.info
        logs.log_event(
            log,
            "model_loaded",
            agent=info.name,
            obs_dim=info.obs_dim,
            act_dim=info.act_dim,
            denoising_steps=info.denoising_steps,
            provider=cfg.provider,
            inference_thread=cfg.offload_inference,
            seconds=round(time.perf_counter() - started, 3),
        )
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        logs.log_event(
            log,
            "serving",
            agent=info.name,
            addr=f"{cfg.host}:{self.port}",
            port=self.port,
            model_sha256=info.sha256,
            team_id=model.team_id,
        )

    def _start_model(self, policy: OnnxPolicy) -> LoadedModel:
        # The metrics callback is looked up now, so a test can replace it before loading.
        return LoadedModel.start(policy, self.config, self.metrics.observe_batch, self._inference_failed)

    # ---- reload ---------------------------------------------------------------------------------

    def request_reload(self) -> None:
        """SIGHUP: reload the model from its path. Signals that arrive during a reload cause one more."""
        if self._reload is not None and not self._reload.done():
            self._reload_again = True
            return
        self._reload = asyncio.ensure_future(self.reload())

    async def reload(self) -> bool:
        """Load, verify and warm up the model file again beside the serving one, then swap it in. A file
        that fails, or that would change the agent's contract, is refused (logged, counted) and the old
        model keeps serving."""
        while True:
            self._reload_again = False
            swapped = await self._reload_once()
            if not self._reload_again:
                return swapped

    async def _reload_once(self) -> bool:
        old = self.state.serving
        if old is None:
            logs.log_event(log, "reload_skipped", logging.WARNING, reason="not serving (loading, draining or failed)")
            return False
        started = time.perf_counter()
        try:
            policy = await asyncio.to_thread(load_and_warm_up, self.config)
            changed = policy.info.contract.differences(old.info.contract)
            if changed:
                raise RuntimeModelError(
                    f"{self.config.model}: "
                    + "; ".join(f"{key} {new!r} != serving {was!r}" for key, (new, was) in changed.items())
                    + " (a reload must keep the agent's contract; start a new server for another model)"
                )
        except Exception as err:  # noqa: BLE001 - whatever breaks a reload, the old model keeps serving
            reason = str(err) if isinstance(err, RuntimeModelError) else f"{self.config.model}: {err!r}"
            self.metrics.reloads.labels("refused").inc()
            logs.log_event(log, "reload_refused", logging.ERROR, reason=reason, model_sha256=old.info.sha256)
            return False
        if self.state.serving is not old:  # drained or failed meanwhile
            return False
        new = self._start_model(policy)
        self.state.loaded = new  # the swap: every call admitted from here on runs on the new model
        self._spawn(old.batcher.close())  # the old batcher answers what it holds, then its thread ends
        self.metrics.show_model(new.info.name, new.team_id, new.info.sha256)
        self.metrics.reloads.labels("ok").inc()
        logs.log_event(
            log,
            "reloaded",
            agent=new.info.name,
            old_model_sha256=old.info.sha256,
            model_sha256=new.info.sha256,
            old_team_id=old.team_id,
            team_id=new.team_id,
            seconds=round(time.perf_counter() - started, 3),
        )
        return True

    # ---- failure, drain and stop -----------------------------------------------------------------

    def _inference_failed(self, err: BaseException) -> None:
        """A batcher's thread or bookkeeping broke: every later call gets UNAVAILABLE; say so loudly."""
        if self.state.failure is not None:
            return
        self.state.failure = err
        self.metrics.inference_failures.inc()
        logs.log_event(
            log,
            "inference_failed",
            logging.ERROR,
            error=repr(err),
            advice="health is NOT_SERVING and every call gets UNAVAILABLE; restart this server",
        )
        self._spawn(self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING))

    async def _set_health(self, status: int) -> None:
        for service in ("", POLICY_SERVICE.full_name, KSERVE_SERVICE.full_name):
            await self._health.set(service, status)

    def _spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain(self) -> None:
        """Health NOT_SERVING; new calls and idle streams get UNAVAILABLE at once, busy streams after
        their current reply; stop as soon as in-flight calls finish (at most --grace-s)."""
        state = self.state
        if state.draining:
            return
        state.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.grace_s
        logs.log_event(
            log, "draining", in_flight=state.in_flight, open_streams=len(state.streams), grace_s=self.config.grace_s
        )
        await self._health.enter_graceful_shutdown()
        for task, stream in state.streams.items():
            if stream.idle:  # waiting for the client's next request: end it now
                stream.drained = True
                task.cancel()
        while state.in_flight > 0 and loop.time() < deadline:
            await asyncio.sleep(0.005)
        await self.stop(grace_s=max(0.0, deadline - loop.time()))

    async def stop(self, grace_s: float = 0.0) -> None:
        self.state.draining = True
        if self._server is not None:
            await self._server.stop(grace_s)
        if self._health_server is not None:
            await self._health_server.stop(0)
        if self.state.loaded is not None:
            await self.state.loaded.batcher.close()
        if self._background:  # old batchers still closing, a health update
            await asyncio.gather(*self._background, return_exceptions=True)
        await asyncio.to_thread(self.metrics.stop_http)
        logs.log_event(log, "stopped", unfinished_calls=self.state.in_flight)


def _reflection_pool() -> descriptor_pool.DescriptorPool:
    """Every service on the port, in one pool (the KServe stubs live outside the default pool)."""
    pool = descriptor_pool.DescriptorPool()
    for module in (policy_pb2, kserve_pb2, health_pb2, reflection_pb2):
        pool.AddSerializedFile(module.DESCRIPTOR.serialized_pb)
    return pool


async def serve_until_signalled(
    config: ServeConfig, token: str | None, tls: tuple[bytes, bytes, bytes | None] | None
) -> None:
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
