"""The helpers the study scripts import from bench/ (bench/sample_efficiency.py --plan, bench/k_cost.py)
exist and run: a refactor of bench/training.py once removed one and broke both scripts at import."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def test_updates_per_second_runs_a_tiny_update():
    sys.path.insert(0, str(BENCH))
    try:
        from training import updates_per_second
    finally:
        sys.path.remove(str(BENCH))
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


def test_study_scripts_import():
    for script in ("sample_efficiency.py", "k_cost.py"):
        out = subprocess.run(
            [sys.executable, str(BENCH / script), "--help"], capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0, out.stderr


def test_job_hours_sums_every_run_and_every_resumed_segment(tmp_path):
    sys.path.insert(0, str(BENCH))
    try:
        from sample_efficiency import job_hours
    finally:
        sys.path.remove(str(BENCH))

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
