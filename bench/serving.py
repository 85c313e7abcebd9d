"""Serving benchmark (BENCHMARKS.md, "Serving"): what one action costs, from in-process to over gRPC.

    .venv/bin/python bench/serving.py                          # every implemented part
    .venv/bin/python bench/serving.py --parts 1,2 --repeats 3000

Policy: K = 8, a 3x256 score net, HalfCheetah 2x3 sizes, random weights (cost does not depend on them).
Parts, numbered as in BENCHMARKS.md:
  1. torch eager, in-process, batch 1 and 64
  2. ONNX Runtime (exporters.runtime.OnnxPolicy.act, validation included), in-process, batch 1 and 64
  3-5 (gRPC floor, `omad serve` round trip, throughput) plug in as further PARTS entries.
Each part returns rows (one measurement each); ratios are taken between rows of the same run.
Writes bench/results/serving.json and bench/results/serving.md. Nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from exporters.onnx_export import export_policy
from exporters.runtime import OnnxPolicy
from omad_train.diffusion import AgentPolicy
from omad_train.envs import get_spec

ENV_ID = "mamujoco:HalfCheetah-2x3"
DENOISING_STEPS = 8
HIDDEN = [256, 256, 256]
BATCHES = (1, 64)
RESULTS_DIR = Path(__file__).resolve().parent / "results"


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
    parity: dict[int, float] = field(default_factory=dict)


def make_bench(workdir: Path, repeats: int, warmup: int, max_seconds: float, threads: list[int]) -> Bench:
    agent = get_spec(ENV_ID).agents[0]
    hparams = dict(
        obs_dims=[agent.obs_dim],
        act_dims=[agent.act_dim],
        action_low=[list(agent.action_low)],
        action_high=[list(agent.action_high)],
        hidden=HIDDEN,
        denoising_steps=DENOISING_STEPS,
    )
    torch.manual_seed(0)
    policy = AgentPolicy(agent.name, hparams).eval()
    onnx_path = workdir / f"{agent.name}.onnx"
    report = export_policy(
        policy, onnx_path, env_id=ENV_ID, algo="omad", source_run="bench/serving.py (random weights)", weights_sha256="none"
    )
    rng = np.random.default_rng(0)
    inputs = {
        batch: (
            rng.standard_normal((batch, agent.obs_dim), dtype=np.float32),
            rng.standard_normal((DENOISING_STEPS + 1, batch, agent.act_dim), dtype=np.float32),
        )
        for batch in BATCHES
    }
    return Bench(policy, onnx_path, inputs, repeats, warmup, max_seconds, threads, parity=report.max_error)


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
    micros = np.array(times) / 1e3
    return {
        "median_us": float(np.median(micros)),
        "p99_us": float(np.percentile(micros, 99)),
        "mean_us": float(micros.mean()),
        "repeats": len(times),
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
                    return bench.policy(torch.from_numpy(obs), torch.from_numpy(noise)).numpy()

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
                    **time_calls(lambda: policy.act(obs, noise), bench),
                }
            )
    return rows


# Part number -> function(bench) -> rows. Parts 3-5 (gRPC) are added here.
PARTS = {1: part_torch_eager, 2: part_onnxruntime}


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
        f"Policy: {cfg['env_id']} agent sizes (obs {cfg['obs_dim']}, act {cfg['act_dim']}), K = {cfg['denoising_steps']}, "
        f"score net {'x'.join(map(str, cfg['hidden']))}. Machine: {result['machine']['cpu']}, {result['machine']['cpus']} CPUs, "
        f"load average at start {result['machine']['load_average_at_start'][0]:.2f}. Command: `{result['command']}`.",
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
    lines += ["", f"Parity of the benchmarked graph (max abs error vs torch): "
              + ", ".join(f"batch {b}: {e:.1e}" for b, e in result["parity"].items()), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default=",".join(map(str, PARTS)), help=f"comma-separated part numbers; default: all ({sorted(PARTS)})")
    parser.add_argument("--repeats", type=int, default=2000, help="timed calls per measurement")
    parser.add_argument("--warmup", type=int, default=100, help="untimed calls before each measurement")
    parser.add_argument("--max-seconds", type=float, default=20.0, help="time cap per measurement (at least 100 calls)")
    parser.add_argument("--threads", default="1,2", help="thread counts to measure (torch intra-op and ORT intra-op)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="directory for serving.json and serving.md")
    args = parser.parse_args(argv)
    parts = [int(p) for p in args.parts.split(",")]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown parts {unknown}; implemented: {sorted(PARTS)}")

    with tempfile.TemporaryDirectory() as workdir:
        threads = [int(t) for t in args.threads.split(",")]
        bench = make_bench(Path(workdir), args.repeats, args.warmup, args.max_seconds, threads)
        result = {
            "benchmark": "serving",
            "command": " ".join(["bench/serving.py", *(argv if argv is not None else sys.argv[1:])]).strip(),
            "machine": machine(),
            "config": {
                "env_id": ENV_ID,
                "obs_dim": bench.policy.obs_dim,
                "act_dim": bench.policy.act_dim,
                "denoising_steps": DENOISING_STEPS,
                "hidden": HIDDEN,
                "batches": list(BATCHES),
                "threads": bench.threads,
                "warmup": args.warmup,
                "max_seconds": args.max_seconds,
            },
            "parity": {str(b): e for b, e in bench.parity.items()},
            "rows": [],
        }
        for part in parts:
            for row in PARTS[part](bench):
                result["rows"].append({"part": part, **row})
                print(f"part {part}  {row['name']:<14} threads {row['threads']}  batch {row['batch']:>3}  "
                      f"median {row['median_us']:8.1f} us  p99 {row['p99_us']:8.1f} us", flush=True)
    result["machine"]["load_average_at_end"] = list(os.getloadavg())
    result["ratios"] = ratios(result["rows"])

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serving.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "serving.md").write_text(markdown(result))
    print()
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
