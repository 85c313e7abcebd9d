"""Prometheus metrics of one server, in their own registry (so several servers can share a process)."""

from __future__ import annotations

from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

# Loopback round trips take a few hundred microseconds; queues under load reach milliseconds.
LATENCY_BUCKETS_S = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 1.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "omad_requests", "Requests handled (each ActStream message counts once)", ["method"], registry=self.registry
        )
        self.errors = Counter(
            "omad_errors", "Failed calls by gRPC status code", ["method", "code"], registry=self.registry
        )
        self.latency = Histogram(
            "omad_request_latency_seconds",
            "Server time per request",
            ["method"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "omad_batch_size", "Rows (observations) per inference call", buckets=BATCH_BUCKETS, registry=self.registry
        )
        self.inference = Histogram(
            "omad_inference_seconds",
            "ONNX Runtime time per inference call",
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.in_flight = Gauge("omad_in_flight_calls", "Calls being handled", registry=self.registry)
        self.queued = Gauge("omad_queued_requests", "Requests waiting for an inference call", registry=self.registry)
        self.nonfinite_actions = Counter(
            "omad_nonfinite_actions",
            "Requests refused because the policy computed NaN or inf actions",
            registry=self.registry,
        )
        self.reloads = Counter(
            "omad_reloads", "Model reloads (SIGHUP) by result: ok or refused", ["result"], registry=self.registry
        )
        self.inference_failures = Counter(
            "omad_inference_failures",
            "Failures of the inference machinery (the server then serves nothing)",
            registry=self.registry,
        )
        self.team_info = Gauge(
            "omad_team_info",
            "Always 1: the agent served, the team id of its graph (the export it belongs to; unknown if none) "
            "and the graph's sha256; replaced on reload",
            ["agent", "team_id", "model_sha256"],
            registry=self.registry,
        )
        self._per_method: dict[str, tuple] = {}  # label lookups cached: this runs once per request
        self._http: WSGIServer | None = None

    def observe_request(self, method: str, seconds: float) -> None:
        children = self._per_method.get(method)
        if children is None:
            children = self._per_method[method] = (self.requests.labels(method), self.latency.labels(method))
        children[0].inc()
        children[1].observe(seconds)

    def observe_error(self, method: str, code_name: str) -> None:
        self.errors.labels(method, code_name).inc()

    def show_model(self, agent: str, team_id: str, model_sha256: str) -> None:
        """The serving model in omad_team_info: one series, replaced when a reload swaps the model."""
        self.team_info.clear()
        self.team_info.labels(agent, team_id, model_sha256).set(1)

    def observe_batch(self, rows: int, seconds: float) -> None:
        self.batch_size.observe(rows)
        self.inference.observe(seconds)

    def serve_http(self, host: str, port: int) -> int:
        """Expose /metrics on host:port (0: a free port); returns the bound port."""
        self._http, _thread = start_http_server(port, addr=host, registry=self.registry)
        return self._http.server_port

    def stop_http(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
