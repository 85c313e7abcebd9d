"""Options of `omad serve`: one pydantic model, defaults in code; the CLI builds one flag per field."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from omad.core.errors import OmadError

TOKEN_ENV = "OMAD_SERVE_TOKEN"
# TLS files may also come from the environment (for containers), when the flags are not given.
TLS_ENV = {"tls_cert": "OMAD_TLS_CERT", "tls_key": "OMAD_TLS_KEY", "tls_client_ca": "OMAD_TLS_CLIENT_CA"}


class ServeConfigError(OmadError, ValueError):
    pass


class ServeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: Path = Field(description="the agent's .onnx file from `omad export`")
    host: str = Field("127.0.0.1", description="interface to bind; 0.0.0.0 exposes the server to the network")
    port: int = Field(50051, ge=0, le=65535, description="gRPC port; 0 picks a free one (logged at start)")
    threads: int = Field(1, ge=1, le=256, description="ONNX Runtime intra-op threads")
    max_batch: int = Field(
        64, ge=1, le=65536, description="largest batch of one request, and of one merged inference call"
    )
    max_delay_us: int = Field(
        0,
        ge=0,
        le=1_000_000,
        description="how long the first request of a micro-batch waits for others; 0 never waits "
        "(requests that arrive while an inference runs are still merged into the next one)",
    )
    batching: bool = Field(True, description="merge concurrent requests into one inference call")
    inference_thread: Literal["auto", "on", "off"] = Field(
        "auto",
        description="run merged batches on their own thread, so the event loop keeps reading requests meanwhile; "
        "it needs a core beside ONNX Runtime's: auto = on when this process may use at least threads + 1 cores",
    )
    token_file: Path | None = Field(
        None, description=f"file holding the bearer token clients must send (or env {TOKEN_ENV})"
    )
    tls_cert: Path | None = Field(None, description=f"server certificate chain, PEM (or env {TLS_ENV['tls_cert']})")
    tls_key: Path | None = Field(None, description=f"server private key, PEM (or env {TLS_ENV['tls_key']})")
    tls_client_ca: Path | None = Field(
        None,
        description=f"CA bundle that client certificates must chain to: turns on mTLS (or env {TLS_ENV['tls_client_ca']})",
    )
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="Prometheus metrics port (0: a free one); off if unset"
    )
    health_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="second port serving only grpc.health.v1, always plaintext, for probes that speak no TLS "
        "(Kubernetes' gRPC probes; 0: a free one); off if unset",
    )
    provider: Literal["cpu", "cuda"] = Field(
        "cpu", description="ONNX Runtime execution provider; cuda fails clearly if unavailable"
    )
    grace_s: float = Field(
        10.0, gt=0, le=3600, description="on SIGTERM: seconds in-flight calls get to finish before the server stops"
    )
    max_message_mb: float = Field(4.0, gt=0, le=1024, description="largest request or reply message, MiB")
    seed: int | None = Field(
        None, ge=0, description="seed of the noise drawn for requests that carry neither noise nor seed"
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="structured (JSON) log level on stderr"
    )

    @property
    def max_message_bytes(self) -> int:
        return int(self.max_message_mb * 1024 * 1024)

    @property
    def offload_inference(self) -> bool:
        """Whether merged batches run on the inference thread (see --inference-thread)."""
        if self.inference_thread == "auto":
            affinity = getattr(os, "sched_getaffinity", None)  # Linux; elsewhere every CPU counts
            cores = len(affinity(0)) if affinity is not None else (os.cpu_count() or 1)
            return cores >= self.threads + 1
        return self.inference_thread == "on"


def build_serve_config(**fields) -> ServeConfig:
    """ServeConfig from flag values (None = not given), filling TLS paths from the environment."""
    given = {k: v for k, v in fields.items() if v is not None}
    for field, env in TLS_ENV.items():
        if field not in given and os.environ.get(env):
            given[field] = os.environ[env]
    try:
        return ServeConfig(**given)
    except ValidationError as err:
        problems = "; ".join(f"--{'-'.join(map(str, e['loc'])).replace('_', '-')}: {e['msg']}" for e in err.errors())
        raise ServeConfigError(problems) from None


def read_token(config: ServeConfig) -> str | None:
    """The bearer token from --token-file, else from the environment; None means no auth."""
    if config.token_file is not None:
        try:
            token = config.token_file.read_text().strip()
        except OSError as err:
            raise ServeConfigError(f"cannot read --token-file: {err}") from None
        if not token:
            raise ServeConfigError(f"--token-file {config.token_file} is empty")
        return token
    return os.environ.get(TOKEN_ENV) or None


def read_tls_files(config: ServeConfig) -> tuple[bytes, bytes, bytes | None] | None:
    """(cert chain, key, client CA or None) when TLS is on, else None."""
    if config.tls_cert is None and config.tls_key is None:
        if config.tls_client_ca is not None:
            raise ServeConfigError("--tls-client-ca (mTLS) needs --tls-cert and --tls-key")
        return None
    if config.tls_cert is None or config.tls_key is None:
        raise ServeConfigError("TLS needs both --tls-cert and --tls-key")
    try:
        cert, key = config.tls_cert.read_bytes(), config.tls_key.read_bytes()
        client_ca = config.tls_client_ca.read_bytes() if config.tls_client_ca else None
    except OSError as err:
        raise ServeConfigError(f"cannot read a TLS file: {err}") from None
    return cert, key, client_ca
