"""Sample efficiency: OMAD vs HASAC vs HATD3 vs the matched
OMAD-Gaussian ablation, on HalfCheetah 2x3 and Cooperative Navigation N = 3.

Every algorithm runs at its own defaults: OMAD's, the HARL presets for HASAC and HATD3
(docs/guides/baselines.md), OMAD's for OMAD-Gaussian at OMAD's entropy level. The protocol is shared within a task:
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
import itertools
import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from omad.experiments.stats import REPS
from omad.experiments.sweep import default_cpus_per_job, plan_jobs, run_jobs, write_sweep_file
from omad.train.config import ALGOS

RESULTS = Path(__file__).parent / "results"


@dataclass(frozen=True)
class Arm:
    """One sweep dir of a task: each algo's budget (env steps per run) and the settings every algo of
    the arm shares on top of the task's protocol (an algo's own defaults and presets lie beneath)."""

    budgets: dict[str, int]
    overrides: dict = field(default_factory=dict)
    max_seeds: dict[str, int] = field(default_factory=dict)  # an algo listed here runs the first N seeds only


@dataclass(frozen=True)
class Task:
    env: str
    shared: dict  # the protocol every algorithm shares on this task
    arms: dict[str, Arm]


# The control arm runs the baselines at OMAD's shared settings instead of their presets, so the gap
# between the arms is what the presets cost at this study's update-to-data ratio.
CONTROL = {"n_step": 1, "batch_size": 256, "grad_clip": 1.0}

# The warm-up (uniform-random steps) is one value for every algorithm: DIME's 5k on HalfCheetah
# (HARL's 10k would be a fifth of a 50k budget), 2.5k (100 episodes) on Cooperative Navigation.
# Evaluations every 2.5k steps, 10 episodes of 1000 steps, on HalfCheetah; every 1.25k, 40 of 25 steps
# (HARL's 40), on Coop Nav. HASAC's presets arm stays at 15k on HalfCheetah: it is the most expensive
# algorithm per update; a larger budget here continues it.
TASKS = {
    "halfcheetah_2x3": Task(
        "mamujoco:HalfCheetah-2x3",
        {"learning_starts": 5_000, "eval_every": 2_500, "eval_episodes": 10, "checkpoint_every": 5_000},
        {
            # 5 seeds of every arm and algo exceed 10 job-hours at 2 cores (`--plan`): HATD3 and HASAC keep 3
            "presets": Arm(
                {"omad": 50_000, "omad-gaussian": 50_000, "hatd3": 50_000, "hasac": 15_000},
                max_seeds={"hatd3": 3, "hasac": 3},
            ),
            "control": Arm({"hasac": 15_000, "hatd3": 15_000}, CONTROL),
        },
    ),
    "coop_nav_n3": Task(
        "mpe:simple_spread_v3",
        {"learning_starts": 2_500, "eval_every": 1_250, "eval_episodes": 40, "checkpoint_every": 5_000},
        {
            "presets": Arm(dict.fromkeys(ALGOS, 10_000)),
            "control": Arm({"hasac": 10_000, "hatd3": 10_000}, CONTROL),
        },
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


def parse_steps(items: list[str]) -> dict[tuple[str, str, str], int]:
    """`--steps TASK:ARM:ALGO=N` -> {(task, arm, algo): N}: a budget other than the study's."""
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        parts = tuple(key.split(":"))
        if len(parts) != 3 or parts[0] not in TASKS or parts[1] not in TASKS[parts[0]].arms or not value.isdigit():
            raise SystemExit(
                f"--steps expects TASK:ARM:ALGO=N (e.g. halfcheetah_2x3:presets:hasac=50000), got {item!r}"
            )
        if parts[2] not in TASKS[parts[0]].arms[parts[1]].budgets:
            raise SystemExit(f"--steps: arm {parts[0]}:{parts[1]} has no algo {parts[2]!r}")
        out[parts] = int(value)
    return out


def budgets(name: str, arm: str, steps: dict, quick: bool) -> dict[str, int]:
    base = TASKS[name].arms[arm].budgets
    return {algo: QUICK_STEPS if quick else steps.get((name, arm, algo), n) for algo, n in base.items()}


def job_hours(task_dir: Path) -> float:
    """The training time of every run under a dir (a task, or one of its arms), summed, from the runs'
    evaluation records (the time of the kept work: what a killed run did after its last checkpoint is not
    counted). Each process's clocks start at 0, so a resumed run's clocks drop: that starts a new segment."""
    total = 0.0
    for metrics in sorted(task_dir.rglob("seed-*/metrics.jsonl")):
        last: dict[str, float] = {}
        for line in filter(str.strip, metrics.read_text().splitlines()):
            now = {k: v for k, v in json.loads(line).items() if k.startswith("seconds_")}
            if any(v < last.get(k, 0.0) for k, v in now.items()):
                total += sum(last.values())
            last = now
        total += sum(last.values())
    return total / 3600


def run_costs(arm_dir: Path) -> dict[str, list[list[tuple[float, float]]]]:
    """{algo: one list per run of a sweep dir: (updates per second of update time, seconds of everything
    else per env step) over each interval between two evaluations that made updates}: what a run's
    length costs, split into its updates and the rest (env steps, evaluations, checkpoints). The first
    record after a resume starts a new process's clocks, so no interval ends there."""
    costs: dict[str, list[list[tuple[float, float]]]] = {}
    for metrics in sorted(arm_dir.glob("*/*/seed-*/metrics.jsonl")):
        rows = [json.loads(line) for line in filter(str.strip, metrics.read_text().splitlines())]
        intervals = []
        for before, after in itertools.pairwise(rows):
            clocks = {k: after[k] - before.get(k, 0.0) for k in after if k.startswith("seconds_")}
            updates, steps = after.get("updates", 0) - before.get("updates", 0), after["step"] - before["step"]
            if any(v < 0 for v in clocks.values()) or updates <= 0 or clocks.get("seconds_update", 0.0) <= 0:
                continue
            other = sum(clocks.values()) - clocks["seconds_update"]
            intervals.append((updates / clocks["seconds_update"], other / steps))
        if intervals:
            costs.setdefault(metrics.parent.parent.name, []).append(intervals)
    return costs


def plan(tasks: list[str], steps: dict, seeds: int, workers: int, hours: float) -> None:
    """Learner speed of every (task, arm, algo) at one thread -> the job-hours of the study's updates."""
    import torch

    from bench.training import updates_per_second

    torch.set_num_threads(1)
    total = 0.0
    for name in tasks:
        task = TASKS[name]
        for arm_name, arm in task.arms.items():
            for algo, budget in budgets(name, arm_name, steps, False).items():
                rate = updates_per_second(task.env, 3, 5, algo=algo, **arm.overrides)
                updates = budget - task.shared["learning_starts"]
                job_h = updates / rate / 3600
                total += job_h * seeds
                print(f"{name} {arm_name} {algo}: {rate:.1f} updates/s at 1 thread, {job_h:.2f} h per seed", flush=True)
    print(
        f"{seeds} seeds: {total:.1f} job-hours of updates, {total / workers:.1f} h on {workers} workers "
        f"(plan: {hours:g} h)"
    )


def sweep_jobs(root: Path, name: str, steps: dict, seeds: list[int], quick: bool, cpus: int, backend: str) -> list:
    """Every job of a task's arms, recorded in each arm's sweep.json, in the order `job_order` gives."""
    task = TASKS[name]
    per_arm = {}
    for arm_name, arm in task.arms.items():
        out = root / name / arm_name
        groups: dict[tuple[int, int], list[str]] = {}  # (budget, seed count) -> algos
        for algo, budget in budgets(name, arm_name, steps, quick).items():
            groups.setdefault((budget, arm.max_seeds.get(algo, len(seeds))), []).append(algo)
        jobs = []
        for (budget, n_seeds), algos in groups.items():
            base = {"progress": False, "torch_threads": cpus, **task_config(task, quick), **arm.overrides}
            base["total_steps"] = budget
            planned = plan_jobs(out, [task.env], algos, seeds[:n_seeds], base)
            write_sweep_file(out, planned, base, backend)
            jobs += planned
        per_arm[arm_name] = jobs
    return job_order(task, per_arm, seeds)


def job_order(task: Task, per_arm: dict[str, list], seeds: list[int]) -> list:
    """First the seeds every arm and algo runs, seed-major (a study cut off there holds them all at the same
    seeds), each seed in the arms' algo order; then the other jobs, shortest budget first, seed-major
    within a budget (the cheap runs finish before the long ones take the workers)."""
    order = {(arm, algo): i for i, (arm, algo) in enumerate((a, g) for a in task.arms for g in task.arms[a].budgets)}
    common = min(arm.max_seeds.get(algo, len(seeds)) for arm in task.arms.values() for algo in arm.budgets)
    first = set(seeds[:common])

    def key(arm_job: tuple) -> tuple:
        arm, job = arm_job
        rank = order[arm, job.algo]
        return (0, 0, job.seed, rank) if job.seed in first else (1, job.config["total_steps"], job.seed, rank)

    everything = [(arm, job) for arm, jobs in per_arm.items() for job in jobs]
    return [job for _, job in sorted(everything, key=key)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--workers", type=int, default=2, help="local worker processes")
    parser.add_argument("--ray-address", default=None, help="run every job as a Ray task instead (docs: Ray clusters)")
    parser.add_argument("--tasks", nargs="+", default=["halfcheetah_2x3"], choices=list(TASKS))
    parser.add_argument(
        "--steps", nargs="+", default=[], metavar="TASK:ARM:ALGO=N", help="a budget other than the study's"
    )
    parser.add_argument("--out", type=Path, default=None, help="results dir (default bench/results/study[_quick])")
    parser.add_argument(
        "--reps", type=int, default=None, help="bootstrap resamples of the report (default omad report's)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny networks and budgets: checks the pipeline, measures nothing"
    )
    parser.add_argument(
        "--plan", type=float, default=None, metavar="HOURS", help="time the updates and size the study; train nothing"
    )
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--train-only", action="store_true", help="train (or continue) the runs, write no report")
    what.add_argument("--report-only", action="store_true", help="write the reports from the runs there are")
    args = parser.parse_args()
    steps = parse_steps(args.steps)
    if args.plan is not None:
        plan(args.tasks, steps, len(args.seeds), args.workers, args.plan)
        return

    root = (args.out or RESULTS / ("study_quick" if args.quick else "study")).resolve()
    cpus = default_cpus_per_job(args.workers, args.ray_address)
    backend = f"ray ({args.ray_address})" if args.ray_address else f"local ({args.workers} workers)"
    if not args.report_only:
        record_code_commit(root)
        jobs = [
            job for name in args.tasks for job in sweep_jobs(root, name, steps, args.seeds, args.quick, cpus, backend)
        ]
        run_jobs(jobs, args.workers, args.ray_address, cpus, log=lambda line: print(line, flush=True))
    if not args.train_only:
        write_study(root, args.tasks, args.reps or REPS)


CODE_COMMIT_FILE = "code_commit.txt"  # the commit the study's runs were trained with


def record_code_commit(root: Path) -> None:
    """Write the training code's commit into the study dir (kept when not in a git checkout)."""
    result = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, check=False
    )
    if result.returncode == 0:
        root.mkdir(parents=True, exist_ok=True)
        (root / CODE_COMMIT_FILE).write_text(result.stdout.strip() + "\n")


def write_study(root: Path, tasks: list[str], reps: int) -> None:
    from bench.study_report import write_headline, write_study_report

    study = write_study_report(root, {name: TASKS[name] for name in tasks}, reps)
    commit_file = root / CODE_COMMIT_FILE
    commit = commit_file.read_text().strip()[:12] if commit_file.is_file() else "unknown"
    if root == RESULTS / "study":  # the committed study: its table heads the README
        write_headline(Path(__file__).parent.parent / "README.md", study, commit)


if __name__ == "__main__":
    main()
