"""Shared fixtures. `tiny_run_dir` trains a few hundred steps of a tiny OMAD on Cooperative Navigation
once per session, so export/serve/eval tests work on a real run dir in seconds."""

from __future__ import annotations

from pathlib import Path

import pytest

TINY = dict(
    env="mpe:simple_spread_v3",
    total_steps=300,
    learning_starts=100,
    batch_size=32,
    eval_every=300,
    eval_episodes=2,
    checkpoint_every=300,
    denoising_steps=4,
    actor_hidden=[32, 32],
    critic_hidden=[32, 32],
    num_atoms=21,
    progress=False,
    seed=0,
)


def tiny_config(**overrides):
    from omad_train.config import build_config

    return build_config(TINY, **overrides)


@pytest.fixture(scope="session")
def tiny_run_dir(tmp_path_factory):
    from omad_train.trainer import train

    out = tmp_path_factory.mktemp("runs") / "tiny"
    train(tiny_config(), out)
    return out


@pytest.fixture(scope="session")
def tiny_export_dir(tiny_run_dir, tmp_path_factory):
    """`omad export` of the tiny run (3 agents, K = 4): an export dir for runtime, serving and eval tests."""
    from exporters.onnx_export import export_run

    out = tmp_path_factory.mktemp("exports") / "tiny"
    export_run(tiny_run_dir, out)
    return out


@pytest.fixture(scope="module")
def model_path(tiny_export_dir) -> Path:
    """The first agent's graph of the tiny export (what the serving tests serve)."""
    from exporters.runtime import read_manifest

    return Path(tiny_export_dir) / read_manifest(tiny_export_dir)["agents"][0]["file"]


@pytest.fixture(scope="module")
def policy(model_path):
    from exporters.runtime import OnnxPolicy

    return OnnxPolicy(model_path)
