"""Shared fixtures (plain helpers live in helpers.py). `tiny_run_dir` trains a few hundred steps of a
tiny OMAD on Cooperative Navigation once per session, so export/serve/eval tests work on a real run
dir in seconds. `certs` makes a throwaway CA with server and client certificates for the TLS tests."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from helpers import tiny_config

if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest-xdist runs one worker per core: each worker's torch, and the commands it starts, take one thread
    os.environ["OMP_NUM_THREADS"] = "1"


@pytest.fixture(scope="session")
def tiny_run_dir(tmp_path_factory):
    from omad.train.trainer import train

    out = tmp_path_factory.mktemp("runs") / "tiny"
    train(tiny_config(), out)
    return out


@pytest.fixture(scope="session")
def tiny_export_dir(tiny_run_dir, tmp_path_factory):
    """`omad export` of the tiny run (3 agents, K = 4): an export dir for runtime, serving and eval tests."""
    from omad.export.onnx import export_run

    out = tmp_path_factory.mktemp("exports") / "tiny"
    export_run(tiny_run_dir, out)
    return out


@pytest.fixture(scope="module")
def model_path(tiny_export_dir) -> Path:
    """The first agent's graph of the tiny export (what the serving tests serve)."""
    from omad.runtime.onnx_policy import read_manifest

    return Path(tiny_export_dir) / read_manifest(tiny_export_dir)["agents"][0]["file"]


@pytest.fixture(scope="module")
def policy(model_path):
    from omad.runtime.onnx_policy import OnnxPolicy

    return OnnxPolicy(model_path)


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="session")
def certs(tmp_path_factory) -> Path:
    """A throwaway CA, a server certificate for localhost / 127.0.0.1 and a client certificate."""
    d = tmp_path_factory.mktemp("certs")
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl(
        "req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=omad test CA", cwd=d
    )
    (d / "server.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name in ("server", "client"):
        openssl("req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN=omad test {name}", cwd=d)
        openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "2",
            "-extfile",
            f"{name}.ext",
            cwd=d,
        )
    return d
