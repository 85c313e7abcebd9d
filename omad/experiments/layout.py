"""The sweep dir's names, read by the sweep runner and the torch-free reports.

sweep.json                                  the envs, algos, seeds, budget, shared config, jobs
<env>/<algo>/seed-<S>/                      one ordinary run dir per job
<env>/<algo>/seed-<S>/DONE.json             written when the job's training returned
<env>/<algo>/seed-<S>.log                   the job's own output
"""

from __future__ import annotations

import json
from pathlib import Path

from omad.core.rundir import safe_name

SWEEP_FILE = "sweep.json"
DONE_FILE = "DONE.json"


def job_dir(out: Path, env: str, algo: str, seed: int) -> Path:
    return Path(out) / safe_name(env) / algo / f"seed-{seed}"


def read_done(run_dir: Path) -> dict | None:
    try:
        return json.loads((Path(run_dir) / DONE_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return None
