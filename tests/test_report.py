"""`omad report` on a hand-written sweep dir: curves, final-return table, exact sample-efficiency
ratios (worked out by hand below), coverage, strict JSON, and a clear error for a non-sweep dir."""

import json

import pytest

from omad.cli import main
from omad_train.report import ReportError, first_reach, make_report

SPREAD, ANT = "mpe:simple_spread_v3", "mamujoco:Ant-2x4"
STEPS = [100, 200, 300, 400]
# eval_return_mean per (env, algo, seed) at STEPS
RETURNS = {
    (SPREAD, "omad", 0): [0, 10, 20, 30],
    (SPREAD, "omad", 1): [0, 20, 40, 50],    # OMAD seed mean: 0, 15, 30, 40
    (SPREAD, "hasac", 0): [0, 5, 10, 20],
    (SPREAD, "hasac", 1): [0, 5, 15, 25],    # final 22.5 at budget 400
    (SPREAD, "hatd3", 0): [0, 10, 30, 45],
    (SPREAD, "hatd3", 1): [0, 10, 30, 45],   # final 45: above OMAD's best (40)
    (ANT, "omad", 0): [-5, 1, 2, 3],         # mean -3, 1, 2, 3
    (ANT, "omad", 1): [-1, 1, 2, 3],
    (ANT, "hatd3", 0): [-2, -1, 0, 0.5],     # final 0.5: OMAD crosses it between its first two evaluations
}
COVERAGE = {("omad", 0): 0.5, ("omad", 1): 0.7, ("hatd3", 0): 0.25}


def write_sweep(root):
    jobs = []
    for (env, algo, seed), values in RETURNS.items():
        rel = f"{env.replace(':', '_')}/{algo}/seed-{seed}"
        run = root / rel
        run.mkdir(parents=True)
        (run / "metrics.jsonl").write_text("".join(
            json.dumps({"step": s, "eval_return_mean": v, "eval_return_std": 1.0, "updates_per_s": 1.0,
                        "env_steps_per_s": 1.0}) + "\n" for s, v in zip(STEPS, values)))
        if env == ANT:
            (run / "coverage.json").write_text(json.dumps({
                "fraction": COVERAGE[algo, seed], "cells_visited": 0, "cells_total": 1600, "steps": 400,
                "max_steps": 250000, "extent": 20.0, "cell_size": 1.0, "outside": 0, "visited_cells": []}))
        jobs.append({"env": env, "algo": algo, "seed": seed, "dir": rel, "total_steps": 400})
    # A listed job that has not evaluated yet: counted, not averaged.
    jobs.append({"env": SPREAD, "algo": "omad", "seed": 2, "dir": "mpe_simple_spread_v3/omad/seed-2", "total_steps": 400})
    (root / "sweep.json").write_text(json.dumps({"format_version": 1, "jobs": jobs}))


def test_first_reach_interpolates_linearly():
    assert first_reach([100, 200, 300], [0, 15, 30], 22.5) == 250
    assert first_reach([100, 200, 300], [0, 15, 30], 15) == 200
    assert first_reach([100, 200, 300], [5, 15, 30], 0) == 100
    assert first_reach([100, 200, 300], [0, 15, 30], 31) is None


def test_report_numbers_are_exact(tmp_path):
    write_sweep(tmp_path)
    report = make_report(tmp_path)
    out = tmp_path / "report"
    spread = report["envs"][SPREAD]

    omad = spread["algos"]["omad"]
    assert omad["seeds"] == [0, 1] and omad["jobs"] == 3 and omad["budget"] == 400
    assert omad["curve"] == {"step": STEPS, "mean": [0, 15, 30, 40], "std": [0, 5, 10, 10]}
    assert (omad["final_return_mean"], omad["final_return_std"]) == (40, 10)
    assert (spread["algos"]["hasac"]["final_return_mean"], spread["algos"]["hasac"]["final_return_std"]) == (22.5, 2.5)

    # HASAC's final return 22.5: OMAD's mean curve passes it between 200 (15) and 300 (30):
    # 200 + (22.5 - 15) / (30 - 15) * 100 = 250 steps; ratio = 400 / 250 = 1.6.
    hasac = spread["sample_efficiency"]["hasac"]
    assert hasac["reached"] and hasac["omad_step"] == 250 and hasac["ratio"] == 1.6
    # HATD3's final return 45 is never reached (OMAD's best mean is 40): ratio < 400 / 400.
    hatd3 = spread["sample_efficiency"]["hatd3"]
    assert not hatd3["reached"] and hatd3["omad_step"] is None and hatd3["ratio_upper_bound"] == 1.0
    assert "ratio" not in hatd3
    # Ant: HATD3's 0.5 lies between OMAD's means -3 (step 100) and 1 (step 200):
    # 100 + (0.5 - (-3)) / (1 - (-3)) * 100 = 187.5; ratio = 400 / 187.5.
    ant = report["envs"][ANT]
    assert ant["sample_efficiency"]["hatd3"]["omad_step"] == 187.5
    assert ant["sample_efficiency"]["hatd3"]["ratio"] == pytest.approx(400 / 187.5)
    assert ant["algos"]["omad"]["coverage"]["mean"] == pytest.approx(0.6)
    assert ant["algos"]["omad"]["coverage"]["std"] == pytest.approx(0.1)
    assert ant["algos"]["hatd3"]["coverage"]["mean"] == 0.25
    assert "coverage" not in spread["algos"]["omad"]

    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(report))
    for env in (SPREAD, ANT):
        png = out / report["envs"][env]["plot"]
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "report.md").read_text()
    assert "| mpe:simple_spread_v3 | omad | 2 of 3 | 400 | 40.00 ± 10.00 |" in md
    assert "| mpe:simple_spread_v3 | hasac | 2 | 400 | 22.50 ± 2.50 |" in md
    assert "| mpe:simple_spread_v3 | hasac | 400 | 22.50 | 250 | 1.60x |" in md
    assert "| mpe:simple_spread_v3 | hatd3 | 400 | 45.00 | not reached in 400 | not reached (< 1.00x) |" in md
    assert "| mamujoco:Ant-2x4 | omad | 2 | 400 | 1600 cells of 1 m over +-20 m | 60.0% ± 10.0% |" in md
    assert "linearly interpolated" in md and "![mpe:simple_spread_v3](curves_mpe_simple_spread_v3.png)" in md


def test_report_cli(tmp_path, capsys):
    write_sweep(tmp_path / "sweep")
    assert main(["report", str(tmp_path / "sweep"), "--out", str(tmp_path / "rep")]) == 0
    assert "1.60x" in capsys.readouterr().out
    assert (tmp_path / "rep" / "report.md").is_file() and (tmp_path / "rep" / "curves_mamujoco_Ant-2x4.png").is_file()


def test_report_on_a_non_sweep_dir_fails_clearly(tmp_path, capsys):
    with pytest.raises(ReportError, match="not a sweep dir"):
        make_report(tmp_path)
    assert main(["report", str(tmp_path)]) == 2 and "no sweep.json" in capsys.readouterr().err
