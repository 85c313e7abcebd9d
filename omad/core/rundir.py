"""The run directory that `omad train` writes: every path of a run is named here and nowhere else.

    config.json                 the resolved training config
    spec.json                   the environment's agent specs
    metrics.jsonl               one record per evaluation
    coverage.json               Ant only: the torso's state coverage
    checkpoints/LATEST          names the newest complete checkpoint
    checkpoints/step-<N>/       one checkpoint (actors, training state, replay, envs)
    .lock                       held while a trainer writes the dir

Torch-free, so sweeps, reports and evaluation read runs without the training stack.
"""

from __future__ import annotations

CONFIG_FILE = "config.json"
SPEC_FILE = "spec.json"
METRICS_FILE = "metrics.jsonl"
COVERAGE_FILE = "coverage.json"
CHECKPOINTS_DIR = "checkpoints"
LATEST_FILE = "LATEST"
LOCK_FILE = ".lock"
