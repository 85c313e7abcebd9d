"""`omad report SWEEP_DIR`: learning curves, final returns, sample-efficiency ratios against OMAD and
Ant state coverage of an `omad sweep` dir, as PNGs, report.md and report.json.
How seeds are aggregated and how the ratio is computed: AGGREGATION and RATIO_RULE below (both are
printed in the report).
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from omad_core.errors import OmadError
from omad_train.coverage import FILE_NAME as COVERAGE_FILE
from omad_train.sweep import SWEEP_FILE, safe_name

REFERENCE_ALGO = "omad"
AGGREGATION = (
    "Each (env, algo) curve is taken at the env steps that all of its seeds have evaluated (the same schedule "
    "when the seeds share a config); mean and std (ddof = 0) are over seeds. Its budget is its last such step "
    "and its final return is the seeds' evaluation return there."
)
RATIO_RULE = (
    "For each baseline B (every algo other than omad) on an env: target = B's final return (the mean over "
    "seeds at B's budget, its last evaluated step). OMAD's step = the first env step at which OMAD's "
    "seed-mean curve reaches the target (>=), linearly interpolated between the two evaluations around the "
    "crossing; if OMAD's first evaluation already reaches it, that evaluation's step. "
    "Ratio = B's budget / OMAD's step: above 1, OMAD needs fewer env steps to reach B's final return. "
    "If OMAD's curve never reaches the target, OMAD needs more than its own budget, so the ratio is "
    "reported as not reached with the bound ratio < B's budget / OMAD's budget."
)


class ReportError(OmadError, ValueError):
    pass


@dataclass
class Curve:
    """One (env, algo): the seed mean and std of the evaluation return at the steps all seeds share."""

    seeds: list[int]
    steps: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    finals: np.ndarray  # each seed's return at the budget

    @property
    def budget(self) -> int:
        return int(self.steps[-1])

    @property
    def final_mean(self) -> float:
        return float(self.mean[-1])

    @property
    def final_std(self) -> float:
        return float(self.std[-1])


def read_metrics(run_dir: Path) -> dict[int, float]:
    """{env step: eval_return_mean} of one run (a later line for the same step wins)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return {}
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {int(r["step"]): float(r["eval_return_mean"]) for r in records}


def aggregate(per_seed: dict[int, dict[int, float]]) -> Curve | None:
    per_seed = {seed: points for seed, points in per_seed.items() if points}
    if not per_seed:
        return None
    common = sorted(set.intersection(*(set(points) for points in per_seed.values())))
    if not common:
        return None
    seeds = sorted(per_seed)
    values = np.array([[per_seed[s][step] for step in common] for s in seeds], dtype=np.float64)
    return Curve(seeds, np.array(common, dtype=np.int64), values.mean(axis=0), values.std(axis=0), values[:, -1])


def first_reach(steps: np.ndarray, values: np.ndarray, target: float) -> float | None:
    """The first step at which the piecewise-linear curve (steps, values) reaches `target`, or None."""
    for k, value in enumerate(values):
        if value >= target:
            if k == 0:
                return float(steps[0])
            s0, s1, v0 = float(steps[k - 1]), float(steps[k]), float(values[k - 1])
            return s0 + (target - v0) / (float(value) - v0) * (s1 - s0)
    return None


def sample_efficiency(omad: Curve, baseline: Curve) -> dict:
    target = baseline.final_mean
    step = first_reach(omad.steps, omad.mean, target)
    result = {"baseline_budget": baseline.budget, "baseline_final_return": target, "omad_budget": omad.budget,
              "omad_step": step, "reached": step is not None}
    if step is not None:
        result["ratio"] = baseline.budget / step
    else:
        result["ratio_upper_bound"] = baseline.budget / omad.budget
    return result


# -- collecting a sweep ------------------------------------------------------------------------------
def load_sweep(sweep_dir: Path) -> dict:
    path = sweep_dir / SWEEP_FILE
    if not path.is_file():
        raise ReportError(f"{sweep_dir} is not a sweep dir (no {SWEEP_FILE}); create one with `omad sweep`")
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise ReportError(f"{path}: not valid JSON ({err})") from None


def collect(sweep_dir: Path) -> dict:
    """{env: {algo: {"curve": Curve | None, "jobs": n, "coverage": [fractions], "coverage_steps": [...]}}}."""
    sweep = load_sweep(sweep_dir)
    table: dict[str, dict[str, dict]] = {}
    for job in sweep["jobs"]:
        run_dir = sweep_dir / job["dir"]
        entry = table.setdefault(job["env"], {}).setdefault(
            job["algo"], {"per_seed": {}, "jobs": 0, "coverage": [], "coverage_steps": [], "coverage_grid": None})
        entry["jobs"] += 1
        entry["per_seed"][job["seed"]] = read_metrics(run_dir)
        if (run_dir / COVERAGE_FILE).is_file():
            cov = json.loads((run_dir / COVERAGE_FILE).read_text())
            entry["coverage"].append(cov["fraction"])
            entry["coverage_steps"].append(cov["steps"])
            entry["coverage_grid"] = f"{cov['cells_total']} cells of {cov['cell_size']:g} m over +-{cov['extent']:g} m"
    for algos in table.values():
        for entry in algos.values():
            entry["curve"] = aggregate(entry.pop("per_seed"))
    return table


# -- outputs -----------------------------------------------------------------------------------------
def plot_env(env: str, algos: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for algo, entry in algos.items():
        curve = entry["curve"]
        if curve is None:
            continue
        ax.plot(curve.steps, curve.mean, marker="o", markersize=3, label=f"{algo} ({len(curve.seeds)} seeds)")
        ax.fill_between(curve.steps, curve.mean - curve.std, curve.mean + curve.std, alpha=0.2)
    ax.set_title(env)
    ax.set_xlabel("environment steps")
    ax.set_ylabel("evaluation return (mean +- std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _pm(mean: float, std: float) -> str:
    return f"{mean:.2f} ± {std:.2f}"


def build_json(table: dict, plots: dict[str, str]) -> dict:
    envs = {}
    for env, algos in table.items():
        out_algos, efficiency = {}, {}
        for algo, entry in algos.items():
            curve: Curve | None = entry["curve"]
            info = {"jobs": entry["jobs"]}
            if curve is not None:
                info.update(seeds=curve.seeds, budget=curve.budget, final_return_mean=curve.final_mean,
                            final_return_std=curve.final_std, final_returns=curve.finals.tolist(),
                            curve={"step": curve.steps.tolist(), "mean": curve.mean.tolist(), "std": curve.std.tolist()})
            if entry["coverage"]:
                fractions = np.array(entry["coverage"])
                info["coverage"] = {"mean": float(fractions.mean()), "std": float(fractions.std()), "seeds": len(fractions),
                                    "fractions": fractions.tolist(), "steps": entry["coverage_steps"],
                                    "grid": entry["coverage_grid"]}
            out_algos[algo] = info
        omad = algos.get(REFERENCE_ALGO, {}).get("curve")
        for algo, entry in algos.items():
            if algo != REFERENCE_ALGO and omad is not None and entry["curve"] is not None:
                efficiency[algo] = sample_efficiency(omad, entry["curve"])
        envs[env] = {"algos": out_algos, "sample_efficiency": efficiency, "plot": plots.get(env)}
    return {"aggregation": AGGREGATION, "ratio_rule": RATIO_RULE, "envs": envs}


def build_markdown(report: dict, sweep_dir: Path) -> str:
    lines = [f"# Sweep report: {sweep_dir.name}", "", report["aggregation"], "",
             "## Final return", "",
             "| env | algo | seeds | budget (env steps) | final return (mean ± std over seeds) |",
             "|---|---|---:|---:|---|"]
    for env, data in report["envs"].items():
        for algo, info in data["algos"].items():
            if "budget" in info:
                seeds = f"{len(info['seeds'])}" + (f" of {info['jobs']}" if info["jobs"] != len(info["seeds"]) else "")
                lines.append(f"| {env} | {algo} | {seeds} | {info['budget']} | "
                             f"{_pm(info['final_return_mean'], info['final_return_std'])} |")
            else:
                lines.append(f"| {env} | {algo} | 0 of {info['jobs']} | - | no evaluations yet |")

    lines += ["", "## Sample efficiency against OMAD", "", report["ratio_rule"], "",
              "| env | baseline | baseline budget | baseline final return | OMAD reaches it at step | ratio |",
              "|---|---|---:|---:|---:|---|"]
    rows = 0
    for env, data in report["envs"].items():
        for algo, eff in data["sample_efficiency"].items():
            rows += 1
            if eff["reached"]:
                reached, ratio = f"{eff['omad_step']:.0f}", f"{eff['ratio']:.2f}x"
            else:
                reached = f"not reached in {eff['omad_budget']}"
                ratio = f"not reached (< {eff['ratio_upper_bound']:.2f}x)"
            lines.append(f"| {env} | {algo} | {eff['baseline_budget']} | {eff['baseline_final_return']:.2f} | {reached} | {ratio} |")
    if not rows:
        lines.append("| - | no env has both omad and a baseline with evaluations | | | | |")

    coverage_rows = [(env, algo, info["coverage"]) for env, data in report["envs"].items()
                     for algo, info in data["algos"].items() if "coverage" in info]
    if coverage_rows:
        lines += ["", "## State coverage (Ant)", "",
                  ("Fraction of the cells of a grid over the torso's (x, y) visited by training in its first 250k env "
                   "steps (ALGORITHM.md section 8; a run shorter than that covers only its own steps). The paper, on Ant "
                   "2x4 with its own grid: OMAD 68.3%, HASAC 55.0%, HATD3 48.4%."), "",
                  "| env | algo | seeds | env steps recorded | grid | coverage (mean ± std over seeds) |",
                  "|---|---|---:|---:|---|---|"]
        for env, algo, cov in coverage_rows:
            steps = sorted(set(cov["steps"]))
            steps_text = str(steps[0]) if len(steps) == 1 else f"{steps[0]}-{steps[-1]}"
            lines.append(f"| {env} | {algo} | {cov['seeds']} | {steps_text} | {cov['grid']} | "
                         f"{100 * cov['mean']:.1f}% ± {100 * cov['std']:.1f}% |")

    lines += ["", "## Learning curves", ""]
    for env, data in report["envs"].items():
        if data["plot"]:
            lines += [f"![{env}]({data['plot']})", ""]
    return "\n".join(lines).rstrip() + "\n"


def make_report(sweep_dir: str | Path, out: str | Path | None = None) -> dict:
    """Write the PNGs, report.md and report.json into `out` (default SWEEP_DIR/report); return the JSON."""
    sweep_dir = Path(sweep_dir)
    out = Path(out) if out is not None else sweep_dir / "report"
    table = collect(sweep_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = {}
    for env, algos in table.items():
        if any(entry["curve"] is not None for entry in algos.values()):
            plots[env] = f"curves_{safe_name(env)}.png"
            plot_env(env, algos, out / plots[env])
    report = build_json(table, plots)
    (out / "report.json").write_text(json.dumps(_finite(report), indent=2, allow_nan=False) + "\n")
    (out / "report.md").write_text(build_markdown(report, sweep_dir))
    return report


def _finite(value):
    """NaN/inf -> None, so report.json is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


# -- command line ------------------------------------------------------------------------------------
def configure_report(p: argparse.ArgumentParser) -> None:
    p.add_argument("sweep_dir", help="an `omad sweep --out` dir")
    p.add_argument("--out", help="where to write (default SWEEP_DIR/report)")
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else Path(args.sweep_dir) / "report"
    report = make_report(args.sweep_dir, out)
    print((out / "report.md").read_text())
    print(f"written: {out / 'report.md'}, {out / 'report.json'}, "
          f"{', '.join(str(out / p) for p in (d['plot'] for d in report['envs'].values()) if p) or 'no plots'}")
    return 0
