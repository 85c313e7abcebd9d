"""`omad report SWEEP_DIR`: learning curves (every seed, and the IQM with its CI), final returns (IQM with
stratified-bootstrap 95% CIs, plus mean and std), the probability of improvement and the sample-efficiency
ratio (with a bootstrap interval) of OMAD against each baseline, performance profiles, and Ant state
coverage of an `omad sweep` dir, as PNGs, report.md and report.json. The statistics are rliable's
(omad/experiments/stats.py); how seeds are aggregated and how the ratio is computed: AGGREGATION and
RATIO_RULE below (both are printed in the report).
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from omad.core.errors import OmadError
from omad.core.rundir import CONFIG_FILE, COVERAGE_FILE, METRICS_FILE
from omad.experiments import stats
from omad.experiments.layout import SWEEP_FILE, safe_name
from omad.experiments.stats import first_reach

REFERENCE_ALGO = "omad"
AGGREGATION = (
    "Each (env, algo) curve is taken at the env steps that all of its seeds have evaluated (the same schedule "
    "when the seeds share a config). Its budget is its last such step and its final return is the seeds' "
    "evaluation return there. Seeds are aggregated by the interquartile mean (IQM, the 25%-trimmed mean; "
    "with 2-3 seeds it is the mean, with 5 the mean of the middle 3) with a stratified-bootstrap 95% "
    "confidence interval over seeds (rliable, percentile method); mean and std (ddof = 0) are given too. "
    "P(OMAD > B) is the probability that a run of OMAD ends above a run of B (ties count half), with its "
    "bootstrap CI. Performance profiles give the fraction of runs whose final return exceeds each threshold."
)
RATIO_RULE = (
    "For each baseline B (every algo other than omad) on an env: target = B's final IQM (over seeds, at B's "
    "budget, its last evaluated step). OMAD's step = the first env step at which OMAD's IQM curve reaches "
    "the target (>=), linearly interpolated between the two evaluations around the crossing; if OMAD's "
    "first evaluation already reaches it, that evaluation's step. Ratio = B's budget / OMAD's step: above "
    "1, OMAD needs fewer env steps to reach B's final return. If OMAD's curve never reaches the target, "
    "OMAD needs more than its own budget, so the ratio is reported as not reached with the bound ratio < "
    "B's budget / OMAD's budget. Its 95% interval: a bootstrap over seeds (OMAD's and B's whole curves "
    "resampled independently, the ratio recomputed); a resample that never reaches its target counts at "
    "the bound, and the fraction of such resamples is given. B's own IQM curve may reach its final return "
    "before its budget (a curve that peaks and falls back); the step where it first does (same rule) is "
    "given too, so a ratio above 1 can be read against how early B itself got there."
)


class ReportError(OmadError, ValueError):
    pass


@dataclass
class Curve:
    """One (env, algo): every seed's evaluation return at the steps all seeds share."""

    seeds: list[int]
    steps: np.ndarray
    values: np.ndarray  # [seeds, steps]

    @property
    def mean(self) -> np.ndarray:
        return self.values.mean(axis=0)

    @property
    def std(self) -> np.ndarray:
        return self.values.std(axis=0)

    @property
    def finals(self) -> np.ndarray:
        """Each seed's return at the budget."""
        return self.values[:, -1]

    @property
    def budget(self) -> int:
        return int(self.steps[-1])

    @property
    def final_mean(self) -> float:
        return float(self.mean[-1])

    @property
    def final_std(self) -> float:
        return float(self.std[-1])


MODES = ("deterministic", "stochastic")  # evaluation with zero noise, and with the policy's noise


def configured_mode(run_dir: Path) -> str:
    """The mode a run's plain `eval_return_mean` was evaluated in (its config's `eval_zero_noise`)."""
    path = run_dir / CONFIG_FILE
    zero = json.loads(path.read_text()).get("eval_zero_noise", False) if path.is_file() else False
    return "deterministic" if zero else "stochastic"


def read_metrics(run_dir: Path, mode: str) -> dict[int, float]:
    """{env step: evaluation return in `mode`} of one run (a later line for the same step wins). Runs
    record both modes (`eval_<mode>_return_mean`); a record with only `eval_return_mean` counts for the
    mode its run's config evaluated in."""
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return {}
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    plain = configured_mode(run_dir) == mode
    out = {}
    for r in records:
        value = r.get(f"eval_{mode}_return_mean", r.get("eval_return_mean") if plain else None)
        if value is not None:
            out[int(r["step"])] = float(value)
    return out


def aggregate(per_seed: dict[int, dict[int, float]]) -> Curve | None:
    per_seed = {seed: points for seed, points in per_seed.items() if points}
    if not per_seed:
        return None
    common = sorted(set.intersection(*(set(points) for points in per_seed.values())))
    if not common:
        return None
    seeds = sorted(per_seed)
    values = np.array([[per_seed[s][step] for step in common] for s in seeds], dtype=np.float64)
    return Curve(seeds, np.array(common, dtype=np.int64), values)


def sample_efficiency(omad: Curve, baseline: Curve, reps: int = stats.REPS) -> dict:
    """RATIO_RULE: the ratio, the step OMAD's IQM curve reaches B's final IQM at, and the interval."""
    target = float(stats.iqm(baseline.finals))
    step = first_reach(omad.steps, stats.iqm(omad.values, axis=0), target)
    own_step = first_reach(baseline.steps, stats.iqm(baseline.values, axis=0), target)
    ratio, bound = stats.efficiency_ratio(omad.steps, omad.values, baseline.steps, baseline.values)
    low, high, missed = stats.efficiency_ratio_ci(omad.steps, omad.values, baseline.steps, baseline.values, reps)
    result = {
        "baseline_budget": baseline.budget,
        "baseline_final_return": target,
        "omad_budget": omad.budget,
        "omad_step": step,
        "baseline_step": own_step,
        "reached": step is not None,
        "ratio_ci": [low, high],
        "ratio_ci_not_reached": missed,
    }
    if ratio is not None:
        result["ratio"] = ratio
    else:
        result["ratio_upper_bound"] = bound
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


def collect(sweep_dir: Path, label: str = "{algo}") -> dict:
    """{env: {name: {"curves": {mode: Curve | None}, "jobs": n, "coverage": [...], ...}}} where name is
    `label` formatted with the algo. A run counts once it has evaluated at its job's budget: a run still
    training is listed among the jobs but does not cut the finished seeds' curves short."""
    sweep = load_sweep(sweep_dir)
    table: dict[str, dict[str, dict]] = {}
    for job in sweep["jobs"]:
        run_dir = sweep_dir / job["dir"]
        entry = table.setdefault(job["env"], {}).setdefault(
            label.format(algo=job["algo"]),
            {"per_seed": {}, "jobs": 0, "coverage": [], "coverage_steps": [], "coverage_grid": None},
        )
        entry["jobs"] += 1
        per_mode = {mode: read_metrics(run_dir, mode) for mode in MODES}
        budget = job.get("total_steps")
        if not any(per_mode.values()) or (
            budget is not None and max(max(p, default=0) for p in per_mode.values()) < budget
        ):
            continue
        entry["per_seed"][job["seed"]] = per_mode
        if (run_dir / COVERAGE_FILE).is_file():
            cov = json.loads((run_dir / COVERAGE_FILE).read_text())
            entry["coverage"].append(cov["fraction"])
            entry["coverage_steps"].append(cov["steps"])
            entry["coverage_grid"] = f"{cov['cells_total']} cells of {cov['cell_size']:g} m over +-{cov['extent']:g} m"
    for algos in table.values():
        for entry in algos.values():
            per_seed = entry.pop("per_seed")
            entry["curves"] = {
                mode: aggregate({seed: points[mode] for seed, points in per_seed.items()}) for mode in MODES
            }
    return table


def in_mode(table: dict, mode: str) -> dict:
    """The table with each entry's "curve" set to its curve in `mode`."""
    return {env: {name: {**e, "curve": e["curves"][mode]} for name, e in algos.items()} for env, algos in table.items()}


# -- statistics --------------------------------------------------------------------------------------
def env_statistics(algos: dict[str, dict], reps: int) -> dict:
    """Per algo: IQM curve with CI and final IQM with CI; OMAD against each baseline: P(OMAD > B) and the
    sample-efficiency ratio; and the performance profiles over the final returns."""
    curves = {algo: entry["curve"] for algo, entry in algos.items() if entry["curve"] is not None}
    finals = stats.iqm_ci({algo: c.finals for algo, c in curves.items()}, reps) if curves else {}
    out: dict = {"algos": {}, "improvement": {}, "sample_efficiency": {}, "profile": None}
    for algo, curve in curves.items():
        point, low, high = stats.curve_iqm_ci(curve.values, min(reps, stats.CURVE_REPS))
        out["algos"][algo] = {
            "final_iqm": list(finals[algo]),
            "curve_iqm": point.tolist(),
            "curve_ci_low": low.tolist(),
            "curve_ci_high": high.tolist(),
        }
    omad = curves.get(REFERENCE_ALGO)
    for algo, curve in curves.items():
        if algo != REFERENCE_ALGO and omad is not None:
            out["improvement"][algo] = list(stats.probability_of_improvement(omad.finals, curve.finals, reps))
            out["sample_efficiency"][algo] = sample_efficiency(omad, curve, reps)
    if curves:
        everything = np.concatenate([c.finals for c in curves.values()])
        taus = np.linspace(everything.min(), everything.max(), 101)
        out["profile"] = {
            "taus": taus.tolist(),
            **stats.performance_profiles({a: c.finals for a, c in curves.items()}, taus, min(reps, 2000)),
        }
    return out


# -- outputs -----------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_env(env: str, algos: dict[str, dict], statistics: dict, path: Path) -> None:
    """Every seed's curve (thin) and the IQM over seeds (bold) with its 95% CI band, per algo."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for k, (algo, entry) in enumerate(algos.items()):
        curve = entry["curve"]
        if curve is None:
            continue
        color, st = f"C{k}", statistics["algos"][algo]
        for seed_values in curve.values:
            ax.plot(curve.steps, seed_values, color=color, linewidth=0.8, alpha=0.5, linestyle="--")
        ax.plot(
            curve.steps,
            st["curve_iqm"],
            color=color,
            marker="o",
            markersize=3,
            linewidth=2,
            label=f"{algo} (IQM of {len(curve.seeds)} seeds)",
        )
        ax.fill_between(curve.steps, st["curve_ci_low"], st["curve_ci_high"], color=color, alpha=0.2)
    ax.set_title(env)
    ax.set_xlabel("environment steps")
    ax.set_ylabel("evaluation return (seeds thin, IQM and 95% CI bold)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_profile(env: str, profile: dict, path: Path) -> None:
    """Performance profiles: the fraction of runs whose final return exceeds tau, with 95% CIs."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for k, (algo, prof) in enumerate((a, p) for a, p in profile.items() if a != "taus"):
        ax.plot(profile["taus"], prof["fraction"], color=f"C{k}", linewidth=2, label=algo)
        ax.fill_between(profile["taus"], prof["ci_low"], prof["ci_high"], color=f"C{k}", alpha=0.2)
    ax.set_title(f"{env}: performance profiles")
    ax.set_xlabel("final return threshold tau")
    ax.set_ylabel("fraction of runs with return > tau")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _pm(mean: float, std: float) -> str:
    return f"{mean:.2f} ± {std:.2f}"


def _ci(values) -> str:
    point, low, high = values
    return f"{point:.2f} [{low:.2f}, {high:.2f}]"


def build_json(table: dict, plots: dict[str, dict], statistics: dict[str, dict], mode: str) -> dict:
    envs = {}
    for env, algos in table.items():
        out_algos = {}
        st = statistics[env]
        for algo, entry in algos.items():
            curve: Curve | None = entry["curve"]
            info = {"jobs": entry["jobs"]}
            if curve is not None:
                s_algo = st["algos"][algo]
                info.update(
                    seeds=curve.seeds,
                    budget=curve.budget,
                    final_return_mean=curve.final_mean,
                    final_return_std=curve.final_std,
                    final_returns=curve.finals.tolist(),
                    final_return_iqm=s_algo["final_iqm"],
                    curve={
                        "step": curve.steps.tolist(),
                        "mean": curve.mean.tolist(),
                        "std": curve.std.tolist(),
                        "iqm": s_algo["curve_iqm"],
                        "iqm_ci_low": s_algo["curve_ci_low"],
                        "iqm_ci_high": s_algo["curve_ci_high"],
                        "per_seed": {str(seed): v.tolist() for seed, v in zip(curve.seeds, curve.values)},
                    },
                )
            if entry["coverage"]:
                fractions = np.array(entry["coverage"])
                info["coverage"] = {
                    "mean": float(fractions.mean()),
                    "std": float(fractions.std()),
                    "seeds": len(fractions),
                    "fractions": fractions.tolist(),
                    "steps": entry["coverage_steps"],
                    "grid": entry["coverage_grid"],
                }
            out_algos[algo] = info
        envs[env] = {
            "algos": out_algos,
            "sample_efficiency": st["sample_efficiency"],
            "probability_of_improvement": st["improvement"],
            "performance_profile": st["profile"],
            "plot": plots.get(env, {}).get("curves"),
            "profile_plot": plots.get(env, {}).get("profile"),
        }
    return {"aggregation": AGGREGATION, "ratio_rule": RATIO_RULE, "mode": mode, "envs": envs}


def _versus_rows(report: dict) -> list[str]:
    """The table of OMAD against each baseline (P(OMAD > B), the sample-efficiency ratio) in one mode."""
    lines = [
        (
            "| env | baseline | P(OMAD > B) [95% CI] | B's budget | B's final IQM | B's own curve first reaches it at | "
            "OMAD reaches it at step | ratio | ratio 95% interval (not reached in) |"
        ),
        "|---|---|---|---:|---:|---:|---:|---|---|",
    ]
    rows = 0
    for env, data in report["envs"].items():
        for algo, eff in data["sample_efficiency"].items():
            rows += 1
            if eff["reached"]:
                reached, ratio = f"{eff['omad_step']:.0f}", f"{eff['ratio']:.2f}x"
            else:
                reached = f"not reached in {eff['omad_budget']}"
                ratio = f"not reached (< {eff['ratio_upper_bound']:.2f}x)"
            low, high = eff["ratio_ci"]
            interval = f"[{low:.2f}x, {high:.2f}x] ({100 * eff['ratio_ci_not_reached']:.0f}%)"
            lines.append(
                f"| {env} | {algo} | {_ci(data['probability_of_improvement'][algo])} | {eff['baseline_budget']} | "
                f"{eff['baseline_final_return']:.2f} | {eff['baseline_step']:.0f} | {reached} | {ratio} | {interval} |"
            )
    if not rows:
        lines.append("| - | no env has both omad and a baseline with evaluations | | | | | | | |")
    return lines


def build_markdown(report: dict, title: str) -> str:
    mode, other = report["mode"], report["other_mode"]
    lines = [
        f"# {title}",
        "",
        report["aggregation"],
        "",
        (
            f"Every evaluation runs in two modes: deterministic (zero noise; for OMAD the chain run with zero noise) "
            f"and stochastic (the policy's noise). This report reads its verdict in the **{mode}** mode; the "
            f"{other['mode']} mode's numbers stand beside it."
        ),
        "",
        "## Final return",
        "",
        (
            f"| env | algo | seeds | budget (env steps) | IQM [95% CI], {mode} | mean ± std over seeds | "
            f"IQM [95% CI], {other['mode']} |"
        ),
        "|---|---|---:|---:|---|---|---|",
    ]
    for env, data in report["envs"].items():
        for algo, info in data["algos"].items():
            beside = other["envs"].get(env, {}).get("algos", {}).get(algo, {})
            other_iqm = _ci(beside["final_return_iqm"]) if "final_return_iqm" in beside else "-"
            if "budget" in info:
                seeds = f"{len(info['seeds'])}" + (f" of {info['jobs']}" if info["jobs"] != len(info["seeds"]) else "")
                lines.append(
                    f"| {env} | {algo} | {seeds} | {info['budget']} | {_ci(info['final_return_iqm'])} | "
                    f"{_pm(info['final_return_mean'], info['final_return_std'])} | {other_iqm} |"
                )
            else:
                lines.append(f"| {env} | {algo} | 0 of {info['jobs']} | - | no finished runs yet | | {other_iqm} |")

    lines += ["", "## Final return per seed", "", "| env | algo | mode | seed: final return |", "|---|---|---|---|"]
    for part in (report, other):
        for env, data in part["envs"].items():
            for algo, info in data["algos"].items():
                if "budget" in info:
                    finals = ", ".join(f"{s}: {r:.2f}" for s, r in zip(info["seeds"], info["final_returns"]))
                    lines.append(f"| {env} | {algo} | {part['mode']} | {finals} |")

    if report["at"]:
        lines += [
            "",
            "## IQM [95% CI] at selected env steps",
            "",
            "| env | algo | mode | " + " | ".join(f"{step}" for step in report["at_steps"]) + " |",
            "|---|---|---|" + "---|" * len(report["at_steps"]),
        ]
        for env, algos in report["at"].items():
            for algo, modes in algos.items():
                for m in (mode, other["mode"]):
                    cells = [_ci(modes[m][str(step)]) if str(step) in modes[m] else "-" for step in report["at_steps"]]
                    lines.append(f"| {env} | {algo} | {m} | " + " | ".join(cells) + " |")

    lines += ["", f"## OMAD against each baseline ({mode})", "", report["ratio_rule"], "", *_versus_rows(report)]
    lines += ["", f"## OMAD against each baseline ({other['mode']})", "", *_versus_rows(other)]

    coverage_rows = [
        (env, algo, info["coverage"])
        for env, data in report["envs"].items()
        for algo, info in data["algos"].items()
        if "coverage" in info
    ]
    if coverage_rows:
        lines += [
            "",
            "## State coverage (Ant)",
            "",
            (
                "Fraction of the cells of a grid over the torso's (x, y) visited by training in its first 250k env "
                "steps (docs/algorithm.md, 'State coverage'; a run shorter than that covers only its own steps). The paper, on Ant "
                "2x4 with its own grid: OMAD 68.3%, HASAC 55.0%, HATD3 48.4%."
            ),
            "",
            "| env | algo | seeds | env steps recorded | grid | coverage (mean ± std over seeds) |",
            "|---|---|---:|---:|---|---|",
        ]
        for env, algo, cov in coverage_rows:
            steps = sorted(set(cov["steps"]))
            steps_text = str(steps[0]) if len(steps) == 1 else f"{steps[0]}-{steps[-1]}"
            lines.append(
                f"| {env} | {algo} | {cov['seeds']} | {steps_text} | {cov['grid']} | "
                f"{100 * cov['mean']:.1f}% ± {100 * cov['std']:.1f}% |"
            )

    lines += ["", "## Learning curves and performance profiles", ""]
    for env, data in report["envs"].items():
        for key in ("plot", "profile_plot"):
            if data[key]:
                lines += [f"![{env}]({data[key]})", ""]
    return "\n".join(lines).rstrip() + "\n"


def make_report(
    sweep_dir: str | Path,
    out: str | Path | None = None,
    reps: int = stats.REPS,
    mode: str = "deterministic",
    at: tuple[int, ...] = (),
) -> dict:
    """Write the PNGs, report.md and report.json of a sweep into `out` (default SWEEP_DIR/report);
    return the JSON. `reps`: bootstrap resamples of the intervals; `mode`: the evaluation mode the
    verdict is read in; `at`: env steps to give every curve's IQM at."""
    sweep_dir = Path(sweep_dir)
    out = Path(out) if out is not None else sweep_dir / "report"
    return write_report(collect(sweep_dir), out, f"Sweep report: {sweep_dir.name}", reps, mode, at)


def iqm_at(table: dict, steps: tuple[int, ...], reps: int) -> dict:
    """{env: {algo: {mode: {step: (IQM, CI low, CI high)}}}} at the steps each curve has."""
    out: dict = {}
    for env, algos in table.items():
        for algo, entry in algos.items():
            for mode, curve in entry["curves"].items():
                cells = out.setdefault(env, {}).setdefault(algo, {}).setdefault(mode, {})
                if curve is None:
                    continue
                for step in steps:
                    hit = np.flatnonzero(curve.steps == step)
                    if hit.size:
                        cells[str(step)] = list(stats.iqm_ci({algo: curve.values[:, hit[0]]}, reps)[algo])
    return out


def write_report(
    table: dict, out: Path, title: str, reps: int, mode: str = "deterministic", at: tuple[int, ...] = ()
) -> dict:
    """The report of a collected table (see `collect`), verdict in `mode`, the other mode beside it."""
    if mode not in MODES:
        raise ReportError(f"unknown evaluation mode {mode!r}; choose one of {', '.join(MODES)}")
    (other,) = (m for m in MODES if m != mode)
    out.mkdir(parents=True, exist_ok=True)
    primary, secondary = in_mode(table, mode), in_mode(table, other)
    statistics = {env: env_statistics(algos, reps) for env, algos in primary.items()}
    other_statistics = {env: env_statistics(algos, reps) for env, algos in secondary.items()}
    plots: dict[str, dict] = {}
    for env, algos in primary.items():
        if any(entry["curve"] is not None for entry in algos.values()):
            name = safe_name(env)
            plots[env] = {"curves": f"curves_{name}.png", "profile": f"profile_{name}.png"}
            plot_env(env, algos, statistics[env], out / plots[env]["curves"])
            plot_profile(env, statistics[env]["profile"], out / plots[env]["profile"])
    report = build_json(primary, plots, statistics, mode)
    report["other_mode"] = build_json(secondary, {}, other_statistics, other)
    report["at_steps"], report["at"] = list(at), iqm_at(table, at, reps) if at else {}
    (out / "report.json").write_text(json.dumps(_finite(report), indent=2, allow_nan=False) + "\n")
    (out / "report.md").write_text(build_markdown(report, title))
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
    p.add_argument(
        "--reps", type=int, default=stats.REPS, help=f"bootstrap resamples per interval (default {stats.REPS})"
    )
    p.add_argument(
        "--mode",
        choices=MODES,
        default="deterministic",
        help="the evaluation mode the verdict is read in; the other mode's numbers stand beside it",
    )
    p.add_argument("--at", type=int, nargs="+", default=[], metavar="STEP", help="also give each IQM at these steps")
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else Path(args.sweep_dir) / "report"
    report = make_report(args.sweep_dir, out, args.reps, args.mode, tuple(args.at))
    print((out / "report.md").read_text())
    print(
        f"written: {out / 'report.md'}, {out / 'report.json'}, "
        f"{', '.join(str(out / p) for d in report['envs'].values() for p in (d['plot'], d['profile_plot']) if p) or 'no plots'}"
    )
    return 0
