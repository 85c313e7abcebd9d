"""The serving image without a Docker engine: the Dockerfile's invariants checked statically, and its
install step replayed in a fresh virtual environment (no torch), which then serves the tiny export."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    joined = text.replace("\\\n", " ")
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, args = line.partition(" ")
            out.append((keyword.upper(), args.strip()))
    return out


def stages(text: str) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for keyword, args in instructions(text):
        if keyword == "FROM":
            result.append([])
        if result:
            result[-1].append((keyword, args))
    return result


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return (REPO / "Dockerfile").read_text()


def pip_install_args(dockerfile_text: str) -> list[str]:
    """The arguments of the build stage's `pip install`."""
    for keyword, args in stages(dockerfile_text)[0]:
        if keyword == "RUN" and "pip install" in args:
            return shlex.split(args.split("pip install", 1)[1])
    raise AssertionError("no pip install in the build stage")


def test_dockerfile_invariants(dockerfile):
    final = stages(dockerfile)[-1]
    assert len(stages(dockerfile)) >= 2, "multi-stage"
    final_keys = dict(final)
    assert "COPY" in final_keys and "--from=build" in final_keys["COPY"], "the final stage copies the built venv"

    user = final_keys.get("USER", "root").split(":")[0]
    assert user not in ("root", "0"), "runs as a non-root user"

    assert json.loads(final_keys["ENTRYPOINT"]) == ["omad", "serve"], "exec-form entrypoint"
    assert final_keys["STOPSIGNAL"] == "SIGTERM"
    healthcheck = final_keys["HEALTHCHECK"]
    command = json.loads(healthcheck.split("CMD", 1)[1].strip())
    assert command[:2] == ["omad", "health"] and "--addr" in command

    args = pip_install_args(dockerfile)
    assert args[args.index("-c") + 1] == "constraints.txt", "pinned versions"
    targets = [a for a in args if a.startswith(".")]
    assert targets == [".[cpu]"], "the package with the cpu extra only (no train extra: no torch)"
    for source in copied_sources(dockerfile):
        assert (REPO / source).exists(), f"COPY source {source} is missing"


def copied_sources(dockerfile_text: str) -> list[str]:
    """Every source path the build stage copies, as written in the Dockerfile."""
    return [
        source for keyword, args in stages(dockerfile_text)[0] if keyword == "COPY" for source in shlex.split(args)[:-1]
    ]


def image_python_files(dockerfile_text: str) -> set[str]:
    files: set[str] = set()
    for source in copied_sources(dockerfile_text):
        path = REPO / source
        found = path.rglob("*.py") if path.is_dir() else [path] if path.suffix == ".py" else []
        files.update(p.relative_to(REPO).as_posix() for p in found if "__pycache__" not in p.parts)
    return files


# In the image but not imported by a server: the stub compiler (`python -m omad.serve.protogen`), the
# in-process server thread for tests and notebooks, the team client (omad.serve.team), the evaluation
# trace format (omad.runtime.trace) and the operations reference of the metrics and log events
# (omad.serve.reference). All are small and torch-free.
NOT_IMPORTED_BY_THE_SERVER = {
    "omad/serve/protogen.py",
    "omad/serve/testing.py",
    "omad/serve/team.py",
    "omad/runtime/trace.py",
    "omad/serve/reference.py",
}


def test_image_holds_exactly_what_the_server_imports(dockerfile):
    """The serving commands' first-party imports (`omad serve` one agent or an export dir, `omad
    health`) are all in the image, and the image holds nothing else of the repository's packages."""
    code = (
        "import json, sys\n"
        "import omad.cli\n"
        "omad.cli.build_parser('serve'); omad.cli.build_parser('health')\n"
        "import omad.serve.lifecycle, omad.serve.launcher, omad.serve.client\n"
        "files = [m.__file__ for name, m in list(sys.modules.items()) if getattr(m, '__file__', None)]\n"
        "print(json.dumps(files))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, cwd=REPO, capture_output=True, text=True, timeout=120
    )
    imported = {Path(f).resolve() for f in json.loads(out.stdout)}
    # the project's venv lives inside the checkout: its site-packages are third-party, not ours
    third_party = {Path(sysconfig.get_paths()[key]).resolve() for key in ("purelib", "platlib")}
    imported = {
        p.relative_to(REPO).as_posix()
        for p in imported
        if p.is_relative_to(REPO) and not any(p.is_relative_to(lib) for lib in third_party)
    }
    from omad.serve.launcher import server_argv

    assert server_argv(Path("a.onnx"), 1, {}, 0)[1:3] == ["-m", "omad"]  # the launcher runs omad/__main__.py
    imported.add("omad/__main__.py")
    image = image_python_files(dockerfile)
    assert imported - image == set(), "imported by the server but missing from the image"
    assert image - imported == NOT_IMPORTED_BY_THE_SERVER, "in the image but not imported by the server"
    assert not any(f.startswith("omad/train/") or f.endswith("onnx_export.py") for f in image)


def test_serving_dependencies_have_no_torch():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    serving = project["dependencies"] + project["optional-dependencies"]["cpu"]
    assert not [d for d in serving if d.lower().startswith("torch")]


def test_dockerignore_keeps_secrets_and_environments_out():
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()}
    assert {".git", ".venv", "runs/", "exports/", "*.pem", "*.key"} <= ignored


def test_image_install_step_in_a_fresh_venv(tmp_path, dockerfile, tiny_export_dir):
    """Replay the build stage: copy what it copies, run its pip install, then serve without torch."""
    src = tmp_path / "src"
    src.mkdir()
    for source in copied_sources(dockerfile):
        path = REPO / source
        if path.is_dir():
            shutil.copytree(path, src / source, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (src / source).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, src / source)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python, omad = venv / "bin" / "python", venv / "bin" / "omad"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", *pip_install_args(dockerfile)], cwd=src, check=True, timeout=600
    )

    no_torch = "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None)"
    subprocess.run([str(python), "-c", no_torch], check=True, timeout=60)
    subprocess.run([str(omad), "health", "--help"], check=True, capture_output=True, timeout=60)
    subprocess.run(
        [str(python), "-c", "import omad.serve.lifecycle, omad.serve.client"], check=True, cwd=tmp_path, timeout=60
    )

    from omad.runtime.onnx_policy import OnnxPolicy, read_manifest
    from omad.serve.client import PolicyClient, wait_until_serving
    from omad.serve.launcher import pick_ports

    model = Path(tiny_export_dir) / read_manifest(tiny_export_dir)["agents"][0]["file"]
    port = pick_ports("127.0.0.1", 0, 1)[0]
    server = subprocess.Popen(
        [str(omad), "serve", "--model", str(model), "--port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        addr = f"127.0.0.1:{port}"
        wait_until_serving(addr, timeout_s=60)
        assert subprocess.run([str(omad), "health", "--addr", addr], capture_output=True, timeout=60).returncode == 0
        policy = OnnxPolicy(model)
        obs = np.ones((2, policy.info.obs_dim), np.float32)
        with PolicyClient(addr) as client:
            np.testing.assert_allclose(client.act(obs, seed=3), policy.act(obs, seed=3), atol=1e-6)
        server.terminate()
        assert server.wait(timeout=30) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
