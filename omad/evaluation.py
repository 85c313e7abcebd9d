"""Closed-loop evaluation (`omad eval`): the environment steps here; each agent's policy comes from a
torch run dir, an ONNX export or a gRPC server per agent. All three are `omad.core.policy.Policy`
objects, run by one loop (omad.core.rollout.evaluate) that draws the noise, so the three give the
same returns. Latency is measured here, around each call, not returned by the policies.

Torch loads only for a run dir (`torch_source`), so evaluating an export or servers needs no torch.
"""

from __future__ import annotations

import argparse
import json
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from omad.core.agent import AgentContract, ContractError
from omad.core.envs import get_spec, is_registered, split_env_ref
from omad.core.envs.base import EnvSpec
from omad.core.errors import OmadError
from omad.core.policy import Policy
from omad.core.rollout import EvalResult, evaluate


class EvalError(OmadError):
    pass


@dataclass(frozen=True)
class AgentEndpoint:
    """One agent of a policy source: its contract, checked against the environment before stepping."""

    contract: AgentContract
    where: str  # file or address, for error messages


@dataclass
class PolicySource:
    """One `Policy` per agent, in env order, stepped as a team."""

    kind: str
    agents: list[AgentEndpoint]
    policies: list[Policy]
    concurrent: bool = False  # issue the agents' calls for a step in parallel (gRPC)
    step_timeout_s: float = 10.0  # a backstop: gRPC calls carry their own deadline
    latency_us: dict[str, list[float]] = field(default_factory=dict)
    _workers: list[_Worker] = field(default_factory=list)
    _on_close: list[Callable[[], None]] = field(default_factory=list)

    def act(self, obs: list[np.ndarray], noise: list[np.ndarray]) -> list[np.ndarray]:
        if not self.concurrent:
            return [self._timed(i, obs[i], noise[i]) for i in range(len(self.policies))]
        if not self._workers:
            self._workers = [_Worker(f"agent-{i}") for i in range(len(self.policies))]
        futures = [w.submit(self._timed, i, obs[i], noise[i]) for i, w in enumerate(self._workers)]
        results = []
        for agent, fut in zip(self.agents, futures):
            name = agent.contract.name
            try:
                results.append(fut.result(timeout=self.step_timeout_s))
            except FutureTimeout:
                raise EvalError(
                    f"episode failed: agent {name} at {agent.where} sent no action within {self.step_timeout_s} s"
                ) from None
            except OmadError as err:
                raise EvalError(f"episode failed: agent {name} at {agent.where}: {err}") from None
        return results

    def _timed(self, i: int, obs: np.ndarray, noise: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        out = self.policies[i].act(obs, noise)
        self.latency_us.setdefault(self.agents[i].contract.name, []).append((time.perf_counter() - start) * 1e6)
        return np.asarray(out, np.float32)

    def check_against(self, spec: EnvSpec) -> None:
        """Refuse a source whose agents don't fit the environment, before the first step. The env may
        be another than the one the policies were trained on (`--env` overrides it): what must hold is
        each agent's contract (name, sizes, bounds)."""
        trained = sorted({a.contract.env_id for a in self.agents} - {""})
        if len(self.agents) != len(spec.agents):
            raise EvalError(
                f"{spec.env_id} has {len(spec.agents)} agents, the {self.kind} source gives {len(self.agents)}"
                + (f" (trained for env {', '.join(map(repr, trained))})" if trained else "")
            )
        for mine, theirs in zip(self.agents, spec.agents):
            trained_for = mine.contract.env_id
            problems = mine.contract.misfits(trained_for or spec.reference, theirs)
            if problems and trained_for and trained_for != spec.reference:
                problems.insert(0, f"trained for env {trained_for!r}, not {spec.reference!r}")
            if problems:
                raise EvalError(f"agent {theirs.name} ({mine.where}): " + "; ".join(problems))

    def trained_env(self) -> str:
        """The env (reference with options) the policies were trained on, as the source records it.
        A module:factory reference read from an export, a run or a server is refused: calling a factory
        that a file or a remote server names would run code of its choosing; the user names it instead."""
        recorded = sorted({a.contract.env_id for a in self.agents})
        if recorded == [""] or not recorded:
            raise EvalError(f"the {self.kind} source does not say which env its policies were trained on: pass --env")
        if len(recorded) > 1:
            raise EvalError(f"the {self.kind} source's agents were trained on different envs {recorded}: pass --env")
        env = recorded[0]
        if not is_registered(env):
            raise EvalError(
                f"the policies were trained on {env!r}, a module:factory reference, which omad imports and calls "
                f"only when you name it: pass --env {env!r} (or register the env under the omad.envs entry points)"
            )
        return env

    def close(self) -> None:
        for worker in self._workers:
            worker.stop()
        for fn in self._on_close:
            fn()


class _Worker:
    """One daemon thread per agent: a call stuck on a stalled server can never keep the process alive."""

    def __init__(self, name: str):
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def submit(self, fn, *args) -> Future:
        future: Future = Future()
        self._jobs.put((future, fn, args))
        return future

    def stop(self) -> None:
        self._jobs.put(None)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, fn, args = job
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args))
                except BaseException as err:  # noqa: BLE001 - handed to the caller
                    future.set_exception(err)


# -- the three sources ---------------------------------------------------------------------------
def torch_source(run_dir: str | Path) -> PolicySource:
    """A training run dir's latest checkpoint, in-process (the only source that needs torch)."""
    from omad.train.policies import load_policies, load_spec

    spec = load_spec(run_dir)
    policies = load_policies(run_dir)
    agents = [AgentEndpoint(AgentContract.of(p, spec.reference), str(run_dir)) for p in policies.values()]
    return PolicySource("torch", agents, list(policies.values()))


def onnx_source(export_dir: str | Path, threads: int = 1) -> PolicySource:
    from omad.runtime.onnx_policy import load_export

    policies = load_export(export_dir, threads=threads)
    agents = [AgentEndpoint(p.info.contract, str(export_dir)) for p in policies.values()]
    return PolicySource("onnx", agents, list(policies.values()))


def grpc_source(
    addrs: list[str], token: str | None = None, timeout_s: float = 5.0, retries: int = 3, **tls: Any
) -> PolicySource:
    """One streaming session per agent server; an unreachable server fails here, naming the address."""
    from omad.serve.client import PolicyCallError, PolicyClient, PolicyStream

    clients: list[PolicyClient] = []
    streams: list[PolicyStream] = []
    agents = []
    try:
        for i, addr in enumerate(addrs):
            client = PolicyClient(addr, token=token, timeout_s=timeout_s, retries=retries, **tls)
            clients.append(client)
            try:
                contract = client.contract()
            except PolicyCallError as err:
                raise EvalError(f"agent {i} server at {addr} is not usable ({err.code.name}: {err.details})") from None
            except ContractError as err:
                raise EvalError(f"agent {i} server at {addr} describes an unusable agent ({err})") from None
            agents.append(AgentEndpoint(contract, addr))
            streams.append(client.stream())
    except BaseException:
        for c in clients:
            c.close()
        raise

    def close() -> None:
        for s in streams:
            s.close()
        for c in clients:
            c.close()

    # Each stream splits a step's batch to its server's max_batch and fails with DEADLINE_EXCEEDED
    # after timeout_s; the step timeout only backs that up.
    return PolicySource(
        "grpc", agents, list(streams), concurrent=True, step_timeout_s=timeout_s + 2.0, _on_close=[close]
    )


# -- running and reporting -----------------------------------------------------------------------
def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": float("nan"), "p95": float("nan"), "p99": float("nan")}
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {"p50": float(p50), "p95": float(p95), "p99": float(p99)}


def run_eval(
    env_id: str | None,
    source: PolicySource,
    episodes: int,
    seed: int,
    zero_noise: bool = False,
    record: str | Path | None = None,
    options: dict | None = None,
) -> dict:
    """Evaluate the source's team on `env_id` with `options`; with no env_id, on the env its policies
    were trained on (`PolicySource.trained_env`), with `options` over the recorded ones."""
    if env_id is None:
        env_id, recorded = split_env_ref(source.trained_env())
        options = {**recorded, **(options or {})}
    spec = get_spec(env_id, options)
    source.check_against(spec)
    try:
        result: EvalResult = evaluate(
            env_id,
            source.act,
            [a.contract.noise_steps for a in source.agents],
            episodes,
            seed,
            options,
            zero_noise=zero_noise,
            record=record is not None,
        )
    finally:
        source.close()
    report = {
        "env": spec.reference,
        "source": source.kind,
        "episodes": episodes,
        "seed": seed,
        "noise": "zero" if zero_noise else "stochastic",
        "return_mean": result.mean,
        "return_std": result.std,
        "returns": result.returns,
        "lengths": result.lengths,
        "control_rate_hz": result.control_rate_hz,
        "latency_us": {a.contract.name: percentiles(source.latency_us.get(a.contract.name, [])) for a in source.agents},
    }
    if record is not None:
        report["recording"] = str(write_video(Path(record), result.frames))
    return report


def write_video(path: Path, frames: list[Any], fps: int = 30) -> Path:
    if not frames:
        raise EvalError("no frames were rendered; nothing to record")
    import imageio.v2 as imageio

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".gif":
        imageio.mimsave(path, frames[::2], duration=2000 / fps, loop=0)  # every other frame keeps GIFs small
    elif path.suffix.lower() == ".mp4":
        try:
            imageio.mimsave(path, frames, fps=fps)
        except (ImportError, ValueError) as err:
            raise EvalError(f"writing MP4 needs the imageio-ffmpeg package ({err}); use a .gif path instead") from None
    else:
        raise EvalError(f"--record {path}: use a .gif or .mp4 file name")
    return path


def format_report(report: dict) -> str:
    lines = [
        f"env {report['env']}  source {report['source']}  noise {report['noise']}  episodes {report['episodes']}",
        f"return      {report['return_mean']:10.2f} +- {report['return_std']:.2f}",
        f"length      {np.mean(report['lengths']):10.1f}",
        f"loop rate   {report['control_rate_hz']:10.1f} steps/s",
    ]
    if report["latency_us"]:
        lines.append(f"{'agent':<12}{'p50 us':>10}{'p95 us':>10}{'p99 us':>10}")
        for name, p in report["latency_us"].items():
            lines.append(f"{name:<12}{p['p50']:>10.0f}{p['p95']:>10.0f}{p['p99']:>10.0f}")
    if "recording" in report:
        lines.append(f"recording   {report['recording']}")
    return "\n".join(lines)


def write_json(path: str | Path, report: dict) -> None:
    Path(path).write_text(json.dumps(report, indent=2) + "\n")


# -- `omad eval` -----------------------------------------------------------------------------------
def configure_eval(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--env",
        default=None,
        help="environment id or module:factory (see `omad envs`); default: the registered env the policies were "
        "trained on (recorded in the export, run dir or servers); given, it replaces that env and must fit the "
        "policies' agents, sizes and bounds",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--servers", help="agent servers host:port,host:port,... in agent order")
    source.add_argument("--export-dir", help="ONNX export dir, run in-process")
    source.add_argument("--run-dir", help="training run dir, torch checkpoint in-process")
    p.add_argument("--episodes", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--zero-noise", action="store_true", help="deterministic policy (all noise zero)")
    p.add_argument("--record", help="write episode 0 as a .gif or .mp4")
    p.add_argument("--json", help="write the report as JSON here")
    p.add_argument(
        "--env-options", default=None, help="env options as YAML, e.g. '{N: 4}'; over the recorded ones without --env"
    )
    p.add_argument("--token-file", help="bearer token for the servers")
    p.add_argument("--timeout-s", type=float, default=5.0, help="per-call deadline for servers")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads (--export-dir)")
    p.set_defaults(func=cmd_eval)


def read_token_file(path: str) -> str:
    try:
        with open(path) as f:
            token = f.read().strip()
    except OSError as err:
        raise EvalError(f"cannot read --token-file: {err}") from None
    if not token:
        raise EvalError(f"--token-file {path} is empty")
    return token


def cmd_eval(args: argparse.Namespace) -> int:
    import yaml

    if args.episodes < 1:
        raise EvalError("--episodes must be at least 1")
    options = yaml.safe_load(args.env_options) if args.env_options else None
    if options is not None and not isinstance(options, dict):
        raise EvalError(f"--env-options must be a mapping of option: value, got {args.env_options!r}")
    if args.servers:
        token = read_token_file(args.token_file) if args.token_file else None
        addrs = [a.strip() for a in args.servers.split(",") if a.strip()]
        source = grpc_source(addrs, token=token, timeout_s=args.timeout_s)
    elif args.export_dir:
        source = onnx_source(args.export_dir, threads=args.threads)
    else:
        source = torch_source(args.run_dir)
    report = run_eval(args.env, source, args.episodes, args.seed, args.zero_noise, args.record, options)
    print(format_report(report))
    if args.json:
        write_json(args.json, report)
    return 0
