"""Every benchmark script in bench/ runs in its smoke mode, as a user runs it (`python -m bench.<name>
--smoke --out DIR` from the repository root), and writes result files of the structure its docs page
reads, with no absolute path in them. The smoke modes use tiny networks and budgets: they check the
scripts, they measure nothing (no number here is a measurement, and none is asserted beyond its sign)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO


def run_bench(module: str, *args: str, timeout_s: float = 900) -> str:
    done = subprocess.run(
        [sys.executable, "-m", f"bench.{module}", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, f"bench.{module} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def read_result(path: Path, out: Path) -> dict | list:
    """The JSON at `path`, after checking that neither it nor its Markdown twin names an absolute path."""
    for file in (path, path.with_suffix(".md")):
        if file.exists():
            text = file.read_text()
            for absolute in (out, REPO):  # (a relative path to `out` from the repository ends in it: ../../tmp/...)
                assert not re.search(rf"(?<![.\w]){re.escape(str(absolute))}", text), f"{file.name} names {absolute}"
    return json.loads(path.read_text())


def test_serving_smoke(tmp_path):
    run_bench("serving", "--smoke", "--out", str(tmp_path))
    result = read_result(tmp_path / "serving.json", tmp_path)
    assert result["benchmark"] == "serving"
    assert result["command"] == f"python -m bench.serving --smoke --out {os.path.relpath(tmp_path, REPO)}"
    assert {row["part"] for row in result["rows"]} == {1, 2, 3, 4, 5, 6}  # every part ran
    for row in result["rows"]:
        assert {"name", "threads", "batch", "median_us", "p99_us", "repeats"} <= row.keys()
        assert 0 < row["median_us"] <= row["p99_us"] and row["repeats"] > 0, row
    load = {(row["mode"], row["clients"]): row for row in result["rows"] if "clients" in row}
    assert {mode for mode, _ in load} == {"no-op gRPC", "no batching", "batching", "batching, inline", "reload"}
    reload = load["reload", 16]
    assert reload["errors"] == 0 and reload["models_seen"] == 2  # the reload swapped the model, failing nothing
    assert [q["batch"] for q in result["ratios"]] == [1, 64]
    assert all(t["met"] in (True, False, None) for t in result["targets"]) and result["targets"]
    parity = result["parity"]
    assert sorted(parity) == ["1", "64"] and all(0 <= e < 1e-4 for e in parity.values())
    assert (tmp_path / "serving.md").read_text().startswith("# Serving benchmark")


def test_training_smoke(tmp_path):
    run_bench("training", "--smoke", "--out", str(tmp_path))
    result = read_result(tmp_path / "training.json", tmp_path)
    variants = [(row["algo"], row["variant"]) for row in result["rows"]]
    assert variants == [
        ("omad", "K=8"),
        ("omad", "K=8 agents looped"),
        ("omad-gaussian", "defaults"),
        ("hasac", "defaults"),
        ("hatd3", "defaults"),
    ]
    for row in result["rows"]:
        assert row["env"] == "mpe:simple_spread_v3" and row["compile"] is False
        assert row["updates_per_s"] > 0 and row["gflop_per_update"] > 0 and len(row["matmul_shape"]) == 4
        # achieved GFLOP/s is FLOPs per update times the update rate, and the fraction its share of the limit
        assert row["achieved_gflops"] == pytest.approx(row["gflop_per_update"] * row["updates_per_s"])
        assert row["fraction_of_limit"] == pytest.approx(row["achieved_gflops"] / row["limit_gflops"])
    assert sorted(result["ratios"]) == [
        "mpe:simple_spread_v3 OMAD K=8 update cost / HASAC update cost",
        "mpe:simple_spread_v3 same, per sample (batch 256 vs 1000)",
        "mpe:simple_spread_v3 stacked/looped (K=8, eager)",
    ]
    assert "| env | algo | variant |" in (tmp_path / "training.md").read_text()


def test_train_split_smoke(tmp_path):
    run_bench("train_split", "--smoke", "--out", str(tmp_path))
    result = read_result(tmp_path / "train_split.json", tmp_path)
    # 300 steps, learning_starts 100 (above the batch of 32): an update after each of steps 100..300
    assert result["updates"] == 300 - 100 + 1
    assert list(result["seconds"]) == [
        "env stepping",
        "updates",
        "evaluation",
        "checkpointing",
        "rest of the loop (setup, logging, ...)",
    ]
    assert sum(result["seconds"].values()) == pytest.approx(result["total_s"])
    assert sum(result["fractions"].values()) == pytest.approx(1.0)
    assert all(result["seconds"][part] > 0 for part in ("env stepping", "updates", "evaluation"))
    assert math.isfinite(result["eval_return_mean"])


def test_coop_nav_scale_smoke(tmp_path):
    run_bench("coop_nav_scale", "--smoke", "--out", str(tmp_path))
    result = read_result(tmp_path / "coop_nav_scale.json", tmp_path)
    assert [r["N"] for r in result["results"]] == [3, 4]
    for r in result["results"]:
        assert r["episodes"] == 2 and r["steps_per_episode"] == 25
        assert list(r["policies"]) == ["random", "still", "scripted"]
        for p in r["policies"].values():
            mean, std = p["ours_mean_over_agents"]
            # HARL's scale sums over the N agents what ours averages
            assert p["harl_sum_over_agents"] == pytest.approx([r["N"] * mean, r["N"] * std])
            assert p["harl_per_step"] == pytest.approx(r["N"] * mean / 25)
            assert p["collisions_per_agent"] >= 0 and p["global_only"][0] <= 0


def test_k_cost_smoke(tmp_path):
    out = tmp_path / "k_cost"
    run_bench("k_cost", "--smoke", "--out", str(out), "--runs-dir", str(tmp_path / "runs"), "--workers", "1")
    result = read_result(out / "k_cost.json", tmp_path)
    assert result["env"] == "mamujoco:HalfCheetah-2x3" and result["runs_dir"] == os.path.relpath(
        tmp_path / "runs", REPO
    )
    for k in (1, 2):  # each K trained its own run, with the checkpoint its export read
        assert (tmp_path / "runs" / f"K-{k}").is_dir()
    assert [row["K"] for row in result["rows"]] == [1, 2]
    for row in result["rows"]:
        assert row["seeds"] == [0] and len(row["final_returns"]) == 1 and row["budget"] == 400
        low, point, high = row["final_iqm"][1], row["final_iqm"][0], row["final_iqm"][2]
        assert low <= point <= high
        assert row["updates_per_s"] > 0 and 0 < row["p50_ms"] <= row["p99_ms"] and row["actions_per_s_16"] > 0
    assert "| K | seeds |" in (out / "k_cost.md").read_text()


def test_entropy_gap_smoke(tmp_path):
    run_bench("entropy_gap", "--smoke", "--out", str(tmp_path))
    result = read_result(tmp_path / "entropy_gap.json", tmp_path)
    assert [r["K"] for r in result] == [2]
    for stage in ("untrained", "trained"):
        row = result[0][stage]
        assert row["gap"] == pytest.approx(row["entropy"] - row["bound"])
        assert 0.99 < row["grid_mass"] <= 1.0 + 1e-9


def test_sample_efficiency_quick(tmp_path):
    """The study driver's --quick mode on one task and seed: every arm's runs, then the combined report."""
    run_bench(
        "sample_efficiency",
        "--quick",
        "--tasks",
        "coop_nav_n3",
        "--seeds",
        "0",
        "--workers",
        "2",
        "--reps",
        "200",
        "--out",
        str(tmp_path),
    )
    result = read_result(tmp_path / "study.json", tmp_path)
    assert list(result) == ["coop_nav_n3"]
    task = result["coop_nav_n3"]
    assert sorted(task["arms"]) == ["control", "presets"]
    assert all(arm["job_hours"] > 0 for arm in task["arms"].values())
    assert (tmp_path / task["report"]).exists()  # recorded relative to the study dir
    assert sorted(task["finals"]) == ["deterministic", "stochastic"]  # both evaluation modes
    # the verdict's parts are wired to the arms' labels and the control budget's evaluations
    heads = [line.split("**")[1] for line in task["verdict"]]
    assert heads == [
        "OMAD against its Gaussian ablation.",
        "HASAC: its presets against OMAD's settings.",
        "HATD3: its presets against OMAD's settings.",
        "The paper's 2.5-5x.",
        "A larger budget.",
    ]
    assert not any("Left out" in line for line in task["verdict"]), task["verdict"]
    assert sorted(row["algo"] for row in task["cost"]) == ["hasac", "hatd3", "omad", "omad-gaussian"]
    assert all(row["hours_gpu"] is None for row in task["cost"])  # the GPU check measured another env
    assert "## Verdict" in (tmp_path / "study.md").read_text()


def test_mutation_driver_imports_as_a_module():
    """`make mutation` takes hours; here only its entry point: the module imports and parses its flags."""
    assert "--report-only" in run_bench("mutation", "--help", timeout_s=120)
