"""Sample efficiency (BENCHMARKS.md, "Sample efficiency"): OMAD vs HASAC vs HATD3 vs the matched
OMAD-Gaussian ablation, on HalfCheetah 2x3 and Cooperative Navigation N = 3.

Every algorithm runs at its own defaults: OMAD's, the HARL presets for HASAC and HATD3 (README,
"Baselines"), OMAD's for OMAD-Gaussian at OMAD's entropy level. The protocol is shared within a task:
the budget, the warm-up, the evaluation schedule and episode count, and one update per env step.
Each task is one `omad sweep` (resumable: re-running the same command continues it, and a larger
budget extends finished runs) followed by `omad report` (IQM with 95% CIs, P(OMAD > B), performance
profiles, per-seed curves, sample-efficiency ratios with intervals). Results go to --out (default
bench/results/study/): one sweep dir per task with its report/, and a combined study.md / .json.

    .venv/bin/python bench/sample_efficiency.py [--seeds 0 1 2 3 4] [--workers 2] [--ray-address ADDR]
        [--tasks ...] [--steps TASK=N ...] [--out DIR] [--quick] [--plan HOURS]

--plan HOURS times one update of every (task, algo) at one torch thread (as a sweep job runs) and
prints the budget per task that fits HOURS of wall time with the given workers, next to the estimated
wall time of the current budgets; nothing is trained.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from omad_train.config import ALGOS
from omad_train.report import make_report
from omad_train.stats import REPS
from omad_train.sweep import run_sweep

RESULTS = Path(__file__).parent / "results"


@dataclass(frozen=True)
class Task:
    env: str
    steps: int  # env steps per run (the budget): placeholders until the faster trainer sets them (--plan)
    shared: dict  # the protocol every algorithm shares on this task


# The warm-up (uniform-random steps) is one value for every algorithm: DIME's 5k on HalfCheetah
# (HARL's 10k would be a fifth of a 50k budget), 2.5k (100 episodes) on Cooperative Navigation.
# 20 evaluations per run; 10 episodes of 1000 steps on HalfCheetah, 40 of 25 steps on Coop Nav (HARL's 40).
TASKS = {
    "halfcheetah_2x3": Task(
        "mamujoco:HalfCheetah-2x3",
        50_000,
        {"learning_starts": 5_000, "eval_every": 2_500, "eval_episodes": 10, "checkpoint_every": 5_000},
    ),
    "coop_nav_n3": Task(
        "mpe:simple_spread_v3",
        25_000,
        {"learning_starts": 2_500, "eval_every": 1_250, "eval_episodes": 40, "checkpoint_every": 5_000},
    ),
}
QUICK = {
    "learning_starts": 300,
    "eval_every": 300,
    "eval_episodes": 2,
    "checkpoint_every": 300,
    "actor_hidden": [32, 32],
    "critic_hidden": [32, 32],
    "batch_size": 64,
}
QUICK_STEPS = 600


def task_config(task: Task, quick: bool) -> dict:
    return {**task.shared, **(QUICK if quick else {})}


def parse_steps(items: list[str]) -> dict[str, int]:
    out = {}
    for item in items:
        name, _, value = item.partition("=")
        if name not in TASKS or not value.isdigit():
            raise SystemExit(f"--steps expects TASK=N with TASK in {', '.join(TASKS)}, got {item!r}")
        out[name] = int(value)
    return out


def job_hours(task_dir: Path) -> float:
    """The training time of every run of a task, summed, from the runs' evaluation records (the time
    of the kept work: what a killed run did after its last checkpoint is not counted). Each process's
    clocks start at 0, so a resumed run's clocks drop: that starts a new segment."""
    total = 0.0
    for metrics in task_dir.glob("*/*/seed-*/metrics.jsonl"):
        last: dict[str, float] = {}
        for line in filter(str.strip, metrics.read_text().splitlines()):
            now = {k: v for k, v in json.loads(line).items() if k.startswith("seconds_")}
            if any(v < last.get(k, 0.0) for k, v in now.items()):
                total += sum(last.values())
            last = now
        total += sum(last.values())
    return total / 3600


def plan(tasks: list[str], steps: dict[str, int], seeds: int, workers: int, hours: float) -> None:
    """Learner speed of every (task, algo) at one thread -> the budget that fits `hours`."""
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from training import updates_per_second

    torch.set_num_threads(1)
    for name in tasks:
        task = TASKS[name]
        seconds_per_step = 0.0  # summed over algos: one env step of every algo, at one update per step
        for algo in ALGOS:
            rate = updates_per_second(task.env, 3, 5, algo=algo)
            seconds_per_step += 1.0 / rate
            print(f"{name} {algo}: {rate:.1f} updates/s at 1 thread", flush=True)
        per_job_hours = steps[name] * seconds_per_step * seeds / workers / 3600
        fit = int(hours * 3600 * workers / (seeds * seconds_per_step))
        print(
            f"{name}: {steps[name]} steps x {seeds} seeds x {len(ALGOS)} algos on {workers} workers ~ "
            f"{per_job_hours:.2f} h of updates; {hours:g} h alone would fit {fit} steps per run"
        )


# What makes two invocations' entries one study: their wall times add up only then.
SAME_STUDY = ("env", "budget", "seeds", "protocol")


def merge_study(earlier: dict, now: dict) -> dict:
    """study.json after an invocation: the tasks it ran (`now`) replace the earlier file's, whose other
    tasks stay. A task's `wall_seconds` adds this invocation's sweep time to the earlier invocations' of
    the same study (SAME_STUDY), so a study run in sittings, or re-run only to rewrite its reports, keeps
    its wall time; a changed budget, seed list or protocol starts the count again."""
    merged = dict(earlier)
    for name, entry in now.items():
        before = earlier.get(name, {})
        kept = before.get("wall_seconds", 0.0) if all(before.get(k) == entry[k] for k in SAME_STUDY) else 0.0
        merged[name] = entry | {"wall_seconds": kept + entry["wall_seconds_this_invocation"]}
    return merged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--workers", type=int, default=2, help="local worker processes")
    parser.add_argument("--ray-address", default=None, help="run every job as a Ray task instead (see README, Ray)")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--steps", nargs="+", default=[], metavar="TASK=N", help="a task's budget (env steps per run)")
    parser.add_argument("--algos", nargs="+", default=list(ALGOS), choices=ALGOS)
    parser.add_argument("--out", type=Path, default=None, help="results dir (default bench/results/study[_quick])")
    parser.add_argument(
        "--reps", type=int, default=None, help="bootstrap resamples of the report (default omad report's)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny networks and budgets: checks the pipeline, measures nothing"
    )
    parser.add_argument(
        "--plan", type=float, default=None, metavar="HOURS", help="time the updates and size the budgets; train nothing"
    )
    args = parser.parse_args()
    steps = {name: task.steps for name, task in TASKS.items()} | parse_steps(args.steps)
    if args.plan is not None:
        plan(args.tasks, steps, len(args.seeds), args.workers, args.plan)
        return

    root = args.out or RESULTS / ("study_quick" if args.quick else "study")
    now = {}
    for name in args.tasks:
        task = TASKS[name]
        budget = QUICK_STEPS if args.quick else steps[name]
        t0 = time.perf_counter()
        summary = run_sweep(
            root / name,
            [task.env],
            args.algos,
            args.seeds,
            budget,
            task_config(task, args.quick),
            local_workers=args.workers,
            ray_address=args.ray_address,
        )
        trained = time.perf_counter() - t0
        report = make_report(root / name, reps=args.reps or REPS)
        now[name] = {
            "env": task.env,
            "budget": budget,
            "seeds": args.seeds,
            "protocol": task_config(task, args.quick),
            "wall_seconds_this_invocation": trained,
            "job_hours": job_hours(root / name),
            "failed": summary["failed"],
            "report": f"{name}/report/report.md",
            "summary": report,
        }
    study_json = root / "study.json"
    combined = merge_study(json.loads(study_json.read_text()) if study_json.exists() else {}, now)
    study_json.write_text(json.dumps(combined, indent=2) + "\n")
    lines = ["# Sample-efficiency study (bench/sample_efficiency.py)", ""]
    for name, entry in combined.items():
        lines.append(
            f"- {name}: {entry['env']}, {entry['budget']} env steps, seeds {entry['seeds']}, protocol "
            f"{entry['protocol']}; its runs trained for {entry['job_hours']:.2f} job-hours in all, and its "
            f"invocations that finished took {entry['wall_seconds'] / 60:.1f} min of wall time (the last "
            f"{entry['wall_seconds_this_invocation'] / 60:.1f} min): {entry['report']}"
        )
    for name in combined:  # each task's report, its headings one level down, its images linked from here
        lines += ["", f"# {name}", ""]
        report_md = (root / name / "report" / "report.md").read_text()
        for line in report_md.splitlines():
            line = f"#{line}" if line.startswith("#") else line
            lines.append(line.replace("](", f"]({name}/report/") if line.startswith("![") else line)
    (root / "study.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
