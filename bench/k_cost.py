"""The cost of K, for deployment (docs/results/cost-of-k.md): OMAD trained at K = 1, 2, 4, 8
denoising steps on HalfCheetah 2x3 with the sample-efficiency study's protocol, every run exported and served.
One table: the final return (IQM, 95% CI over seeds), the learner's updates/s, and the served policy's
round trip (p50/p99 at 1 closed-loop client) and actions/s at 16 clients. It is the table to read to
pick K for a latency budget.

    .venv/bin/python -m bench.k_cost [--seeds 0 1] [--ks 1 2 4 8] [--steps N] [--workers 2] [--runs-dir DIR] [--out DIR]
    .venv/bin/python -m bench.k_cost --smoke --out DIR    # K = 1, 2, tiny networks and budgets: checks the script

Training: one resumable `omad sweep` per K under --runs-dir (default runs/k_cost, outside the results:
the runs keep their checkpoints, which the export reads); re-running the command continues it. Updates/s: bench.training's measurement
(synthetic batches, median of timed windows, one torch thread as a sweep job has), all K in this one
run. Serving: `omad export` of each run, then `omad serve` (default flags: micro-batching on, one ONNX
Runtime thread) of its first agent measured with bench.serving's closed-loop clients (the server
draws the noise, as in closed-loop evaluation); the table gives the median over a K's runs.
Writes OUT/k_cost.json and .md (default OUT: bench/results/k_cost).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import RESULTS, command, repo_relative
from bench.sample_efficiency import QUICK, QUICK_STEPS, TASKS, task_config
from bench.serving import Bench, closed_loop, omad_server
from bench.study_report import VERDICT_MODE
from bench.training import updates_per_second
from omad.experiments import stats
from omad.experiments.layout import job_dir
from omad.experiments.report import aggregate, read_metrics
from omad.experiments.sweep import run_sweep
from omad.export.onnx import export_run
from omad.serve.client import act_request

TASK = TASKS["halfcheetah_2x3"]
STEPS = 15_000  # env steps per run: enough to separate the Ks' returns, not the study's full budget
SERVE_SECONDS = 3.0
# --smoke: K = 1 and 2 at one seed, the study's tiny --quick networks and budget, brief measurements
SMOKE = dict(ks=[1, 2], seeds=[0], steps=QUICK_STEPS - 200, serve_seconds=0.3, windows=1, cycles=1, reps=200)


def protocol(smoke: bool) -> dict:
    """The study's protocol for the task; with --smoke its tiny networks and budget, and short episodes."""
    return {**task_config(TASK, smoke), **({"env_options": {"max_episode_steps": 50}} if smoke else {})}


def sweep_dir(runs: Path, k: int) -> Path:
    return runs / f"K-{k}"


def train(
    runs: Path,
    ks: list[int],
    seeds: list[int],
    steps: int,
    smoke: bool,
    workers: int,
    ray_address: str | None,
) -> None:
    for k in ks:
        summary = run_sweep(
            sweep_dir(runs, k),
            [TASK.env],
            ["omad"],
            seeds,
            steps,
            {**protocol(smoke), "denoising_steps": k},
            local_workers=workers,
            ray_address=ray_address,
        )
        if summary["failed"]:
            raise SystemExit(f"K = {k}: {len(summary['failed'])} job(s) failed: {summary['failed']}")


def serve_latency(onnx_path: Path, obs_dim: int, seconds: float) -> dict:
    """`omad serve` of one agent's graph: 1 closed-loop client (p50, p99) and 16 (actions/s)."""
    bench = Bench(policy=None, onnx_path=onnx_path, inputs={}, repeats=0, warmup=0, max_seconds=0.0, threads=[1])
    request, _ = act_request(np.zeros((1, obs_dim), np.float32), None, None, False)
    server, addr = omad_server(bench)
    with server:
        one = asyncio.run(closed_loop(addr, request, 1, seconds))
        sixteen = asyncio.run(closed_loop(addr, request, 16, seconds))
    return {
        "p50_ms": one["median_us"] / 1e3,
        "p99_ms": one["p99_us"] / 1e3,
        "actions_per_s_16": sixteen["actions_per_s"],
    }


def measure(runs: Path, ks: list[int], seeds: list[int], smoke: bool, reps: int) -> list[dict]:
    import torch

    torch.set_num_threads(1)
    rows = []
    for k in ks:
        curve = aggregate(
            {seed: read_metrics(job_dir(sweep_dir(runs, k), TASK.env, "omad", seed), VERDICT_MODE) for seed in seeds}
        )
        point, low, high = stats.iqm_ci({"k": curve.finals}, reps)["k"]
        shape = {key: QUICK[key] for key in ("actor_hidden", "critic_hidden", "batch_size")} if smoke else {}
        windows, cycles = (SMOKE["windows"], SMOKE["cycles"]) if smoke else (3, 5)
        rate = updates_per_second(TASK.env, windows, cycles, denoising_steps=k, **shape)
        served = []
        with tempfile.TemporaryDirectory() as tmp:
            for seed in seeds:
                run = job_dir(sweep_dir(runs, k), TASK.env, "omad", seed)
                export = Path(tmp) / f"seed-{seed}"
                export_run(run, export)  # checks ONNX Runtime against torch on the way
                manifest = json.loads((export / "manifest.json").read_text())
                agent = manifest["agents"][0]
                seconds = SMOKE["serve_seconds"] if smoke else SERVE_SECONDS
                served.append(serve_latency(export / agent["file"], agent["obs_dim"], seconds))
        rows.append(
            {
                "K": k,
                "seeds": curve.seeds,
                "budget": curve.budget,
                "final_returns": curve.finals.tolist(),
                "final_iqm": [point, low, high],
                "updates_per_s": rate,
                **{key: statistics.median(s[key] for s in served) for key in ("p50_ms", "p99_ms", "actions_per_s_16")},
                "served_runs": served,
            }
        )
        print(json.dumps({key: value for key, value in rows[-1].items() if key != "served_runs"}), flush=True)
    return rows


def write(out: Path, rows: list[dict], meta: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "k_cost.json").write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    lines = [
        "# The cost of K (bench.k_cost)",
        "",
        (
            f"OMAD on {TASK.env}, {rows[0]['budget']} env steps per run, protocol {meta['protocol']}. "
            f"Final return ({meta['mode']} evaluation, as the study's verdict): IQM over seeds [95% stratified-bootstrap CI]. Updates/s: the learner alone at one "
            "torch thread (synthetic batches). Served: `omad serve` of agent 0's exported graph (micro-batching "
            "on, 1 ONNX Runtime thread), closed-loop streaming clients on loopback, median over the K's runs."
        ),
        "",
        (
            "| K | seeds | final return IQM [95% CI] | training updates/s | served p50 / p99 at 1 client (ms) | "
            "actions/s at 16 clients |"
        ),
        "|---:|---:|---|---:|---|---:|",
    ]
    for r in rows:
        point, low, high = r["final_iqm"]
        lines.append(
            f"| {r['K']} | {len(r['seeds'])} | {point:.1f} [{low:.1f}, {high:.1f}] | {r['updates_per_s']:.1f} | "
            f"{r['p50_ms']:.2f} / {r['p99_ms']:.2f} | {r['actions_per_s_16']:.0f} |"
        )
    lines += ["", f"Measured in {meta['measure_seconds']:.0f} s (training not included); command: `{meta['command']}`."]
    (out / "k_cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=None, help=f"env steps per run (default {STEPS})")
    parser.add_argument("--workers", type=int, default=2, help="local worker processes")
    parser.add_argument("--ray-address", default=None, help="train as Ray tasks instead")
    parser.add_argument("--out", type=Path, default=RESULTS / "k_cost", help="default bench/results/k_cost")
    parser.add_argument(
        "--runs-dir", type=Path, default=Path("runs/k_cost"), help="where the runs train (default runs/k_cost)"
    )
    parser.add_argument("--reps", type=int, default=stats.REPS, help="bootstrap resamples of the CI")
    parser.add_argument(
        "--smoke", action="store_true", help="K = 1, 2 at one seed, tiny networks and budgets: checks the script"
    )
    args = parser.parse_args()
    if args.smoke:
        ks, seeds, steps, reps = SMOKE["ks"], SMOKE["seeds"], SMOKE["steps"], SMOKE["reps"]
    else:
        ks, seeds, steps, reps = args.ks, args.seeds, args.steps or STEPS, args.reps
    train(args.runs_dir, ks, seeds, steps, args.smoke, args.workers, args.ray_address)
    t0 = time.perf_counter()
    rows = measure(args.runs_dir, ks, seeds, args.smoke, reps)
    meta = {
        "env": TASK.env,
        "protocol": protocol(args.smoke),
        "mode": VERDICT_MODE,
        "runs_dir": repo_relative(args.runs_dir),
        "measure_seconds": time.perf_counter() - t0,
        "command": command("bench.k_cost", sys.argv[1:]),
    }
    write(args.out, rows, meta)


if __name__ == "__main__":
    main()
