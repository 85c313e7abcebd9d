"""`omad demo`: train -> export -> one gRPC server per agent -> closed-loop eval -> GIF -> report.

Every stage is the real product path: the servers are `omad serve --export-dir` (a launcher
process with one server process per agent), and the evaluation talks to them over gRPC.
"""

from __future__ import annotations

import argparse
import itertools
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from omad.core.rundir import RunDir
from omad.train.config import build_config

# HalfCheetah 2x3: two agents (back and front leg) must coordinate to run forward. At 15k steps OMAD
# runs forward (seed 0: training eval 735 at 15k, 1360 at 20k; a random team scores about -270).
DEMO_ENV = "mamujoco:HalfCheetah-2x3"
# At most about 10 minutes of training on 2 idle cores (10k updates, torch.compile on: `compile: auto`),
# the full defaults otherwise (K = 8, 3x256 actors, C51 critic).
FULL: dict[str, Any] = dict(
    total_steps=15_000, learning_starts=5_000, eval_every=5_000, eval_episodes=3, checkpoint_every=5_000
)
# ~1 minute: a smoke test of every stage, with tiny networks and short episodes.
QUICK: dict[str, Any] = dict(
    total_steps=1_200,
    learning_starts=400,
    eval_every=1_200,
    eval_episodes=2,
    checkpoint_every=1_200,
    batch_size=64,
    denoising_steps=4,
    actor_hidden=[64, 64],
    critic_hidden=[64, 64],
    num_atoms=51,
)
# The quick demo's shorter episodes, per env family (other envs run as they are).
QUICK_ENV_OPTIONS: dict[str, dict[str, Any]] = {"mamujoco": {"max_episode_steps": 200}}


def start_servers(export_dir: Path, count: int, timeout_s: float = 60.0) -> tuple[subprocess.Popen, list[str]]:
    """`omad serve --export-dir`, on free ports; returns the launcher and the agents' addresses once SERVING."""
    from omad.serve.client import wait_until_serving

    launcher = subprocess.Popen(
        [sys.executable, "-m", "omad", "serve", "--export-dir", str(export_dir), "--base-port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    addrs = []
    try:
        for _ in range(count):  # the launcher prints "<agent> <host:port>" per server it starts
            line = launcher.stdout.readline() if launcher.stdout else ""
            if not line:
                raise RuntimeError(f"the server launcher exited early (code {launcher.wait()})")
            addrs.append(line.split()[1])
        for addr in addrs:
            wait_until_serving(addr, timeout_s)
    except BaseException:
        stop_servers(launcher)
        raise
    return launcher, addrs


def stop_servers(launcher: subprocess.Popen, timeout_s: float = 30.0) -> int:
    if launcher.poll() is None:
        launcher.send_signal(signal.SIGTERM)
        try:
            launcher.wait(timeout_s)
        except subprocess.TimeoutExpired:
            launcher.kill()
    return launcher.wait()


def run_demo(
    out: Path,
    quick: bool = False,
    env: str = DEMO_ENV,
    seed: int = 0,
    total_steps: int | None = None,
    episodes: int = 3,
) -> dict:
    from omad.core.rollout import random_baseline
    from omad.evaluation import format_report, grpc_source, run_eval
    from omad.export.onnx import export_run
    from omad.train.trainer import train

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    from omad.core.envs import can_record, env_family

    settings = dict(QUICK if quick else FULL)
    if quick and env_family(env) in QUICK_ENV_OPTIONS:
        settings["env_options"] = QUICK_ENV_OPTIONS[env_family(env)]
    options = settings.get("env_options")
    cfg = build_config(settings, env=env, seed=seed, total_steps=total_steps)
    recording = out / "episode.gif" if can_record(env, options) else None
    timings = {}

    def stage(name):
        print(f"\n== {name} ==", flush=True)
        timings[name] = time.perf_counter()

    stage("train")
    train(cfg, out / "run", overwrite=True)
    stage("export")
    export_run(out / "run", out / "export", overwrite=True)
    stage("serve")
    launcher, addrs = start_servers(
        out / "export", count=len(json.loads(RunDir(out / "run").spec.read_text())["agents"])
    )
    try:
        for addr in addrs:
            print(f"  serving at {addr}")
        stage("closed-loop evaluation over gRPC")
        served = run_eval(env, grpc_source(addrs), episodes, seed + 1, record=recording, options=options)
    finally:
        stage("stop servers")
        stopped = stop_servers(launcher)
    random = random_baseline(env, episodes, seed + 1, options)
    timings["end"] = time.perf_counter()

    names = list(timings)
    report: dict[str, Any] = {
        "env": env,
        "mode": "quick" if quick else "full",
        "train_steps": cfg.total_steps,
        "served": served,
        "random_return_mean": random.mean,
        "random_return_std": random.std,
        "servers_exit_code": stopped,
        "stage_seconds": {a: timings[b] - timings[a] for a, b in itertools.pairwise(names)},
        "artifacts": {
            "run_dir": str(out / "run"),
            "curves": str(RunDir(out / "run").curves),
            "export_dir": str(out / "export"),
            **({"recording": str(recording)} if recording else {}),
            "report": str(out / "report.json"),
        },
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print("\n== report ==")
    print(format_report(served))
    gain = served["return_mean"] - random.mean
    print(f"random      {random.mean:10.2f} +- {random.std:.2f}   (trained - random: {gain:+.2f})")
    for stage_name, seconds in report["stage_seconds"].items():
        print(f"  {stage_name:<34}{seconds:8.1f} s")
    for name, path in report["artifacts"].items():
        print(f"  {name:<12}{path}")
    return report


def configure_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="a ~1 minute smoke test of every stage")
    p.add_argument("--out", default="runs/demo", help="where the run, export, GIF and report go")
    p.add_argument("--env", default=DEMO_ENV, help="any env id or module:factory (see `omad envs`)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--total-steps", type=int, default=None, help="override the training budget")
    p.add_argument("--episodes", type=int, default=3)
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    run_demo(Path(args.out), args.quick, args.env, args.seed, args.total_steps, args.episodes)
    return 0
