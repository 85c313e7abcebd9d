"""State coverage: cells counted for known positions, the 250k-step window, JSON round trip, and a
tiny Ant 2x4 run that writes coverage.json and keeps it exact across a resume."""

import json

import numpy as np
from helpers import tiny_config

from omad.train.coverage import Coverage, records_coverage
from omad.train.trainer import train


def test_cells_are_counted_for_known_positions():
    cov = Coverage(extent=2.0, cell_size=1.0, max_steps=100)  # 4 x 4 cells over [-2, 2]^2
    cov.record(np.array([[0.0, 0.0], [0.2, 0.9], [-1.5, -0.5], [1.99, -2.0], [2.0, 0.0], [-7.0, 1.0]]), step=0)
    # (0, 0) and (0.2, 0.9) share cell (2, 2); (-1.5, -0.5) -> (0, 1); (1.99, -2.0) -> (3, 0);
    # x = 2.0 is the grid's open upper edge and -7 is far outside: neither marks a cell.
    assert cov.visited.shape == (4, 4)
    assert sorted(map(tuple, np.argwhere(cov.visited).tolist())) == [(0, 1), (2, 2), (3, 0)]
    assert cov.cells_visited == 3 and cov.fraction == 3 / 16
    assert cov.outside == 2 and cov.steps == 6


def test_only_the_first_max_steps_count():
    cov = Coverage(extent=2.0, cell_size=1.0, max_steps=10)
    cov.record(np.array([[0.5, 0.5]] * 8), step=0)
    cov.record(np.array([[-1.5, -1.5], [1.5, 1.5], [-0.5, 1.5]]), step=8)  # only the first two are within the 10 steps
    cov.record(np.array([[-0.5, -0.5]]), step=11)
    assert cov.cells_visited == 3 and cov.steps == 10
    assert not cov.visited[1, 3] and not cov.visited[1, 1]


def test_json_round_trip(tmp_path):
    cov = Coverage(extent=3.0, cell_size=0.5, max_steps=50)
    cov.record(np.random.default_rng(0).uniform(-4, 4, size=(40, 2)), step=0)
    path = cov.save(tmp_path)
    assert path.name == "coverage.json" and json.loads(path.read_text())["fraction"] == cov.fraction
    back = Coverage.load(path)
    assert np.array_equal(back.visited, cov.visited)
    assert (back.steps, back.outside, back.extent, back.cell_size, back.max_steps) == (40, cov.outside, 3.0, 0.5, 50)


def test_only_ant_envs_record():
    assert records_coverage("mamujoco:Ant-2x4") and records_coverage("mamujoco:Ant-4x2")
    assert not records_coverage("mamujoco:HalfCheetah-2x3") and not records_coverage("mpe:simple_spread_v3")


ANT = dict(
    env="mamujoco:Ant-2x4",
    env_options={"max_episode_steps": 50},
    learning_starts=150,
    batch_size=32,
    eval_every=200,
    eval_episodes=1,
    checkpoint_every=100,
    denoising_steps=2,
    actor_hidden=[16, 16],
    critic_hidden=[16, 16],
    num_atoms=11,
)


def test_ant_run_writes_coverage_that_survives_resume(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(tiny_config(**ANT, total_steps=200), straight)
    cov = json.loads((straight / "coverage.json").read_text())
    assert 0 < cov["fraction"] <= 1 and cov["steps"] == 200 and cov["cells_visited"] >= 1

    # Interrupted at step 100, then resumed: the resumed run continues the saved coverage (marked here
    # with a far corner cell no Ant reaches in 200 steps) and ends with exactly the straight run's cells.
    train(tiny_config(**ANT, total_steps=100), resumed)
    half = json.loads((resumed / "coverage.json").read_text())
    assert half["steps"] == 100
    half["visited_cells"].append([0, 0])
    (resumed / "coverage.json").write_text(json.dumps(half))
    train(tiny_config(**ANT, total_steps=200), resumed, resume=True)
    after = json.loads((resumed / "coverage.json").read_text())
    assert after["steps"] == 200 and after["outside"] == cov["outside"]
    assert sorted(after["visited_cells"]) == sorted(cov["visited_cells"] + [[0, 0]])
