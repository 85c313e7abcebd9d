"""`omad report` on a hand-written sweep dir: curves, final-return table, exact sample-efficiency
ratios (worked out by hand below), coverage, strict JSON, and a clear error for a non-sweep dir;
the statistics (IQM, bootstrap intervals, probability of improvement, performance profiles, the
ratio's interval) on small data whose answers are worked out by hand."""

import json

import numpy as np
import pytest

from omad.cli import main
from omad.experiments import stats
from omad.experiments.report import ReportError, first_reach, make_report

SPREAD, ANT = "mpe:simple_spread_v3", "mamujoco:Ant-2x4"
STEPS = [100, 200, 300, 400]
# the deterministic evaluation return per (env, algo, seed) at STEPS (the stochastic one is 100 lower)
RETURNS = {
    (SPREAD, "omad", 0): [0, 10, 20, 30],
    (SPREAD, "omad", 1): [0, 20, 40, 50],  # OMAD seed mean: 0, 15, 30, 40
    (SPREAD, "hasac", 0): [0, 5, 10, 20],
    (SPREAD, "hasac", 1): [0, 5, 15, 25],  # final 22.5 at budget 400
    (SPREAD, "hatd3", 0): [0, 10, 30, 45],
    (SPREAD, "hatd3", 1): [0, 10, 30, 45],  # final 45: above OMAD's best (40)
    (ANT, "omad", 0): [-5, 1, 2, 3],  # mean -3, 1, 2, 3
    (ANT, "omad", 1): [-1, 1, 2, 3],
    (ANT, "hatd3", 0): [-2, 1, 0, 0.5],  # final 0.5: OMAD crosses it between its first two evaluations
}
COVERAGE = {("omad", 0): 0.5, ("omad", 1): 0.7, ("hatd3", 0): 0.25}


def write_sweep(root):
    jobs = []
    for (env, algo, seed), values in RETURNS.items():
        rel = f"{env.replace(':', '_')}/{algo}/seed-{seed}"
        run = root / rel
        run.mkdir(parents=True)
        (run / "metrics.jsonl").write_text(
            "".join(
                json.dumps(
                    {
                        "step": s,
                        "eval_deterministic_return_mean": v,
                        "eval_stochastic_return_mean": v - 100,  # the other mode: every return 100 lower
                        "eval_return_mean": v - 100,
                        "eval_return_std": 1.0,
                        "updates_per_s": 1.0,
                        "env_steps_per_s": 1.0,
                    }
                )
                + "\n"
                for s, v in zip(STEPS, values)
            )
        )
        if env == ANT:
            (run / "coverage.json").write_text(
                json.dumps(
                    {
                        "fraction": COVERAGE[algo, seed],
                        "cells_visited": 0,
                        "cells_total": 1600,
                        "steps": 400,
                        "max_steps": 250000,
                        "extent": 20.0,
                        "cell_size": 1.0,
                        "outside": 0,
                        "visited_cells": [],
                    }
                )
            )
        jobs.append({"env": env, "algo": algo, "seed": seed, "dir": rel, "total_steps": 400})
    # A listed job that has not evaluated yet: counted, not averaged.
    jobs.append(
        {"env": SPREAD, "algo": "omad", "seed": 2, "dir": "mpe_simple_spread_v3/omad/seed-2", "total_steps": 400}
    )
    (root / "sweep.json").write_text(json.dumps({"format_version": 1, "jobs": jobs}))


def test_first_reach_interpolates_linearly():
    assert first_reach([100, 200, 300], [0, 15, 30], 22.5) == 250
    assert first_reach([100, 200, 300], [0, 15, 30], 15) == 200
    assert first_reach([100, 200, 300], [5, 15, 30], 0) == 100
    assert first_reach([100, 200, 300], [0, 15, 30], 31) is None


def test_report_numbers_are_exact(tmp_path):
    write_sweep(tmp_path)
    report = make_report(tmp_path, reps=400)
    out = tmp_path / "report"
    spread = report["envs"][SPREAD]

    omad = spread["algos"]["omad"]
    assert omad["seeds"] == [0, 1] and omad["jobs"] == 3 and omad["budget"] == 400
    curve = omad["curve"]
    assert (curve["step"], curve["mean"], curve["std"]) == (STEPS, [0, 15, 30, 40], [0, 5, 10, 10])
    assert curve["per_seed"] == {"0": [0, 10, 20, 30], "1": [0, 20, 40, 50]}
    assert curve["iqm"] == [0, 15, 30, 40]  # with two seeds the IQM is the mean
    # OMAD's final IQM 40 [30, 50]: resampling two seeds gives 30, 40 or 50 (probabilities 1/4, 1/2, 1/4)
    assert omad["final_return_iqm"] == [40, 30, 50]
    assert (omad["final_return_mean"], omad["final_return_std"]) == (40, 10)
    assert (spread["algos"]["hasac"]["final_return_mean"], spread["algos"]["hasac"]["final_return_std"]) == (22.5, 2.5)

    # HASAC's final return 22.5: OMAD's mean curve passes it between 200 (15) and 300 (30):
    # 200 + (22.5 - 15) / (30 - 15) * 100 = 250 steps; ratio = 400 / 250 = 1.6.
    hasac = spread["sample_efficiency"]["hasac"]
    assert hasac["reached"] and hasac["omad_step"] == 250 and hasac["ratio"] == 1.6
    # every OMAD run ends above every HASAC run (30, 50 vs 20, 25): P = 1 whatever the resample
    assert spread["probability_of_improvement"]["hasac"] == [1.0, 1.0, 1.0]
    # HATD3's runs (45, 45) are one above and one below OMAD's (30, 50): P = 1/2
    assert spread["probability_of_improvement"]["hatd3"][0] == 0.5
    profile = spread["performance_profile"]
    assert profile["taus"][0] == 20 and profile["taus"][-1] == 50  # the lowest and highest final returns
    assert profile["omad"]["fraction"][50] == 0.5 and profile["hasac"]["fraction"][50] == 0.0  # tau = 35
    # HATD3's final return 45 is never reached (OMAD's best mean is 40): ratio < 400 / 400.
    hatd3 = spread["sample_efficiency"]["hatd3"]
    assert not hatd3["reached"] and hatd3["omad_step"] is None and hatd3["ratio_upper_bound"] == 1.0
    assert "ratio" not in hatd3
    # Its interval: only a resample of OMAD's seed 1 twice (p = 1/4; curve 0, 20, 40, 50) reaches 45, at
    # 300 + 5 / 10 * 100 = 350 steps (ratio 400 / 350); the other 3/4 count at the bound 1.0.
    assert hatd3["ratio_ci"] == [1.0, pytest.approx(400 / 350)]
    assert hatd3["ratio_ci_not_reached"] == pytest.approx(0.75, abs=0.07)
    # Ant: HATD3's 0.5 lies between OMAD's means -3 (step 100) and 1 (step 200):
    # 100 + (0.5 - (-3)) / (1 - (-3)) * 100 = 187.5; ratio = 400 / 187.5.
    ant = report["envs"][ANT]
    assert ant["sample_efficiency"]["hatd3"]["omad_step"] == 187.5
    assert ant["sample_efficiency"]["hatd3"]["ratio"] == pytest.approx(400 / 187.5)
    # HATD3's own curve peaks at 1 (step 200) before ending at 0.5: it first reached 0.5 at
    # 100 + (0.5 - (-2)) / (1 - (-2)) * 100 = 183.3 steps, not at its budget.
    assert ant["sample_efficiency"]["hatd3"]["baseline_step"] == pytest.approx(100 + 2.5 / 3 * 100)
    # monotone baselines first reach their final return at their budget
    assert hasac["baseline_step"] == hatd3["baseline_step"] == 400
    assert ant["algos"]["omad"]["coverage"]["mean"] == pytest.approx(0.6)
    assert ant["algos"]["omad"]["coverage"]["std"] == pytest.approx(0.1)
    assert ant["algos"]["hatd3"]["coverage"]["mean"] == 0.25
    assert "coverage" not in spread["algos"]["omad"]

    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(report))
    for env in (SPREAD, ANT):
        for key in ("plot", "profile_plot"):
            png = out / report["envs"][env][key]
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "report.md").read_text()
    assert (
        "| mpe:simple_spread_v3 | omad | 2 of 3 | 400 | 40.00 [30.00, 50.00] | 40.00 ± 10.00 | -60.00 [-70.00, -50.00] |"
        in md
    )
    assert "| mpe:simple_spread_v3 | hasac | 2 | 400 | 22.50 [20.00, 25.00] | 22.50 ± 2.50 |" in md
    assert "| mpe:simple_spread_v3 | hasac | 1.00 [1.00, 1.00] | 400 | 22.50 | 400 | 250 | 1.60x |" in md
    assert "| mpe:simple_spread_v3 | hatd3 | 0.50 [" in md
    assert "| 400 | 45.00 | 400 | not reached in 400 | not reached (< 1.00x) | [1.00x, 1.14x] (" in md
    assert "| mamujoco:Ant-2x4 | hatd3 | " in md and "| 400 | 0.50 | 183 | 188 | 2.13x |" in md
    assert "| mamujoco:Ant-2x4 | omad | 2 | 400 | 1600 cells of 1 m over +-20 m | 60.0% ± 10.0% |" in md
    # per seed, both modes (the stochastic return is the deterministic one less 100)
    assert "| mpe:simple_spread_v3 | omad | deterministic | 0: 30.00, 1: 50.00 |" in md
    assert "| mpe:simple_spread_v3 | omad | stochastic | 0: -70.00, 1: -50.00 |" in md
    assert "| mamujoco:Ant-2x4 | hatd3 | deterministic | 0: 0.50 |" in md
    assert "linearly interpolated" in md and "![mpe:simple_spread_v3](curves_mpe_simple_spread_v3.png)" in md
    assert "![mpe:simple_spread_v3](profile_mpe_simple_spread_v3.png)" in md


def test_the_other_mode_stands_beside_and_a_run_in_progress_does_not_cut_curves(tmp_path):
    """Stochastic returns are the deterministic ones less 100: the ratio (a difference of steps) is the
    same in both modes, the IQMs shift by 100. A seed still training (last step 200 of 400) is listed
    among the jobs but leaves the finished seeds' curves whole."""
    write_sweep(tmp_path)
    running = tmp_path / "mpe_simple_spread_v3/omad/seed-2"
    running.mkdir(parents=True)
    (running / "metrics.jsonl").write_text(
        json.dumps({"step": 100, "eval_deterministic_return_mean": 99.0, "eval_stochastic_return_mean": 99.0}) + "\n"
    )
    report = make_report(tmp_path, reps=200, mode="stochastic", at=(200, 400))
    spread = report["envs"][SPREAD]
    assert report["mode"] == "stochastic" and report["other_mode"]["mode"] == "deterministic"
    assert spread["algos"]["omad"]["final_return_iqm"] == [-60, -70, -50]
    assert spread["algos"]["omad"]["seeds"] == [0, 1] and spread["algos"]["omad"]["budget"] == 400
    assert report["other_mode"]["envs"][SPREAD]["algos"]["omad"]["final_return_iqm"] == [40, 30, 50]
    assert spread["sample_efficiency"]["hasac"]["ratio"] == 1.6
    # OMAD at step 200: seeds 10 and 20 (deterministic), IQM 15; resamples give 10, 15 or 20
    assert report["at"][SPREAD]["omad"]["deterministic"]["200"] == [15, 10, 20]
    assert report["at"][SPREAD]["omad"]["stochastic"]["400"] == [-60, -70, -50]
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| mpe:simple_spread_v3 | omad | deterministic | 15.00 [10.00, 20.00] | 40.00 [30.00, 50.00] |" in md


def test_a_run_recording_one_mode_counts_for_its_configured_mode(tmp_path):
    """Runs that record only `eval_return_mean` count in the mode their config evaluated in."""
    write_sweep(tmp_path)
    for run in tmp_path.glob("mpe_simple_spread_v3/hatd3/seed-*"):
        lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        plain = [{"step": r["step"], "eval_return_mean": r["eval_deterministic_return_mean"]} for r in lines]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in plain))
        (run / "config.json").write_text(json.dumps({"eval_zero_noise": True}))
    report = make_report(tmp_path, reps=200)
    assert report["envs"][SPREAD]["algos"]["hatd3"]["final_return_iqm"] == [45, 45, 45]
    assert "final_return_iqm" not in report["other_mode"]["envs"][SPREAD]["algos"]["hatd3"]


def test_report_cli(tmp_path, capsys):
    write_sweep(tmp_path / "sweep")
    assert main(["report", str(tmp_path / "sweep"), "--out", str(tmp_path / "rep"), "--reps", "200"]) == 0
    assert "1.60x" in capsys.readouterr().out
    assert (tmp_path / "rep" / "report.md").is_file() and (tmp_path / "rep" / "curves_mamujoco_Ant-2x4.png").is_file()


def test_report_on_a_non_sweep_dir_fails_clearly(tmp_path, capsys):
    with pytest.raises(ReportError, match="not a sweep dir"):
        make_report(tmp_path)
    assert main(["report", str(tmp_path)]) == 2 and "no sweep.json" in capsys.readouterr().err


def test_iqm_is_the_mean_of_the_middle_half():
    # 5 runs: the trim removes one from each end, so the outlier 100 does not count: (2 + 3 + 4) / 3
    assert stats.iqm(np.array([4.0, 1.0, 100.0, 3.0, 2.0])) == 3.0
    # 8 runs: two from each end: (3 + 4 + 5 + 6) / 4
    assert stats.iqm(np.arange(1.0, 9.0)) == 4.5
    np.testing.assert_allclose(
        stats.iqm(np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [400.0, 40.0], [5.0, 50.0]]), axis=0),
        [(2 + 3 + 5) / 3, 30.0],
    )


def test_iqm_interval_of_identical_runs_is_a_point_and_otherwise_spans_the_runs():
    ((point, low, high),) = stats.iqm_ci({"a": np.full(5, 7.0)}, reps=200).values()
    assert point == low == high == 7.0
    point, low, high = stats.iqm_ci({"b": np.array([1.0, 2.0, 3.0, 4.0, 100.0])}, reps=2000)["b"]
    assert point == 3.0 and 1.0 <= low < 3.0 < high <= 100.0


def test_probability_of_improvement_counts_pairs_and_ties_half():
    assert stats.probability_of_improvement(np.array([3.0, 4.0, 5.0]), np.array([0.0, 1.0, 2.0]), reps=200) == (
        1.0,
        1.0,
        1.0,
    )
    assert stats.probability_of_improvement(np.array([1.0, 3.0, 5.0]), np.array([2.0]), reps=200)[0] == pytest.approx(
        2 / 3
    )
    # 2 > 2 is a tie (1/2), 3 > 2 a win: (0.5 + 1) / 2
    assert stats.probability_of_improvement(np.array([2.0, 3.0]), np.array([2.0]), reps=200)[0] == 0.75
    x = np.array([1.0, 5.0, 6.0])
    assert stats.probability_of_improvement(x, x, reps=200)[0] == 0.5


def test_performance_profile_is_the_fraction_of_runs_above_each_threshold():
    prof = stats.performance_profiles({"a": np.array([1.0, 2.0, 3.0, 4.0])}, np.array([0.0, 2.5, 4.0]), reps=200)["a"]
    assert prof["fraction"] == [1.0, 0.5, 0.0]  # > 4 is strict
    assert prof["ci_low"][0] == prof["ci_high"][0] == 1.0


def test_ratio_interval_over_seeds_by_hand():
    """OMAD seeds [0, 10, 20, 30] and [0, 20, 40, 60] at steps 100..400; one baseline seed ending at 15.
    A resample of two OMAD seeds has the IQM (= mean) curve of seed 0 twice (p = 1/4), of both (p = 1/2)
    or of seed 1 twice (p = 1/4): it reaches 15 at 250, 200 or 175 steps, ratio 400 / that = 1.6, 2.0 or
    2.29. The point estimate (both seeds) is 2.0 and the 95% interval runs from 1.6 to 2.29."""
    steps = np.array([100, 200, 300, 400])
    omad = np.array([[0.0, 10, 20, 30], [0.0, 20, 40, 60]])
    base = np.array([[0.0, 5, 10, 15]])
    ratio, bound = stats.efficiency_ratio(steps, omad, steps, base)
    assert (ratio, bound) == (2.0, 1.0)
    low, high, missed = stats.efficiency_ratio_ci(steps, omad, steps, base, reps=4000)
    assert (low, high, missed) == (pytest.approx(1.6), pytest.approx(400 / 175), 0.0)
    # a target above seed 0's best (30): only resamples with seed 1 reach it; seed 0 twice (p = 1/4)
    # never does and counts at the bound 1.0
    low, high, missed = stats.efficiency_ratio_ci(steps, omad, steps, base + 20, reps=4000)
    assert low == 1.0 and missed == pytest.approx(0.25, abs=0.03)
