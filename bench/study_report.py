"""The sample-efficiency study's report (`python -m bench.sample_efficiency --report-only`): per task, the
arms' runs in one report (the control arm's algos labelled "(control)"), the verdict read in the
deterministic mode with the stochastic one beside it, IQMs at the study's milestones, and each arm's
job-hours; then study.md and study.json over every task."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from omad.experiments.report import collect, write_report

if TYPE_CHECKING:
    from bench.sample_efficiency import Task

MILESTONES = (15_000, 30_000, 50_000)  # env steps the study gives every IQM at, where a curve has them
VERDICT_MODE = "deterministic"  # as HARL evaluates; the stochastic mode stands beside it
ABLATION = "omad-gaussian"
PAPER_RATIOS = (2.5, 5.0)  # the sample-efficiency ratios the paper reports
PROJECTED_STEPS = 3_000_000  # the budget per run the cost projection is made for: the paper's, about 3M env steps
PROJECTED_SEEDS = 5
NAMES = {"omad": "OMAD", "omad-gaussian": "OMAD-Gaussian", "hasac": "HASAC", "hatd3": "HATD3"}
GPU_CHECK = Path(__file__).parent / "results" / "gpu_check" / "second-run.json"  # its OMAD update rates


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


def placement(probability: list[float]) -> str:
    """Where OMAD ends against B, from P(OMAD > B) and its 95% interval: above or below when the interval
    excludes 1/2; otherwise the runs cannot tell them apart."""
    _, low, high = probability
    return "ends above" if low > 0.5 else "ends below" if high < 0.5 else "is not distinguishable from"


def display(label: str) -> str:
    """An algo label as the prose names it: "hatd3 (control)" -> "HATD3 (control)"."""
    algo, _, rest = label.partition(" ")
    return " ".join(filter(None, (NAMES.get(algo, algo), rest)))


def _iqm(values: list[float]) -> str:
    return "{:.0f} [{:.0f}, {:.0f}]".format(*values)


def _p(values: list[float]) -> str:
    return "{:.2f} [{:.2f}, {:.2f}]".format(*values)


def _ratio(eff: dict) -> str:
    return f"{eff['ratio']:.2f}x" if eff["reached"] else f"not reached (< {eff['ratio_upper_bound']:.2f}x)"


def learned(eff: dict) -> bool:
    """Whether B's own curve first reaches its final return at its budget. Where it reached that return
    earlier (a curve that fell back, or one at its first evaluation's level), the ratio measures how
    soon OMAD passes a return B did not hold, not how much sooner OMAD learns."""
    return eff["baseline_step"] >= eff["baseline_budget"]


def verdict(report: dict, env: str, controls: dict[str, str], cost: list[dict]) -> list[str]:
    """The study's verdict in words, from the report of one env (verdict mode, the other beside it):
    OMAD against its ablation, what the baselines' presets cost (each baseline against its `controls`
    label, at the control's budget, which `report["at"]` must hold), the ratios against the paper's,
    and what a larger budget needs (`cost`, rows of `cost_rows`). Parts whose runs are missing are left
    out or say what is missing."""
    mode, other = report["mode"], report["other_mode"]["mode"]
    data, beside = report["envs"][env], report["other_mode"]["envs"].get(env, {})
    algos, efficiency = data["algos"], data["sample_efficiency"]
    lines = []
    if ABLATION in efficiency:
        omad, gauss = algos["omad"], algos[ABLATION]
        p = data["probability_of_improvement"][ABLATION]
        p_other = beside.get("probability_of_improvement", {}).get(ABLATION)
        steps = (
            f"{omad['budget']} env steps"
            if omad["budget"] == gauss["budget"]
            else f"{omad['budget']} and {gauss['budget']} env steps"
        )
        lines.append(
            f"- **OMAD against its Gaussian ablation.** At {steps} OMAD **{placement(p)}** OMAD-Gaussian "
            f"in the {mode} mode: IQM {_iqm(omad['final_return_iqm'])} against {_iqm(gauss['final_return_iqm'])} "
            f"({len(omad['seeds'])} and {len(gauss['seeds'])} seeds), P(OMAD > OMAD-Gaussian) = {_p(p)}."
            + (f" In the {other} mode it {placement(p_other)} it (P = {_p(p_other)})." if p_other else "")
        )
    at = report["at"].get(env, {})
    for base, control in controls.items():
        if control not in algos or "budget" not in algos[control]:
            continue
        step = str(algos[control]["budget"])
        presets, omad_there = at.get(base, {}).get(mode, {}).get(step), at.get("omad", {}).get(mode, {}).get(step)
        head = f"- **{display(base)}: its presets against OMAD's settings.** "
        if presets is None or omad_there is None:
            missing = display(base) + " at its presets" if presets is None else "OMAD"
            lines.append(f"{head}Left out: {missing} has no evaluation at {step} env steps in every seed.")
            continue
        matched = algos[control]["final_return_iqm"]
        lead, gain = omad_there[0] - presets[0], matched[0] - presets[0]
        if lead <= 0:
            reading = f"OMAD is not ahead of {display(base)} at its presets there"
        elif gain <= 0:
            reading = f"OMAD's settings do not raise {display(base)}'s IQM, so its presets do not explain OMAD's lead"
        elif matched[0] >= omad_there[0]:
            reading = (
                f"at OMAD's settings {display(base)} ends at or above OMAD: its presets explain all of OMAD's lead"
            )
        else:
            reading = f"OMAD's settings close {gain / lead:.0%} of OMAD's lead of {lead:.0f} in IQM"
        overlap = matched[1] <= presets[2] and presets[1] <= matched[2]
        lines.append(
            f"{head}At {step} env steps {display(base)} scores {_iqm(presets)} at its presets and {_iqm(matched)} at "
            f"OMAD's settings, where OMAD scores {_iqm(omad_there)}: {reading}"
            + (" (the two intervals overlap, so this is a point reading)." if overlap else ".")
        )
    if efficiency:
        paper = [b for b, eff in efficiency.items() if eff["reached"] and eff["ratio"] >= PAPER_RATIOS[0]]
        listing = "; ".join(
            f"{display(b)} {_ratio(eff)}"
            + (
                ""
                if learned(eff)
                else f" (B's own curve first reaches its final return at {eff['baseline_step']:.0f} of "
                f"{eff['baseline_budget']} steps)"
            )
            for b, eff in efficiency.items()
        )
        fair = [b for b in paper if b in {ABLATION, *controls.values()} and learned(efficiency[b])]
        unfair = [display(b) for b in paper if b not in fair]
        comparable = [b for b in efficiency if b in {ABLATION, *controls.values()}]
        if fair:
            reading = f"At or above {PAPER_RATIOS[0]:g}x against a baseline that learned to its budget at matched settings: {', '.join(map(display, fair))}."
        elif comparable:
            reading = (
                f"Against the ablation and the baselines at OMAD's settings, no ratio of a baseline that learned "
                f"to its budget is at or above {PAPER_RATIOS[0]:g}x"
            )
            reading += (
                f"; those that are ({', '.join(unfair)}) are against baselines at their presets or whose "
                "curves did not rise to their budget."
                if unfair
                else "."
            )
        else:
            reading = ""
        lines.append(
            f"- **The paper's {PAPER_RATIOS[0]:g}-{PAPER_RATIOS[1]:g}x.** The sample-efficiency ratios in the {mode} "
            f"mode (their intervals are in the table below): {listing}. {reading}".rstrip()
        )
    if cost:
        here = sum(row["hours_here"] for row in cost) * PROJECTED_SEEDS
        on_gpu = "".join(
            f" With its updates at the GPU rate and the rest as here, one {display(row['algo'])} run would take "
            f"{row['hours_gpu']:.1f} h instead of {row['hours_here']:.1f} h."
            for row in cost
            if row["hours_gpu"] is not None
        )
        lines.append(
            f"- **A larger budget.** {PROJECTED_SEEDS} seeds of each of the {len(cost)} algorithms at "
            f"{PROJECTED_STEPS:,} env steps, about the paper's budget, need about {here:,.0f} job-hours at the costs "
            f"measured here "
            f"(the table below).{on_gpu}"
        )
    return lines


def run_hours(updates_per_s: float, other_s_per_step: float) -> float:
    """Hours of one run of PROJECTED_STEPS env steps, one update per step."""
    return PROJECTED_STEPS * (1 / updates_per_s + other_s_per_step) / 3600


def cost_rows(costs: dict[str, list[list[tuple[float, float]]]], gpu: dict[str, float]) -> list[dict]:
    """Per algorithm, the projected hours of one run of PROJECTED_STEPS env steps (one update per step):
    here, from the medians over its runs' evaluation intervals (`run_costs`) of the update rate and of
    the other seconds per env step; and with its updates at `gpu`'s rate (where measured), the rest as
    here. Medians over intervals, because an interval in which other work held the cores runs many times
    slower than the rest."""
    rows = []
    for algo, runs in costs.items():
        intervals = [interval for run in runs for interval in run]
        rate, other = (float(np.median([interval[i] for interval in intervals])) for i in (0, 1))
        rows.append(
            {
                "algo": algo,
                "runs": len(runs),
                "intervals": len(intervals),
                "updates_per_s": rate,
                "other_s_per_step": other,
                "hours_here": run_hours(rate, other),
                "gpu_updates_per_s": gpu.get(algo),
                "hours_gpu": run_hours(gpu[algo], other) if algo in gpu else None,
            }
        )
    return rows


def cost_table(rows: list[dict]) -> list[str]:
    lines = [
        (
            f"| algo | runs | intervals | updates/s here | other s per env step here | h per run of {PROJECTED_STEPS:,} steps here | "
            "updates/s on the GPU | h per run with GPU updates |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        gpu = f"{row['gpu_updates_per_s']:.0f} | {row['hours_gpu']:.1f}" if row["hours_gpu"] is not None else "- | -"
        lines.append(
            f"| {row['algo']} | {row['runs']} | {row['intervals']} | {row['updates_per_s']:.1f} | {row['other_s_per_step']:.4f} | "
            f"{row['hours_here']:.1f} | {gpu} |"
        )
    return lines


def gpu_update_rates(path: Path, env: str, config: dict) -> dict[str, float]:
    """{"omad": the fastest OMAD update rate of a GPU check}, when it measured the study's env, K and
    batch size; else {}."""
    if not path.is_file():
        return {}
    updates = json.loads(path.read_text()).get("updates") or {}
    rates = [row["updates_per_s"] for row in updates.get("rows", []) if row.get("updates_per_s")]
    same = (updates.get("env"), updates.get("denoising_steps"), updates.get("batch_size")) == (
        env,
        config.get("denoising_steps"),
        config.get("batch_size"),
    )
    return {"omad": max(rates)} if same and rates else {}


def write_study_report(root: Path, tasks: dict[str, Task], reps: int) -> dict:
    from bench.sample_efficiency import job_hours, run_costs

    study: dict = {}
    for name, task in tasks.items():
        task_dir = root / name
        table = task_table(task_dir, list(task.arms))
        if not table:
            continue
        longest = max(max(arm.budgets.values()) for arm in task.arms.values())
        controls = {
            algo: arm_label("control").format(algo=algo) for algo in getattr(task.arms.get("control"), "budgets", {})
        }
        # the milestones, and the budgets the control arm's runs reached, where the verdict sets them against
        # the presets
        reached = {
            curve.budget
            for algos in table.values()
            for label, entry in algos.items()
            if label in controls.values() and (curve := entry["curves"].get(VERDICT_MODE)) is not None
        }
        at = tuple(sorted({*(step for step in MILESTONES if step <= longest), *reached}))
        report = write_report(table, task_dir / "report", name, reps, VERDICT_MODE, at)
        configs = sorted(task_dir.glob("presets/*/omad/seed-*/config.json"))
        omad_config = json.loads(configs[0].read_text()) if configs else {}
        cost = cost_rows(run_costs(task_dir / "presets"), gpu_update_rates(GPU_CHECK, task.env, omad_config))
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
            "verdict": verdict(report, task.env, controls, cost) if task.env in report["envs"] else [],
            "cost": cost,
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
    lines = ["## Verdict", ""]
    for name, entry in study.items():
        lines += [f"### {name}", "", *entry["verdict"], ""]
        if entry["cost"]:
            lines += [
                f"#### What a larger budget needs ({name})",
                "",
                (
                    f"One run of {PROJECTED_STEPS:,} env steps (one update per step) per algorithm at its presets, "
                    "projected from the costs this study's runs measured between evaluations: the median over "
                    "their intervals of updates per second of update time, and of the other seconds per env step "
                    "(env steps, evaluations, checkpoints). The GPU "
                    "columns keep the other seconds and take the fastest OMAD update the GPU check measured at the "
                    "study's env, K and batch size (Performance, 'Measured on one H200'), where there is one."
                ),
                "",
                *cost_table(entry["cost"]),
                "",
            ]
    lines += ["## Runs", ""]
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
