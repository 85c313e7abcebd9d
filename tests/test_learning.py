"""Learning tests (slow: run on purpose with `pytest -m slow`)."""

import json

import pytest
from helpers import tiny_config

from omad.core.rollout import random_baseline
from omad.train.trainer import train


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["omad", "hasac", "hatd3", "omad-gaussian"])
def test_cooperative_navigation_beats_the_random_policy(tmp_path, algo):
    cfg = tiny_config(
        algo=algo,
        total_steps=8000,
        learning_starts=1000,
        batch_size=128,
        eval_every=2000,
        eval_episodes=10,
        checkpoint_every=8000,
        denoising_steps=4,
        actor_hidden=[128, 128],
        critic_hidden=[128, 128],
        num_atoms=51,
    )
    train(cfg, tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    random = random_baseline(cfg.env, episodes=20, seed=123)
    final = records[-1]["eval_return_mean"]
    print(f"random {random.mean:.2f} +- {random.std:.2f}; {algo} after {cfg.total_steps} steps {final:.2f}")
    assert final > random.mean + 2 * random.std / 20**0.5 + 3.0
