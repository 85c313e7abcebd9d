"""End-to-end split of `omad train` (docs/results/performance.md).

Runs what `omad train --env mamujoco:HalfCheetah-2x3 --total-steps 20000` runs (the same Trainer and
config defaults) and splits its wall time into environment stepping, updates, evaluation,
checkpointing and the rest of the loop. The split is taken by wrapping the trainer's pieces with
timers from the outside, so the same script measures any version of the trainer (run it with
PYTHONPATH pointing at another checkout to measure that checkout's code):
  * env stepping: acting (the policy's forward or the uniform warm-up draw), `envs.step` and the
    replay writes;
  * updates: replay sampling and `algo.update` (compilation included, on its first calls);
  * evaluation: `run_evaluation`;
  * checkpointing: `save`.
With --project-to T, the per-unit costs (seconds per env step, per update, per evaluation, per
checkpoint) of the measured run are also scaled to a run of T steps, for a machine too loaded to run
the full budget in the time at hand.
Writes train_split.json to --out (default bench/results) and prints a Markdown table.

    .venv/bin/python -m bench.train_split [--total-steps 20000] [--set compile=false] [--out DIR]
    .venv/bin/python -m bench.train_split --smoke --out DIR    # a tiny short run: checks the script
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from bench.common import RESULTS, command
from omad.train.config import build_config
from omad.train.trainer import Trainer

# --smoke: a few hundred steps of a tiny OMAD on Cooperative Navigation, one evaluation and checkpoint
SMOKE_ENV, SMOKE_STEPS = "mpe:simple_spread_v3", 300
SMOKE = dict(
    learning_starts=100,
    batch_size=32,
    eval_every=300,
    eval_episodes=2,
    checkpoint_every=300,
    denoising_steps=2,
    actor_hidden=[16],
    critic_hidden=[16],
    compile=False,
)
PARTS = {  # part -> the trainer attributes (object path, method) whose calls it sums
    "env stepping": [("algo", "act"), ("", "random_actions"), ("envs", "step"), ("buffer", "add")],
    "updates": [("buffer", "sample"), ("algo", "update")],
    "evaluation": [("", "run_evaluation")],
    "checkpointing": [("", "save")],
}


def timed(seconds: dict, part: str, fn):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            seconds[part] += time.perf_counter() - start

    return wrapper


def crossings(every: int, total: int) -> int:
    """How many evaluations / checkpoints a run of `total` steps makes (the trainer's rule, num_envs = 1)."""
    return len(set(range(every, total + 1, every)) | {total})


def unit_counts(cfg, total_steps: int) -> dict[str, float]:
    return {
        "env stepping": total_steps,
        # an update after every env step from learning_starts on, once the buffer holds a batch (num_envs = 1)
        "updates": max(0, total_steps - max(cfg.learning_starts, cfg.batch_size) + 1) * cfg.updates_per_step,
        "evaluation": crossings(cfg.eval_every, total_steps),
        "checkpointing": crossings(cfg.checkpoint_every, total_steps),
        "rest of the loop (setup, logging, ...)": total_steps,
    }


def run_split(env: str, total_steps: int, overrides: dict, project_to: int | None = None) -> dict:
    cfg = build_config({"env": env, "total_steps": total_steps, "progress": False, **overrides})
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        trainer = Trainer(cfg, Path(out))
        seconds = dict.fromkeys(PARTS, 0.0)
        for part, attrs in PARTS.items():
            for path, name in attrs:
                owner = getattr(trainer, path) if path else trainer
                setattr(owner, name, timed(seconds, part, getattr(owner, name)))
        record = trainer.train()
        total = time.perf_counter() - start
    seconds["rest of the loop (setup, logging, ...)"] = total - sum(seconds.values())
    projected = None
    if project_to:
        measured, target = unit_counts(cfg, total_steps), unit_counts(cfg, project_to)
        projected = {k: v / measured[k] * target[k] if measured[k] else 0.0 for k, v in seconds.items()}
    return {
        "projected_to_steps": project_to,
        "projected_seconds": projected,
        "run": f"omad train --env {env} --total-steps {total_steps}"
        + "".join(f" --{k.replace('_', '-')} {v}" for k, v in overrides.items()),
        "command": command("bench.train_split", sys.argv[1:]),
        "total_s": total,
        "seconds": seconds,
        "fractions": {k: v / total for k, v in seconds.items()},
        "updates": trainer.algo.num_updates,
        "eval_return_mean": record.get("eval_return_mean"),
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_avg_1min_at_end": os.getloadavg()[0],
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="mamujoco:HalfCheetah-2x3")
    parser.add_argument("--total-steps", type=int, default=20_000)
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for train_split.json")
    parser.add_argument("--smoke", action="store_true", help="a tiny run of 300 steps: checks the script")
    parser.add_argument("--project-to", type=int, default=None, metavar="T", help="also scale the split to T steps")
    parser.add_argument(
        "--set", action="append", default=[], metavar="FIELD=VALUE", help="config override (YAML value)"
    )
    args = parser.parse_args()
    overrides = {k.replace("-", "_"): yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    env, steps = (SMOKE_ENV, SMOKE_STEPS) if args.smoke else (args.env, args.total_steps)
    result = run_split(env, steps, {**(SMOKE if args.smoke else {}), **overrides}, args.project_to)
    lines = [
        f"`{result['run']}`: {result['total_s']:.0f} s, {result['updates']} updates",
        "",
        "| part | seconds | share |",
        "|---|---|---|",
    ]
    lines += [f"| {k} | {v:.1f} | {result['fractions'][k]:.0%} |" for k, v in result["seconds"].items()]
    if result["projected_seconds"]:
        proj = result["projected_seconds"]
        total = sum(proj.values())
        lines += [
            "",
            f"projected to {args.project_to} steps: {total:.0f} s",
            "",
            "| part | seconds | share |",
            "|---|---|---|",
        ]
        lines += [f"| {k} | {v:.1f} | {v / total:.0%} |" for k, v in proj.items()]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train_split.json").write_text(json.dumps(result, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
