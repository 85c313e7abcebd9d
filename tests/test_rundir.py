"""omad.core.rundir: the names of a run dir's files (they are what existing runs hold on disk), the
LATEST pointer, the lock, and the default run dir of `omad train`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from omad.core.rundir import (
    CheckpointError,
    RunDir,
    RunDirError,
    actor_file,
    default_run_dir,
    module_file,
    optimizer_file,
    safe_name,
    staging,
)


def test_paths_are_the_names_runs_hold_on_disk():
    run = RunDir("/r")
    named = {
        run.config: "config.json",
        run.spec: "spec.json",
        run.metrics: "metrics.jsonl",
        run.curves: "curves.png",
        run.tensorboard: "tensorboard",
        run.coverage: "coverage.json",
        run.lock: ".lock",
        run.checkpoints: "checkpoints",
        run.latest_file: "checkpoints/LATEST",
        run.checkpoint(300): "checkpoints/step-0000000300",
        run.checkpoint(12_345_678_901): "checkpoints/step-12345678901",
    }
    for path, name in named.items():
        assert path == Path("/r") / name
    assert actor_file("agent_0") == "actors/agent_0.safetensors"
    assert module_file("critic_target") == "train/modules/critic_target.safetensors"
    assert optimizer_file("actor_opt_2") == "train/optimizers/actor_opt_2.safetensors"
    assert staging(Path("/r/config.json")) == Path("/r/config.json.tmp")


def test_a_trained_run_dir_holds_every_named_file(tiny_run_dir):
    """The tiny run (300 steps, one checkpoint at 300) against the names: what the trainer writes is
    what the module names, and the checkpoint's manifest lists its actors by `actor_file`."""
    run = RunDir(tiny_run_dir)
    for path in (run.config, run.spec, run.metrics, run.curves, run.latest_file):
        assert path.is_file(), path
    assert run.tensorboard.is_dir() and run.has_checkpoint()
    assert run.latest() == run.checkpoint(300) and run.latest_step() == 300
    assert run.checkpoint_dirs() == [run.checkpoint(300)]
    manifest = json.loads((run.latest() / "manifest.json").read_text())
    agents = [a["name"] for a in json.loads(run.spec.read_text())["agents"]]
    assert {actor_file(a) for a in agents} <= set(manifest["files"])
    assert {module_file("actors"), module_file("critic"), optimizer_file("critic_opt")} <= set(manifest["files"])


def test_latest_round_trip_and_its_checks(tmp_path):
    run = RunDir(tmp_path / "run")
    with pytest.raises(CheckpointError, match="does not exist"):
        run.latest()
    run.checkpoints.mkdir(parents=True)
    with pytest.raises(CheckpointError, match="no checkpoint has been written"):
        run.latest()
    run.write_latest(4200)
    assert json.loads(run.latest_file.read_text()) == {"checkpoint": "step-0000004200"}
    assert run.latest() == run.checkpoint(4200) and run.latest_step() == 4200
    assert not staging(run.latest_file).exists()
    for text, words in [
        ('{"checkpoint": "../../elsewhere/step-0000000300"}', "not a checkpoint of this run"),
        ('{"checkpoint": "step-12"}', "not a checkpoint of this run"),
        ('{"checkpoint": 300}', "not a checkpoint of this run"),
        ('{"step": 300}', "unreadable checkpoint pointer"),
        ("step-0000000300", "unreadable checkpoint pointer"),
    ]:
        run.latest_file.write_text(text)
        with pytest.raises(CheckpointError, match=words):
            run.latest()


def test_checkpoint_dirs_are_complete_ones_oldest_first(tmp_path):
    run = RunDir(tmp_path)
    for name in ("step-0000000900", "step-0000000300", "step-0000001200.tmp", "LATEST-not-a-dir"):
        (run.checkpoints / name).mkdir(parents=True)
    (run.checkpoints / "step-0000000600").write_text("a file, not a checkpoint dir")
    assert run.checkpoint_dirs() == [run.checkpoint(300), run.checkpoint(900)]
    assert RunDir(tmp_path / "nothing").checkpoint_dirs() == []


def test_the_lock_refuses_a_second_trainer_and_clear_keeps_it(tmp_path):
    run = RunDir(tmp_path / "run")
    with run.locked():
        with pytest.raises(RunDirError, match="another process"), run.locked():
            pass
        run.clear(overwrite=False)  # only the lock file: empty
        (run.path / "config.json").write_text("{}")
        (run.checkpoints / "step-0000000100").mkdir(parents=True)
        with pytest.raises(RunDirError, match=r"already exists.*--resume.*--overwrite"):
            run.clear(overwrite=False)
        assert run.config.is_file()
        run.clear(overwrite=True)
        assert [p.name for p in run.path.iterdir()] == [".lock"]
    with run.locked():  # released when the block ended
        pass


@pytest.mark.parametrize(
    ("env", "algo", "seed", "expected"),
    [
        ("mpe:simple_spread_v3", "omad", 0, "runs/mpe_simple_spread_v3-omad-seed0"),
        ("mamujoco:HalfCheetah-2x3", "omad-gaussian", 12, "runs/mamujoco_HalfCheetah-2x3-omad-gaussian-seed12"),
        ("my_pkg.envs:parallel_env?n=3&map=a/b", "hasac", 1, "runs/my_pkg.envs_parallel_env_n_3_map_a_b-hasac-seed1"),
    ],
)
def test_default_run_dir_is_one_safe_name_under_runs(env, algo, seed, expected):
    path = default_run_dir(env, algo, seed)
    assert path == Path(expected) and len(path.parts) == 2
    assert safe_name("a b:c/d\\e") == "a_b_c_d_e"
