"""The helpers bench scripts share or import from each other (bench.training's update rate for
bench.sample_efficiency --plan and bench.k_cost, the study's job hours, how a result records its
command, mutation-report parsing), checked in-process against hand computations."""

from __future__ import annotations

import json
import os
import shlex

import pytest

from bench.common import REPO, command, repo_relative
from bench.mutation import changed_lines, function_of, scored, tally
from bench.sample_efficiency import job_hours, run_costs
from bench.training import updates_per_second


def test_updates_per_second_runs_a_tiny_update():
    rate = updates_per_second(
        "mpe:simple_spread_v3",
        2,
        1,
        actor_hidden=[16],
        critic_hidden=[16],
        batch_size=32,
        denoising_steps=2,
        compile=False,
    )
    assert 0 < rate < 1e6


def test_a_recorded_command_names_paths_relative_to_the_repository(tmp_path):
    inside, outside = REPO / "bench" / "results" / "x", tmp_path / "out"
    recorded = command("bench.serving", ["--out", str(inside), f"--out={outside}", "--parts", "1,2", "a b"])
    expected_outside = os.path.relpath(outside, REPO)
    assert recorded == shlex.join(
        [
            "python",
            "-m",
            "bench.serving",
            "--out",
            "bench/results/x",
            f"--out={expected_outside}",
            "--parts",
            "1,2",
            "a b",
        ]
    )
    assert not any(os.path.isabs(part.partition("=")[2] or part) for part in shlex.split(recorded))
    assert repo_relative("bench/results") == "bench/results"  # a relative path is kept as given


def test_mutant_names_and_diffs_are_read_as_the_report_shows_them():
    assert (
        function_of("omad.train.critic.xǁCategoricalCriticǁlogits__mutmut_6")
        == "omad.train.critic.CategoricalCritic.logits"
    )
    assert (
        function_of("omad.train.critic.x_project_distribution__mutmut_12") == "omad.train.critic.project_distribution"
    )
    diff = "--- a.py\n+++ b.py\n@@ -1,2 +1,2 @@\n-    x = a + b\n-    y = 1\n+    x = a - b\n+    y = 2\n"
    assert changed_lines(diff) == ("x = a + b / y = 1", "x = a - b / y = 2")


def test_listed_survivors_leave_the_score_by_kind_and_the_rest_stay_survivors():
    def mutant(n, status, before="", after=""):
        return {"mutant": f"m.x_f__mutmut_{n}", "status": status, "before": before, "after": after}

    mutants = [
        mutant(1, "killed"),
        mutant(2, "timeout"),
        mutant(3, "survived", "a + b", "a - b"),  # listed equivalent
        mutant(4, "survived", "if cuda:", "if not cuda:"),  # listed CUDA-only
        mutant(5, "survived", "a + b", "a * b"),  # same function, another change: not listed
        mutant(6, "no tests", "y = 1", "y = 2"),
        mutant(7, "survived", "graphs = capture()", "graphs = None"),  # listed CUDA-only, any change of the line
    ]
    listed = {
        ("m.f", "a + b", "a - b"): ("equivalent", "why 1"),
        ("m.f", "if cuda:", "if not cuda:"): ("cuda", "why 2"),
        ("m.g", "a + b", "a * b"): ("equivalent", "another function"),
        ("m.f", "graphs = capture()", "*"): ("cuda", "why 3"),
    }
    counts, survivors, matched = tally(mutants, listed)
    assert counts == {
        "mutants": 7,
        "killed": 1,
        "timeout": 1,
        "equivalent": 1,
        "CUDA only": 2,
        "survived": 1,
        "no tests": 1,
    }
    assert [s["mutant"] for s in survivors] == ["m.x_f__mutmut_5", "m.x_f__mutmut_6"]
    assert [(m["kind"], m["why"]) for m in matched] == [("equivalent", "why 1"), ("cuda", "why 2"), ("cuda", "why 3")]
    assert scored(counts) == 4  # 7 mutants less the three listed: the score is 2 of 4


def test_job_hours_sums_every_run_and_every_resumed_segment(tmp_path):
    def write(algo: str, seed: int, totals: list[tuple[float, float]]) -> None:
        run = tmp_path / "env" / algo / f"seed-{seed}"
        run.mkdir(parents=True)
        lines = [json.dumps({"step": i, "seconds_update": u, "seconds_env": e}) for i, (u, e) in enumerate(totals)]
        (run / "metrics.jsonl").write_text("\n".join(lines) + "\n\n")  # a trailing blank line is skipped

    write("omad", 0, [(100.0, 20.0), (1000.0, 80.0)])  # one process: its last total, 1080 s
    write("omad", 1, [(500.0, 40.0), (1400.0, 100.0), (300.0, 60.0), (900.0, 120.0)])  # resumed: 1500 + 1020 s
    write("hasac", 0, [(0.0, 0.0)])
    # killed in warm-up (env time only), resumed into updates: the total rises, one clock drops
    write("hatd3", 0, [(0.0, 30.0), (0.0, 60.0), (200.0, 10.0)])
    assert job_hours(tmp_path) == pytest.approx((1080 + 1500 + 1020 + 60 + 210) / 3600)


def test_run_costs_are_per_interval_and_skip_the_interval_a_resume_restarts(tmp_path):
    def write(algo: str, seed: int, rows: list[tuple[float, float, int]]) -> None:
        run = tmp_path / "env" / algo / f"seed-{seed}"
        run.mkdir(parents=True)
        lines = [
            json.dumps({"step": 100 * (i + 1), "seconds_update": u, "seconds_env": e, "updates": n})
            for i, (u, e, n) in enumerate(rows)
        ]
        (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")

    # 50 updates in 10 s, env 2 s over 100 steps; then a resume (the clocks drop: no interval); then
    # 150 updates in 25 s, env 5 s over 100 steps
    write("omad", 0, [(10.0, 2.0, 50), (20.0, 4.0, 100), (5.0, 1.0, 150), (30.0, 6.0, 300)])
    write("omad", 1, [(0.0, 1.0, 0), (40.0, 3.0, 100)])  # 100 updates in 40 s; 2 s over 100 steps
    write("hasac", 0, [(0.0, 2.0, 0), (0.0, 4.0, 0)])  # warm-up only: no interval with updates
    assert run_costs(tmp_path) == {"omad": [[(5.0, 0.02), (6.0, 0.05)], [(2.5, 0.02)]]}


def test_study_jobs_run_common_seeds_first_then_short_budgets_first():
    from types import SimpleNamespace

    from bench.sample_efficiency import Arm, Task, job_order

    task = Task(
        "env",
        {},
        {
            "presets": Arm({"omad": 50_000, "hatd3": 50_000}, max_seeds={"hatd3": 2}),
            "control": Arm({"hasac": 15_000}),
        },
    )

    def jobs(algo: str, budget: int, seeds: list[int]) -> list:
        return [SimpleNamespace(algo=algo, seed=s, config={"total_steps": budget}) for s in seeds]

    per_arm = {
        "presets": jobs("omad", 50_000, [0, 1, 2, 3]) + jobs("hatd3", 50_000, [0, 1]),
        "control": jobs("hasac", 15_000, [0, 1, 2, 3]),
    }
    got = [(job.algo, job.seed) for job in job_order(task, per_arm, [0, 1, 2, 3])]
    assert got == [
        ("omad", 0), ("hatd3", 0), ("hasac", 0),
        ("omad", 1), ("hatd3", 1), ("hasac", 1),
        ("hasac", 2), ("hasac", 3),  # beyond the seeds every algo runs: the 15k budget first
        ("omad", 2), ("omad", 3),
    ]  # fmt: skip
