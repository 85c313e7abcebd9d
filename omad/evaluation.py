"""Closed-loop evaluation (`omad eval`): the environment steps here; each agent's policy comes from a
torch run dir, an ONNX export or a gRPC server per agent. All three are `omad.core.policy.Policy`
objects, run by one loop (omad.core.rollout.evaluate) that draws the noise, so the three give the
same returns. Latency is measured here, around each call, not returned by the policies. With
`--trace FILE` every step is recorded (omad.runtime.trace) for `omad replay`. Servers are checked to
serve one export (their team id, omad.serve.team) when connecting and after every step.

Torch loads only for a run dir (`torch_source`), so evaluating an export or servers needs no torch.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from omad.core.agent import AgentContract
from omad.core.envs import get_spec, is_registered, split_env_ref
from omad.core.envs.base import EnvSpec
from omad.core.errors import OmadError
from omad.core.policy import Policy
from omad.core.rollout import EvalResult, evaluate
from omad.runtime.team import UNKNOWN_TEAM, ModelRef, short
from omad.runtime.trace import TraceRecorder

if TYPE_CHECKING:
    from omad.serve.team import TeamCheck

# `omad eval` and `omad replay` as clients of TLS servers: files from the flags, else from these.
CLIENT_TLS_ENV = {"tls_ca": "OMAD_TLS_CA", "tls_cert": "OMAD_TLS_CLIENT_CERT", "tls_key": "OMAD_TLS_CLIENT_KEY"}
TOKEN_ENV = "OMAD_SERVE_TOKEN"  # the server's variable, read when --token-file is not given


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
    where: str = ""  # the servers, export dir or run dir
    models: Callable[[int], ModelRef] | None = None  # the model that answered agent i's latest call
    team_ids: list[str] = field(default_factory=list)  # each agent's team id at the start (none for torch)
    team: TeamCheck | None = None  # gRPC: every step's replies are checked to come from one team
    recorder: TraceRecorder | None = None  # `--trace`: every step is recorded
    _workers: list[_Worker] = field(default_factory=list)
    _on_close: list[Callable[[], None]] = field(default_factory=list)
    _after_step: list[Callable[[], None]] = field(default_factory=list)

    def act(self, obs: list[np.ndarray], noise: list[np.ndarray]) -> list[np.ndarray]:
        actions = self._act_all(obs, noise)
        if self.recorder is not None:
            latency = [self.latency_us[a.contract.name][-1] for a in self.agents]
            self.recorder.record(obs, noise, actions, latency, [self.model_ref(i) for i in range(len(self.agents))])
        for check in self._after_step:
            check()
        return actions

    def model_ref(self, i: int) -> ModelRef:
        return self.models(i) if self.models is not None else ModelRef("", "")

    def _act_all(self, obs: list[np.ndarray], noise: list[np.ndarray]) -> list[np.ndarray]:
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
    # No model file answers here (traces show none); a replay compares torch by its actions alone.
    return PolicySource("torch", agents, list(policies.values()), where=str(run_dir))


def onnx_source(export_dir: str | Path, threads: int = 1) -> PolicySource:
    from omad.runtime.onnx_policy import load_export

    policies = load_export(export_dir, threads=threads)
    agents = [AgentEndpoint(p.info.contract, str(export_dir)) for p in policies.values()]
    models = [ModelRef(p.info.sha256, p.team_id) for p in policies.values()]
    return PolicySource(
        "onnx",
        agents,
        list(policies.values()),
        where=str(export_dir),
        models=models.__getitem__,
        team_ids=[m.team_id for m in models],
    )


def grpc_source(
    addrs: list[str],
    token: str | None = None,
    timeout_s: float = 5.0,
    retries: int = 3,
    allow_mixed_team: bool = False,
    **tls: Any,
) -> PolicySource:
    """One streaming session per agent server (omad.serve.team.TeamClient): an unreachable server fails
    here, naming the address, and so does a team whose servers serve different exports, unless
    `allow_mixed_team` (then the steps run on a mixed team are counted)."""
    from omad.serve.team import TeamClient, TeamConnectError

    try:
        team = TeamClient(addrs, allow_mixed=allow_mixed_team, token=token, timeout_s=timeout_s, retries=retries, **tls)
    except TeamConnectError as err:
        raise EvalError(str(err)) from None
    except OSError as err:  # a TLS file that cannot be read
        raise EvalError(f"cannot read a TLS file: {err}") from None
    streams = team.streams
    # Each stream splits a step's batch to its server's max_batch and fails with DEADLINE_EXCEEDED
    # after timeout_s; the step timeout only backs that up.
    return PolicySource(
        "grpc",
        [AgentEndpoint(contract, addr) for contract, addr in zip(team.contracts, addrs)],
        list(streams),
        concurrent=True,
        step_timeout_s=timeout_s + 2.0,
        where=",".join(addrs),
        models=lambda i: streams[i].last_model or ModelRef("", ""),
        team_ids=list(team.team_ids),
        team=team.check,
        _on_close=[team.close],
        _after_step=[team.check_step],
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
    trace: str | Path | None = None,
) -> dict:
    """Evaluate the source's team on `env_id` with `options`; with no env_id, on the env its policies
    were trained on (`PolicySource.trained_env`), with `options` over the recorded ones. With `trace`,
    write every step there (also when the evaluation fails part way)."""
    if env_id is None:
        env_id, recorded = split_env_ref(source.trained_env())
        options = {**recorded, **(options or {})}
    spec = get_spec(env_id, options)
    source.check_against(spec)
    if trace is not None:
        source.recorder = TraceRecorder(
            [(a.contract.name, a.contract.obs_dim, a.contract.act_dim, a.contract.noise_steps) for a in source.agents]
        )
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
        if trace is not None and source.recorder is not None and source.recorder.trace.steps:
            source.recorder.save(
                trace,
                source=source.kind,
                where=source.where,
                env=spec.reference,
                seed=seed,
                episodes=episodes,
                noise="zero" if zero_noise else "stochastic",
                mixed_steps=source.team.mixed_steps if source.team is not None else 0,
            )
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
        "team": team_report(source),
    }
    if trace is not None:
        report["trace"] = str(trace)
    if record is not None:
        report["recording"] = str(write_video(Path(record), result.frames))
    return report


def team_report(source: PolicySource) -> dict | None:
    """The team id the agents share ("mixed" if they differ, "unknown" if their export has none), each
    agent's, and for servers the steps run and those run on a mixed team. None for a run dir."""
    if not source.team_ids:
        return None
    ids = source.team_ids
    report: dict[str, Any] = {
        "team_id": ids[0] if len(set(ids)) == 1 else "mixed",
        "agents": {a.contract.name: team for a, team in zip(source.agents, ids)},
        "verified": UNKNOWN_TEAM not in ids,
    }
    if source.team is not None:
        report.update(steps=source.team.steps, mixed_steps=source.team.mixed_steps, first_mixed=source.team.first_mixed)
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
    team = report.get("team")
    if team:
        if not team["verified"]:
            line = "unknown: the export carries no team id (re-export it), so the team was not checked"
        else:
            line = short(team["team_id"]) if team["team_id"] != "mixed" else "mixed"
        if "mixed_steps" in team:
            line += f"; {team['mixed_steps']} of {team['steps']} steps ran on a mixed team"
        lines.append(f"team        {line}")
    if "recording" in report:
        lines.append(f"recording   {report['recording']}")
    if "trace" in report:
        lines.append(f"trace       {report['trace']}")
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
    add_source_flags(p)
    p.add_argument("--episodes", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--zero-noise", action="store_true", help="deterministic policy (all noise zero)")
    p.add_argument("--record", help="write episode 0 as a .gif or .mp4")
    p.add_argument("--json", help="write the report as JSON here")
    p.add_argument(
        "--env-options", default=None, help="env options as YAML, e.g. '{N: 4}'; over the recorded ones without --env"
    )
    p.add_argument(
        "--trace",
        metavar="FILE",
        help="record every step (observations, noise, actions, model, latency) for `omad replay`",
    )
    add_connection_flags(p)
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads (--export-dir)")
    p.set_defaults(func=cmd_eval)


def add_source_flags(p: argparse.ArgumentParser) -> None:
    """--servers | --export-dir | --run-dir: where the policies come from (`omad eval`, `omad replay`)."""
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--servers", help="agent servers host:port,host:port,... in agent order")
    source.add_argument("--export-dir", help="ONNX export dir, run in-process")
    source.add_argument("--run-dir", help="training run dir, torch checkpoint in-process")


def add_connection_flags(p: argparse.ArgumentParser) -> None:
    """How to reach the servers (--servers): token, TLS and mTLS files, deadline, mixed teams."""
    g = p.add_argument_group("servers (--servers)")
    g.add_argument("--token-file", help=f"bearer token for the servers (or env {TOKEN_ENV})")
    g.add_argument(
        "--tls-ca", metavar="PEM", help=f"CA that signed the servers' certificates (or env {CLIENT_TLS_ENV['tls_ca']})"
    )
    g.add_argument(
        "--tls-cert", metavar="PEM", help=f"client certificate, for mTLS servers (or env {CLIENT_TLS_ENV['tls_cert']})"
    )
    g.add_argument(
        "--tls-key", metavar="PEM", help=f"client private key, for mTLS servers (or env {CLIENT_TLS_ENV['tls_key']})"
    )
    g.add_argument(
        "--tls-server-name", metavar="NAME", help="name in the server certificates, if not the host of the address"
    )
    g.add_argument("--timeout-s", type=float, default=5.0, help="per-call deadline for servers")
    g.add_argument(
        "--allow-mixed-team",
        action="store_true",
        help="run even when the servers serve different exports (team ids), counting the steps run on a mixed team",
    )


def client_options(args: argparse.Namespace) -> dict[str, Any]:
    """The connection flags as grpc_source's keyword arguments, the environment filling what is not given."""
    options: dict[str, Any] = {"timeout_s": args.timeout_s, "allow_mixed_team": args.allow_mixed_team}
    if args.token_file:
        options["token"] = read_token_file(args.token_file)
    elif os.environ.get(TOKEN_ENV):
        options["token"] = os.environ[TOKEN_ENV]
    for name, env in CLIENT_TLS_ENV.items():
        options[name] = getattr(args, name) or os.environ.get(env) or None
    if (options["tls_cert"] is None) != (options["tls_key"] is None):
        raise EvalError("a client certificate needs both --tls-cert and --tls-key")
    if args.tls_server_name:
        options["tls_server_name"] = args.tls_server_name
    return options


def source_from_args(args: argparse.Namespace) -> PolicySource:
    if args.servers:
        addrs = [a.strip() for a in args.servers.split(",") if a.strip()]
        return grpc_source(addrs, **client_options(args))
    if args.export_dir:
        return onnx_source(args.export_dir, threads=args.threads)
    return torch_source(args.run_dir)


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
    source = source_from_args(args)
    report = run_eval(args.env, source, args.episodes, args.seed, args.zero_noise, args.record, options, args.trace)
    print(format_report(report))
    if args.json:
        write_json(args.json, report)
    return 0
