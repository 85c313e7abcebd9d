"""Shared fixtures and process helpers. `tiny_run_dir` trains a few hundred steps of a tiny OMAD on Cooperative Navigation
once per session, so export/serve/eval tests work on a real run dir in seconds. `certs` makes a
throwaway CA with server and client certificates for the TLS tests."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

OMAD = [sys.executable, "-m", "omad"]  # the CLI as a child process

TINY = dict(
    env="mpe:simple_spread_v3",
    total_steps=300,
    learning_starts=100,
    batch_size=32,
    eval_every=300,
    eval_episodes=2,
    checkpoint_every=300,
    denoising_steps=4,
    actor_hidden=[32, 32],
    critic_hidden=[32, 32],
    num_atoms=21,
    progress=False,
    seed=0,
)


def tiny_config(**overrides):
    from omad.train.config import build_config

    return build_config(TINY, **overrides)


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


def is_gone(pid: int) -> bool:
    """Exited (reaped, or a zombie waiting for a reaper)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def wait_gone(pids: list[int], timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not all(map(is_gone, pids)):
        time.sleep(0.05)
    return [pid for pid in pids if not is_gone(pid)]
