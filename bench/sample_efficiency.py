"""Sample efficiency (BENCHMARKS.md, "Sample efficiency"): OMAD vs HASAC vs HATD3 vs OMAD-Gaussian.

The CPU-sized study: Cooperative Navigation N=3 and HalfCheetah 2x3, every algorithm at its own
defaults, 3 seeds. Each task is one `omad sweep` (resumable: re-running the command continues it)
followed by `omad report`, which gives the curves, the final-return table and, per baseline, the
steps OMAD needs to reach the baseline's final return. Results: bench/results/sample_efficiency/
(one sweep dir per task, its report/ inside) and a combined sample_efficiency.md / .json.

    .venv/bin/python bench/sample_efficiency.py [--workers 2] [--ray-address ADDR] [--tasks ...] [--total-steps N] [--quick]

On this 2-core machine the full study takes about two hours; --quick is a smoke run of minutes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from omad_train.config import ALGOS
from omad_train.report import make_report
from omad_train.sweep import run_sweep

RESULTS = Path(__file__).parent / "results"
# task -> (env id, env steps per run, shared config); evaluation on fresh seeds. The budgets are sized so
# that the whole study (24 runs) takes about two hours with 2 workers on a 2-core machine.
TASKS = {
    "halfcheetah_2x3": ("mamujoco:HalfCheetah-2x3", 20_000, {"eval_every": 2000, "eval_episodes": 3}),
    "coop_nav_n3": ("mpe:simple_spread_v3", 10_000, {"eval_every": 1000, "eval_episodes": 10, "learning_starts": 2000}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=2, help="local worker processes")
    parser.add_argument("--ray-address", default=None, help="run every job as a Ray task instead")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--total-steps", type=int, default=None, help="override every task's budget (a reduced study)")
    parser.add_argument("--out", type=Path, default=None, help="results dir (default bench/results/sample_efficiency[_quick])")
    parser.add_argument("--quick", action="store_true", help="tiny budgets: checks the pipeline, measures nothing")
    args = parser.parse_args()

    root = args.out or RESULTS / ("sample_efficiency_quick" if args.quick else "sample_efficiency")
    combined = {}
    for task in args.tasks:
        env_id, steps, base = TASKS[task]
        base = dict(base)
        steps = args.total_steps or steps
        if args.quick:
            steps, base = 1500, {**base, "eval_every": 500, "eval_episodes": 2, "learning_starts": 500}
        run_sweep(root / task, [env_id], list(ALGOS), args.seeds, steps, base,
                  local_workers=args.workers, ray_address=args.ray_address)
        report = make_report(root / task)
        combined[task] = {"env": env_id, "budget": steps, "seeds": args.seeds, "report": f"{task}/report/report.md",
                          "summary": report}
    (root / "sample_efficiency.json").write_text(json.dumps(combined, indent=2) + "\n")
    lines = ["# Sample efficiency (bench/sample_efficiency.py)", ""]
    for task, entry in combined.items():
        lines.append(f"- {task}: {entry['env']}, {entry['budget']} env steps, seeds {entry['seeds']}: {entry['report']}")
    for task in combined:  # each task's report, its headings one level down
        report_md = (root / task / "report" / "report.md").read_text()
        lines += ["", f"# {task}", ""] + [f"#{line}" if line.startswith("#") else line for line in report_md.splitlines()]
    (root / "sample_efficiency.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
