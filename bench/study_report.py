"""The sample-efficiency study's report (`python -m bench.sample_efficiency --report-only`): per task, the
arms' runs in one report (the control arm's algos labelled "(control)"), the verdict read in the
deterministic mode with the stochastic one beside it, IQMs at the study's milestones, and each arm's
job-hours; then study.md and study.json over every task."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from omad.experiments.report import collect, write_report

if TYPE_CHECKING:
    from bench.sample_efficiency import Task

MILESTONES = (15_000, 30_000, 50_000)  # env steps the study gives every IQM at, where a curve has them
VERDICT_MODE = "deterministic"  # as HARL evaluates; the stochastic mode stands beside it


def arm_label(arm: str) -> str:
    """How an arm's algos are named in the combined report: the presets arm by the algo alone."""
    return "{algo}" if arm == "presets" else f"{{algo}} ({arm})"


def task_table(task_dir: Path, arms: list[str]) -> dict:
    """Every arm's collected runs in one table {env: {label: entry}} (arms without a sweep yet skipped)."""
    table: dict[str, dict] = {}
    for arm in arms:
        if (task_dir / arm / "sweep.json").is_file():
            for env, algos in collect(task_dir / arm, arm_label(arm)).items():
                table.setdefault(env, {}).update(algos)
    return table


def write_study_report(root: Path, tasks: dict[str, Task], reps: int) -> dict:
    from bench.sample_efficiency import job_hours

    study: dict = {}
    for name, task in tasks.items():
        task_dir = root / name
        table = task_table(task_dir, list(task.arms))
        if not table:
            continue
        longest = max(max(arm.budgets.values()) for arm in task.arms.values())
        at = tuple(step for step in MILESTONES if step <= longest)
        report = write_report(table, task_dir / "report", name, reps, VERDICT_MODE, at)
        study[name] = {
            "env": task.env,
            "protocol": task.shared,
            "arms": {
                arm_name: {
                    "budgets": arm.budgets,
                    "overrides": arm.overrides,
                    "max_seeds": arm.max_seeds,
                    "job_hours": round(job_hours(task_dir / arm_name), 3),
                }
                for arm_name, arm in task.arms.items()
                if (task_dir / arm_name).is_dir()
            },
            "report": f"{name}/report/report.md",
            "finals": {
                mode: {
                    algo: {key: info.get(key) for key in ("final_return_iqm", "seeds", "jobs", "budget")}
                    for algo, info in part["envs"][task.env]["algos"].items()
                }
                for mode, part in ((report["mode"], report), (report["other_mode"]["mode"], report["other_mode"]))
                if task.env in part["envs"]
            },
        }
    (root / "study.json").write_text(json.dumps(study, indent=2) + "\n")
    lines = ["## Runs", ""]
    for name, entry in study.items():
        for arm, info in entry["arms"].items():
            budgets = ", ".join(f"{algo} {steps}" for algo, steps in info["budgets"].items())
            settings = f"; settings {info['overrides']}" if info["overrides"] else ""
            lines.append(
                f"- {name}, {arm} arm: {entry['env']}, budgets (env steps) {budgets}{settings}; "
                f"{info['job_hours']:.2f} job-hours trained so far"
            )
        lines.append(f"- {name} protocol: {entry['protocol']}")
    for name in study:  # each task's report, its headings two levels down, its images linked from here
        lines += [""]
        for line in (root / name / "report" / "report.md").read_text().splitlines():
            line = f"##{line}" if line.startswith("#") else line
            lines.append(line.replace("](", f"]({name}/report/") if line.startswith("![") else line)
    (root / "study.md").write_text("\n".join(lines) + "\n")
    return study


HEADLINE_START, HEADLINE_END = "<!-- headline table: start -->", "<!-- headline table: end -->"


def headline_table(study: dict, commit: str) -> str:
    """The README's results table: each algorithm's final return per task, both modes, from study.json."""
    lines = [
        (
            f"Final evaluation return, IQM over finished seeds [95% CI], at each run's budget (code at commit "
            f"`{commit}`; the full report, its protocol and command: docs/results/sample-efficiency.md)."
        ),
        "",
        f"| task | algo | finished seeds | budget (env steps) | {VERDICT_MODE} | stochastic |",
        "|---|---|---:|---:|---|---|",
    ]
    for name, entry in study.items():
        verdict, beside = entry["finals"][VERDICT_MODE], entry["finals"].get("stochastic", {})
        for algo, info in verdict.items():
            other = beside.get(algo, {}).get("final_return_iqm")
            cells = [
                "{:.0f} [{:.0f}, {:.0f}]".format(*iqm) if iqm else "in progress"
                for iqm in (info["final_return_iqm"], other)
            ]
            seeds = f"{len(info['seeds'] or [])} of {info['jobs']}"
            lines.append(f"| {name} | {algo} | {seeds} | {info['budget'] or '-'} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def write_headline(readme: Path, study: dict, commit: str) -> None:
    """Replace the README's block between the headline markers with the current table."""
    text = readme.read_text()
    head, _, rest = text.partition(HEADLINE_START)
    _, _, tail = rest.partition(HEADLINE_END)
    readme.write_text(f"{head}{HEADLINE_START}\n{headline_table(study, commit)}\n{HEADLINE_END}{tail}")
