"""The helpers the study scripts import from bench/ (bench/sample_efficiency.py --plan, bench/k_cost.py)
exist and run: a refactor of bench/training.py once removed one and broke both scripts at import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
