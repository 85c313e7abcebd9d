"""Serving benchmark (docs/results/performance.md): what one action costs, from in-process to over gRPC.

    .venv/bin/python -m bench.serving                          # every implemented part
    .venv/bin/python -m bench.serving --parts 1,2 --repeats 3000
    .venv/bin/python -m bench.serving --smoke --out DIR        # every part on a tiny policy, briefly: checks the script

Policy: K = 8, a 3x256 score net, HalfCheetah 2x3 sizes, random weights (cost does not depend on them).
Parts, numbered as in the results table:
  1. torch eager, in-process, batch 1 and 64
  2. ONNX Runtime (omad.runtime.onnx_policy.OnnxPolicy.act, validation included), in-process, batch 1 and 64
  3. a no-op gRPC server process (bench.noop_grpc_server): unary and streaming round trip, batch 1
  4. `omad serve` round trip through PolicyClient: unary and streaming, batch 1, interleaved with
     the no-op server's and in-process ORT's (the streaming target is taken from these)
  5. throughput: C = 1, 4, 16, 64 closed-loop streaming clients, with and without micro-batching
  6. a model reload (SIGHUP, new file) under load: 16 streaming clients, no call may fail
Each part returns rows (one measurement each); ratios are taken between rows of the same run.
Writes serving.json and serving.md to --out (default bench/results). Nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import onnxruntime
import torch

from bench.common import REPO, RESULTS, command
from omad.core.envs import get_spec
from omad.export.onnx import export_policy
from omad.runtime.onnx_policy import OnnxPolicy
from omad.serve._generated import policy_pb2, policy_pb2_grpc
from omad.serve.client import PolicyClient, act_request, wait_until_serving
from omad.serve.launcher import pick_ports
from omad.train.algos.omad import make_actors
from omad.train.config import parse_config
from omad.train.layout import AgentLayout
from omad.train.policies import AgentPolicy

ENV_ID = "mamujoco:HalfCheetah-2x3"
DENOISING_STEPS = 8
HIDDEN = [256, 256, 256]
BATCHES = (1, 64)
# --smoke: a tiny policy and a fraction of a second per measurement (checks every part, measures nothing)
SMOKE = dict(denoising_steps=2, hidden=[16, 16], repeats=20, warmup=2, max_seconds=0.2, threads=[1], seconds=0.4)


@dataclass
class Bench:
    """What every part shares: one agent's policy, its verified export, fixed inputs, settings."""

    policy: AgentPolicy
    onnx_path: Path
    inputs: dict[int, tuple[np.ndarray, np.ndarray]]  # batch -> (obs, noise)
    repeats: int
    warmup: int
    max_seconds: float  # per measurement: a cap for slow configurations on a busy machine
    threads: list[int]
    policy_hparams: dict = field(default_factory=dict)
    parity: dict[int, float] = field(default_factory=dict)
    seconds: float = 3.0  # the measured window of a closed-loop load (parts 5, 6)
    clients: tuple[int, ...] = (1, 4, 16, 64)  # the loads of part 5


def agent_hparams(denoising_steps: int, hidden: list[int]) -> tuple[str, dict]:
    """The first HalfCheetah 2x3 agent's actor as `omad train` builds it (OMAD's defaults otherwise)."""
    spec = get_spec(ENV_ID)
    cfg = parse_config(dict(env=ENV_ID, denoising_steps=denoising_steps, actor_hidden=hidden))
    return spec.agents[0].name, make_actors(cfg, AgentLayout(spec)).agent_hparams(0)


def make_bench(
    workdir: Path,
    repeats: int,
    warmup: int,
    max_seconds: float,
    threads: list[int],
    denoising_steps: int = DENOISING_STEPS,
    hidden: list[int] = HIDDEN,
) -> Bench:
    name, hparams = agent_hparams(denoising_steps, hidden)
    torch.manual_seed(0)
    policy = AgentPolicy(name, hparams).eval()
    onnx_path = workdir / f"{name}.onnx"
    report = export_policy(policy, onnx_path, env_id=ENV_ID, algo="omad", source_run="bench.serving (random weights)")
    rng = np.random.default_rng(0)
    inputs = {
        batch: (
            rng.standard_normal((batch, policy.obs_dim), dtype=np.float32),
            rng.standard_normal((denoising_steps + 1, batch, policy.act_dim), dtype=np.float32),
        )
        for batch in BATCHES
    }
    return Bench(policy, onnx_path, inputs, repeats, warmup, max_seconds, threads, hparams, parity=report.max_error)


def time_calls(call, bench: Bench) -> dict:
    """Median, p99 and mean in microseconds of up to `bench.repeats` timed calls (fewer if they take
    over `bench.max_seconds`), after `bench.warmup` untimed ones (capped at a tenth of that time)."""
    warmup_end = time.perf_counter() + bench.max_seconds / 10
    for _ in range(bench.warmup):
        call()
        if time.perf_counter() > warmup_end:
            break
    times = []
    deadline = time.perf_counter() + bench.max_seconds
    while len(times) < bench.repeats and (len(times) < 100 or time.perf_counter() < deadline):
        start = time.perf_counter_ns()
        call()
        times.append(time.perf_counter_ns() - start)
    return summarize(np.array(times) / 1e3)


def summarize(micros: np.ndarray) -> dict:
    return {
        "median_us": float(np.median(micros)),
        "p99_us": float(np.percentile(micros, 99)),
        "mean_us": float(micros.mean()),
        "repeats": len(micros),
    }


# -- parts --------------------------------------------------------------------------------------
def part_torch_eager(bench: Bench) -> list[dict]:
    """1. The torch module called as training would, numpy in and out (the conversions are free)."""
    rows, default_threads = [], torch.get_num_threads()
    for threads in bench.threads:
        torch.set_num_threads(threads)
        for batch, (obs, noise) in bench.inputs.items():

            def call():
                with torch.inference_mode():
                    return bench.policy(torch.from_numpy(obs), torch.from_numpy(noise)).numpy()  # noqa: B023 - timed now

            rows.append({"name": "torch eager", "threads": threads, "batch": batch, **time_calls(call, bench)})
    torch.set_num_threads(default_threads)
    return rows


def part_onnxruntime(bench: Bench) -> list[dict]:
    """2. The exported graph through the serving runtime: validation + one session.run."""
    rows = []
    for threads in bench.threads:
        policy = OnnxPolicy(bench.onnx_path, threads=threads)
        for batch, (obs, noise) in bench.inputs.items():
            rows.append(
                {
                    "name": "ONNX Runtime",
                    "threads": threads,
                    "batch": batch,
                    **time_calls(lambda: policy.act(obs, noise), bench),  # noqa: B023 - timed now
                }
            )
    return rows


# -- parts 3-5: over gRPC on loopback (server processes; the torch-free PolicyClient) -------------
P99_LIMIT_MS = {16: 5, 64: 10}  # the p99 targets at 16 and 64 clients


@contextlib.contextmanager
def server_process(argv: list[str], log_path: Path, wait_ready: Callable[[], None]) -> Iterator[subprocess.Popen]:
    """A server process for the duration of a measurement; its stderr goes to log_path."""
    with open(log_path, "w") as log:
        process = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=log)
    try:
        wait_ready()
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def noop_server(bench: Bench, with_model: bool = False) -> tuple[contextlib.AbstractContextManager, str]:
    """bench.noop_grpc_server: the same service and messages, a constant reply, no work (or, with
    the model, ONNX Runtime inline in the handler and nothing else)."""
    port = pick_ports("127.0.0.1", 0, 1)[0]
    addr = f"127.0.0.1:{port}"
    argv = [sys.executable, "-m", "bench.noop_grpc_server", str(port), str(bench.policy.act_dim)]
    if with_model:
        argv.append(str(bench.onnx_path))

    def ready() -> None:
        with grpc.insecure_channel(addr) as channel:
            grpc.channel_ready_future(channel).result(timeout=60)

    return server_process(argv, bench.onnx_path.parent / "noop.log", ready), addr


def omad_server(bench: Bench, *flags: str, model: Path | None = None) -> tuple[contextlib.AbstractContextManager, str]:
    """`omad serve --model` of the benchmark graph (or `model`), one ONNX Runtime thread."""
    port = pick_ports("127.0.0.1", 0, 1)[0]
    addr = f"127.0.0.1:{port}"
    argv = [
        sys.executable,
        "-m",
        "omad",
        "serve",
        "--model",
        str(model or bench.onnx_path),
        "--port",
        str(port),
        "--threads",
        "1",
        "--log-level",
        "warning",
        *flags,
    ]
    return server_process(argv, bench.onnx_path.parent / "serve.log", lambda: wait_until_serving(addr, 60)), addr


def round_trips(bench: Bench, name: str, addr: str) -> list[dict]:
    """PolicyClient round trips at batch 1 with explicit noise (the inputs of part 2): unary, streaming."""
    obs, noise = bench.inputs[1]
    rows = []
    with PolicyClient(addr, retries=0, timeout_s=30) as client:
        rows.append(
            {
                "name": f"{name} unary",
                "threads": 1,
                "batch": 1,
                **time_calls(lambda: client.act(obs, noise=noise), bench),
            }
        )
        with client.stream() as session:
            timed = time_calls(lambda: session.act(obs, noise=noise), bench)
            rows.append({"name": f"{name} streaming", "threads": 1, "batch": 1, **timed})
    return rows


def part_grpc_floor(bench: Bench) -> list[dict]:
    """3. A no-op gRPC server process (constant reply): what Python gRPC costs on loopback."""
    server, addr = noop_server(bench)
    with server:
        return round_trips(bench, "no-op gRPC", addr)


def part_omad_serve(bench: Bench) -> list[dict]:
    """4. `omad serve` round trips (decode, validate, ONNX Runtime, encode), unary and streaming. Measured
    in chunks interleaved with the no-op server's round trips and in-process ONNX Runtime, so the
    served / (floor + ORT) ratio compares the three under the same load (the machine may be shared)."""
    obs, noise = bench.inputs[1]
    policy = OnnxPolicy(bench.onnx_path, threads=1)
    servers = {
        "no-op gRPC": noop_server(bench),
        NOOP_WITH_ORT: noop_server(bench, with_model=True),
        "omad serve": omad_server(bench),
    }
    with ExitStack() as stack:
        calls = {f"ONNX Runtime {INTERLEAVED}": lambda: policy.act(obs, noise)}
        for name, (server, addr) in servers.items():
            stack.enter_context(server)
            client = stack.enter_context(PolicyClient(addr, retries=0, timeout_s=30))
            session = stack.enter_context(client.stream())
            suffix = "" if name == "omad serve" else f" {INTERLEAVED}"
            calls[f"{name} unary{suffix}"] = lambda c=client: c.act(obs, noise=noise)
            calls[f"{name} streaming{suffix}"] = lambda s=session: s.act(obs, noise=noise)
        stats = time_interleaved(calls, bench)
    return [{"name": name, "threads": 1, "batch": 1, **timed} for name, timed in stats.items()]


INTERLEAVED = "(interleaved with part 4)"
NOOP_WITH_ORT = "no-op gRPC + ORT in handler"
CHUNK = 50  # calls of one kind in a row, before the next kind


def time_interleaved(calls: dict[str, Callable[[], object]], bench: Bench) -> dict[str, dict]:
    """As `time_calls` for several calls at once, in chunks of CHUNK taking turns."""
    for call in calls.values():
        for _ in range(min(bench.warmup, CHUNK)):
            call()
    times: dict[str, list[int]] = {name: [] for name in calls}
    deadline = time.perf_counter() + bench.max_seconds * len(calls)
    while min(map(len, times.values())) < bench.repeats and (
        min(map(len, times.values())) < 100 or time.perf_counter() < deadline
    ):
        for name, call in calls.items():
            for _ in range(CHUNK):
                start = time.perf_counter_ns()
                call()
                times[name].append(time.perf_counter_ns() - start)
    return {name: summarize(np.array(t) / 1e3) for name, t in times.items()}


def part_throughput(bench: Bench) -> list[dict]:
    """5. C closed-loop clients (grpc.aio, one channel and one ActStream each, batch 1) against one
    server: `omad serve` with and without micro-batching, and the no-op server as the ceiling."""
    obs, _ = bench.inputs[1]
    request, _ = act_request(obs, None, None, False)  # the server draws the noise, as in closed-loop eval
    servers = {
        "no-op gRPC": lambda: noop_server(bench),
        "no batching": lambda: omad_server(bench, "--no-batching"),
        "batching": lambda: omad_server(bench, "--batching", "--max-batch", "64"),
        # the default (--inference-thread auto) runs merged batches on the inference thread here (2 cores,
        # 1 ORT thread); this row runs them inline on the event loop, as with fewer cores
        "batching, inline": lambda: omad_server(bench, "--batching", "--max-batch", "64", "--inference-thread", "off"),
    }
    rows = []
    for mode, make_server in servers.items():
        server, addr = make_server()
        with server:
            for clients in bench.clients:
                stats = asyncio.run(closed_loop(addr, request, clients, bench.seconds))
                rows.append(
                    {
                        "name": f"{clients} clients, {mode}",
                        "mode": mode,
                        "clients": clients,
                        "threads": 1,
                        "batch": 1,
                        **stats,
                    }
                )
    return rows


async def closed_loop(
    addr: str, request: policy_pb2.ActRequest, clients: int, seconds: float, during: Callable[[], None] | None = None
) -> dict:
    """Each client sends its next observation as soon as its last action arrives. `during` runs (in a
    thread) at the middle of the measured window. A failed call is counted and its stream reopened."""
    loop = asyncio.get_running_loop()
    measure_from = loop.time() + seconds / 4
    end = measure_from + seconds
    latencies: list[int] = []
    errors: list[str] = []
    models: set[str] = set()

    async def client(channel: grpc.aio.Channel) -> None:
        stream = policy_pb2_grpc.PolicyStub(channel).ActStream()
        while (now := loop.time()) < end:
            started = time.perf_counter_ns()
            try:
                await stream.write(request)
                reply = await stream.read()
            except grpc.aio.AioRpcError as err:
                errors.append(err.code().name)
                stream = policy_pb2_grpc.PolicyStub(channel).ActStream()
                continue
            if now >= measure_from:
                latencies.append(time.perf_counter_ns() - started)
                models.add(reply.model_sha256)
        await stream.done_writing()

    async def midway() -> None:
        await asyncio.sleep(measure_from + seconds / 2 - loop.time())
        await asyncio.to_thread(during)

    channels = [grpc.aio.insecure_channel(addr) for _ in range(clients)]
    try:
        await asyncio.gather(*(client(channel) for channel in channels), *([midway()] if during else []))
    finally:
        await asyncio.gather(*(channel.close() for channel in channels))
    micros = np.array(latencies) / 1e3
    return {
        "actions_per_s": len(micros) / seconds,
        "median_us": float(np.median(micros)),
        "p99_us": float(np.percentile(micros, 99)),
        "max_us": float(micros.max()),
        "mean_us": float(micros.mean()),
        "repeats": len(micros),
        "errors": len(errors),
        "models_seen": len(models),
    }


RELOAD_CLIENTS = 16


def part_reload(bench: Bench) -> list[dict]:
    """6. A model reload under load: C = 16 streaming clients; midway the served file is replaced by
    another export of the same agent and the server gets SIGHUP. No call may fail."""
    served = bench.onnx_path.parent / "reload" / bench.onnx_path.name
    served.parent.mkdir(exist_ok=True)
    shutil.copyfile(bench.onnx_path, served)
    torch.manual_seed(1)
    retrained = AgentPolicy(bench.policy.name, bench.policy_hparams).eval()
    update = bench.onnx_path.parent / "retrained.onnx"
    export_policy(retrained, update, env_id=ENV_ID, algo="omad", source_run="bench.serving (random weights, seed 1)")
    obs, _ = bench.inputs[1]
    request, _ = act_request(obs, None, None, False)
    server, addr = omad_server(bench, "--batching", "--max-batch", "64", model=served)
    with server as process:

        def reload() -> None:
            staging = served.with_suffix(".new")
            shutil.copyfile(update, staging)
            os.replace(staging, served)
            process.send_signal(signal.SIGHUP)

        stats = asyncio.run(closed_loop(addr, request, RELOAD_CLIENTS, bench.seconds, during=reload))
    return [
        {
            "name": f"{RELOAD_CLIENTS} clients, reload midway",
            "mode": "reload",
            "clients": RELOAD_CLIENTS,
            "threads": 1,
            "batch": 1,
            **stats,
        }
    ]


def grpc_targets(rows: list[dict]) -> list[dict]:
    """The serving targets for parts 3-6, from rows of this run (skipped if a part is missing)."""
    single = {r["name"]: r for r in rows if r["batch"] == 1 and r["threads"] == 1 and "clients" not in r}
    ort = single.get(f"ONNX Runtime {INTERLEAVED}")
    targets = []
    for mode, limit in (("streaming", 1.3), ("unary", None)):  # only streaming has a target; unary for context
        served, floor = single.get(f"omad serve {mode}"), single.get(f"no-op gRPC {mode} {INTERLEAVED}")
        if served and floor and ort:
            ratio = served["median_us"] / (floor["median_us"] + ort["median_us"])
            targets.append(
                {
                    "target": f"{mode} round trip / (no-op {mode} + in-process ORT)"
                    + (f" <= {limit}" if limit else " (no target)"),
                    "measured": f"{served['median_us']:.0f} / ({floor['median_us']:.0f} + {ort['median_us']:.0f}) us = {ratio:.2f}x",
                    "met": ratio <= limit if limit else None,
                }
            )
        ideal = single.get(f"{NOOP_WITH_ORT} {mode} {INTERLEAVED}")
        if served and ideal:  # what omad's own code adds, whatever the load does to a server doing the work
            targets.append(
                {
                    "target": f"{mode}: omad serve / no-op server running ORT in its handler (no target)",
                    "measured": f"{served['median_us']:.0f} / {ideal['median_us']:.0f} us = {served['median_us'] / ideal['median_us']:.2f}x",
                    "met": None,
                }
            )
    load = {(r["mode"], r["clients"]): r for r in rows if "clients" in r}
    for clients in sorted({clients for _, clients in load}):
        batched, unbatched = load.get(("batching", clients)), load.get(("no batching", clients))
        if clients < 16 or not (batched and unbatched):
            continue
        speedup = batched["actions_per_s"] / unbatched["actions_per_s"]
        targets.append(
            {
                "target": f"C = {clients}: batching / no batching actions/s >= 3",
                "measured": f"{batched['actions_per_s']:.0f} / {unbatched['actions_per_s']:.0f} = {speedup:.2f}x",
                "met": speedup >= 3,
            }
        )
        limit_ms, floor = P99_LIMIT_MS[clients], load.get(("no-op gRPC", clients))
        targets.append(
            {
                "target": f"C = {clients}: batching p99 < {limit_ms} ms",
                "measured": f"{batched['p99_us'] / 1e3:.2f} ms"
                + (f" (no-op server: {floor['p99_us'] / 1e3:.2f} ms)" if floor else ""),
                "met": batched["p99_us"] < limit_ms * 1e3,
            }
        )
    reload = load.get(("reload", RELOAD_CLIENTS))
    if reload:
        targets.append(
            {
                "target": f"a reload under load (C = {RELOAD_CLIENTS}) fails no request",
                "measured": f"{reload['errors']} failed of {reload['repeats']}; replies from {reload['models_seen']} models; "
                f"p99 {reload['p99_us'] / 1e3:.2f} ms, max {reload['max_us'] / 1e3:.2f} ms",
                "met": reload["errors"] == 0 and reload["models_seen"] == 2,
            }
        )
    return targets


def grpc_markdown(result: dict) -> list[str]:
    lines = []
    load = [r for r in result["rows"] if "clients" in r]
    if load:
        lines += [
            "",
            "Throughput (parts 5, 6): closed-loop streaming clients, batch 1, one server process (1 ORT thread).",
            "",
            "| clients | server | actions/s | median (us) | p99 (us) |",
            "|---:|---|---:|---:|---:|",
        ]
        lines += [
            f"| {r['clients']} | {r['mode']} | {r['actions_per_s']:.0f} | {r['median_us']:.0f} | {r['p99_us']:.0f} |"
            for r in load
        ]
    if result.get("targets"):
        lines += ["", "| target | measured | met |", "|---|---|---|"]
        met = {True: "yes", False: "**no**", None: "-"}
        lines += [f"| {t['target']} | {t['measured']} | {met[t['met']]} |" for t in result["targets"]]
    return lines


# Part number -> function(bench) -> rows.
PARTS = {
    1: part_torch_eager,
    2: part_onnxruntime,
    3: part_grpc_floor,
    4: part_omad_serve,
    5: part_throughput,
    6: part_reload,
}


# -- summary ------------------------------------------------------------------------------------
def fastest(rows: list[dict], name: str, batch: int) -> dict | None:
    candidates = [r for r in rows if r["name"] == name and r["batch"] == batch]
    return min(candidates, key=lambda r: r["median_us"]) if candidates else None


def ratios(rows: list[dict]) -> list[dict]:
    """torch eager / ONNX Runtime, each at its fastest thread count, per batch size."""
    result = []
    for batch in BATCHES:
        torch_row, ort_row = fastest(rows, "torch eager", batch), fastest(rows, "ONNX Runtime", batch)
        if torch_row and ort_row:
            result.append(
                {
                    "what": "torch eager / ONNX Runtime",
                    "batch": batch,
                    "median_ratio": torch_row["median_us"] / ort_row["median_us"],
                    "p99_ratio": torch_row["p99_us"] / ort_row["p99_us"],
                    "torch_threads": torch_row["threads"],
                    "ort_threads": ort_row["threads"],
                }
            )
    return result


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine() -> dict:
    return {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "load_average_at_start": list(os.getloadavg()),
    }


def markdown(result: dict) -> str:
    cfg = result["config"]
    lines = [
        "# Serving benchmark",
        "",
        (
            f"Policy: {cfg['env_id']} agent sizes (obs {cfg['obs_dim']}, act {cfg['act_dim']}), K = {cfg['denoising_steps']}, "
            f"score net {'x'.join(map(str, cfg['hidden']))}. Machine: {result['machine']['cpu']}, {result['machine']['cpus']} CPUs, "
            f"load average at start {result['machine']['load_average_at_start'][0]:.2f}, at end "
            f"{result['machine'].get('load_average_at_end', [float('nan')])[0]:.2f}. Command: `{result['command']}`."
        ),
        "",
        "| part | what | threads | batch | median (us) | p99 (us) | repeats |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['part']} | {r['name']} | {r['threads']} | {r['batch']} | {r['median_us']:.1f} | {r['p99_us']:.1f} | {r['repeats']} |"
        )
    if result["ratios"]:
        lines += ["", "| ratio | batch | median | p99 | threads (torch / ORT) |", "|---|---:|---:|---:|---|"]
        for q in result["ratios"]:
            lines.append(
                f"| {q['what']} | {q['batch']} | {q['median_ratio']:.2f}x | {q['p99_ratio']:.2f}x | {q['torch_threads']} / {q['ort_threads']} |"
            )
    lines += grpc_markdown(result)
    lines += [
        "",
        "Parity of the benchmarked graph (max abs error vs torch): "
        + ", ".join(f"batch {b}: {e:.1e}" for b, e in result["parity"].items()),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--parts",
        default=",".join(map(str, PARTS)),
        help=f"comma-separated part numbers; default: all ({sorted(PARTS)})",
    )
    parser.add_argument("--repeats", type=int, default=2000, help="timed calls per measurement")
    parser.add_argument("--warmup", type=int, default=100, help="untimed calls before each measurement")
    parser.add_argument("--max-seconds", type=float, default=20.0, help="time cap per measurement (at least 100 calls)")
    parser.add_argument("--threads", default="1,2", help="thread counts to measure (torch intra-op and ORT intra-op)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for serving.json and serving.md")
    parser.add_argument(
        "--smoke", action="store_true", help="every part on a tiny policy, briefly: checks the script, measures nothing"
    )
    args = parser.parse_args(argv)
    parts = [int(p) for p in args.parts.split(",")]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown parts {unknown}; implemented: {sorted(PARTS)}")

    with tempfile.TemporaryDirectory() as workdir:
        if args.smoke:
            steps, hidden = SMOKE["denoising_steps"], SMOKE["hidden"]
            bench = make_bench(
                Path(workdir), SMOKE["repeats"], SMOKE["warmup"], SMOKE["max_seconds"], SMOKE["threads"], steps, hidden
            )
            bench.seconds, bench.clients = SMOKE["seconds"], (1, 16)
        else:
            steps, hidden = DENOISING_STEPS, HIDDEN
            threads = [int(t) for t in args.threads.split(",")]
            bench = make_bench(Path(workdir), args.repeats, args.warmup, args.max_seconds, threads)
        result = {
            "benchmark": "serving",
            "command": command("bench.serving", sys.argv[1:] if argv is None else argv),
            "machine": machine(),
            "config": {
                "env_id": ENV_ID,
                "obs_dim": bench.policy.obs_dim,
                "act_dim": bench.policy.act_dim,
                "denoising_steps": steps,
                "hidden": hidden,
                "batches": list(BATCHES),
                "threads": bench.threads,
                "repeats": bench.repeats,
                "warmup": bench.warmup,
                "max_seconds": bench.max_seconds,
            },
            "parity": {str(b): e for b, e in bench.parity.items()},
            "rows": [],
        }
        for part in parts:
            for row in PARTS[part](bench):
                result["rows"].append({"part": part, **row})
                print(
                    f"part {part}  {row['name']:<14} threads {row['threads']}  batch {row['batch']:>3}  "
                    f"median {row['median_us']:8.1f} us  p99 {row['p99_us']:8.1f} us",
                    flush=True,
                )
    result["machine"]["load_average_at_end"] = list(os.getloadavg())
    result["ratios"] = ratios(result["rows"])
    result["targets"] = grpc_targets(result["rows"])

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serving.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "serving.md").write_text(markdown(result))
    print()
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
