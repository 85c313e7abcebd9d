"""`omad serve --export-dir D --base-port P`: one `omad serve --model` process per agent.

Agent i listens on P + i, and with --metrics-port M (--health-port H) serves those on M + i (H + i). The launcher forwards SIGTERM / SIGINT to every server (each drains),
waits for them, and kills any that outlive the grace period. It forwards SIGHUP too: every server
reloads its model from its path (e.g. after a new `omad export` into the same dir). If one server
dies, it stops the rest.
On Linux each server also gets SIGTERM if the launcher itself dies, so no server is left orphaned.
"""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

from omad.runtime.onnx_policy import read_manifest
from omad.serve import logs
from omad.serve.config import ServeConfig, ServeConfigError

log = logs.get_logger("omad.serve.launcher")
EXIT_MARGIN_S = 5.0  # beyond the servers' own grace period, before SIGKILL


def launch_export(export_dir: str | Path, base_port: int, flags: dict) -> int:
    if flags.get("port") is not None:
        raise ServeConfigError("with --export-dir, choose ports with --base-port (agent i gets base + i), not --port")
    manifest = read_manifest(export_dir)
    agents = [(entry["agent"], Path(export_dir) / entry["file"]) for entry in manifest["agents"]]
    host = flags.get("host") or ServeConfig.model_fields["host"].default
    ports = pick_ports(host, base_port, len(agents))
    grace_s = float(flags.get("grace_s") or ServeConfig.model_fields["grace_s"].default)

    stop = threading.Event()
    servers: list[tuple[str, subprocess.Popen]] = []
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, lambda *_: _reload_all(servers))
    try:
        for index, ((agent, model), port) in enumerate(zip(agents, ports)):
            argv = server_argv(model, port, flags, index)
            servers.append((agent, subprocess.Popen(argv, preexec_fn=_prepare_child)))
            logs.log_event(log, "agent_started", agent=agent, addr=f"{host}:{port}", pid=servers[-1][1].pid)
            print(f"{agent} {host}:{port}", flush=True)
        failed = _wait_for_stop_or_failure(servers, stop)
    finally:
        _stop_all(servers, grace_s + EXIT_MARGIN_S)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 1 if failed else 0


def server_argv(model: Path, port: int, flags: dict, index: int) -> list[str]:
    """`omad serve --model ...` for one agent, passing every given server option through."""
    argv = [sys.executable, "-m", "omad", "serve", "--model", str(model), "--port", str(port)]
    for name, value in flags.items():
        if value is None or name == "port":
            continue
        if name in ("metrics_port", "health_port") and int(value) != 0:
            value = int(value) + index  # consecutive, like the gRPC ports
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + name.replace("_", "-"))
        else:
            argv += [flag, str(value)]
    return argv


def pick_ports(host: str, base_port: int, count: int) -> list[int]:
    if base_port != 0:
        if not 0 < base_port <= 65536 - count:
            raise ServeConfigError(f"--base-port {base_port}: need {count} consecutive ports below 65536")
        return [base_port + i for i in range(count)]
    sockets = []
    try:  # hold all of them open at once, so the kernel hands out distinct ports
        for _ in range(count):
            s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
            s.bind((host.strip("[]"), 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _wait_for_stop_or_failure(servers: list[tuple[str, subprocess.Popen]], stop: threading.Event) -> bool:
    """Block until a signal arrives (False) or a server exits on its own (True)."""
    while not stop.wait(0.2):
        for agent, process in servers:
            code = process.poll()
            if code is not None and not stop.is_set():  # (a terminal's Ctrl-C reaches the servers too)
                logs.log_event(log, "agent_exited", logging.ERROR, agent=agent, returncode=code, pid=process.pid)
                return True
    logs.log_event(log, "stopping", agents=len(servers))
    return False


def _reload_all(servers: list[tuple[str, subprocess.Popen]]) -> None:
    logs.log_event(log, "reloading", agents=len(servers))
    for _agent, process in servers:
        if process.poll() is None:
            process.send_signal(signal.SIGHUP)


def _stop_all(servers: list[tuple[str, subprocess.Popen]], timeout_s: float) -> None:
    for _agent, process in servers:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for agent, process in servers:
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            logs.log_event(log, "agent_killed", logging.WARNING, agent=agent, pid=process.pid)
            process.kill()
            process.wait()


def _prepare_child() -> None:
    """Runs in the child before exec. Ignore SIGHUP until the server installs its reload handler
    (an ignored signal stays ignored across exec), so a reload forwarded during start-up cannot
    kill it. On Linux, ask the kernel to SIGTERM it when the launcher dies."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if sys.platform == "linux":
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
