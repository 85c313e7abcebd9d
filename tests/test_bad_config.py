"""Bad configuration gets one line and exit status 2, never a traceback, and nothing is written.

One table of what a new user tried: each row is the `omad` arguments, how the run dir
is prepared, and a word the error line must contain.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from omad.cli import main

TINY_FLAGS = [
    "--env", "mpe:simple_spread_v3", "--total-steps", "100", "--learning-starts", "50", "--batch-size", "16",
    "--eval-every", "100", "--eval-episodes", "1", "--checkpoint-every", "100", "--denoising-steps", "2",
    "--actor-hidden", "[16]", "--critic-hidden", "[16]", "--num-atoms", "11", "--progress", "false",
]  # fmt: skip


def saved_config(text: str):
    def prepare(run: Path, _tiny_run_dir: Path) -> None:
        run.mkdir()
        (run / "config.json").write_text(text)

    return prepare


def locked_by_another_trainer(run: Path, _tiny_run_dir: Path):
    run.mkdir()
    lock = open(run / ".lock", "a")  # noqa: SIM115 - held until the test ends, like a running trainer
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return lock


def config_file(text: str):
    def prepare(run: Path, _tiny_run_dir: Path) -> None:
        run.mkdir()
        (run / "cfg.yaml").write_text(text)

    return prepare


def copy_of_the_tiny_run(run: Path, tiny_run_dir: Path) -> None:
    shutil.copytree(tiny_run_dir, run)


def latest_outside_the_run(run: Path, tiny_run_dir: Path) -> None:
    shutil.copytree(tiny_run_dir, run)
    other = run.parent / "other" / "checkpoints"
    shutil.copytree(run / "checkpoints", other)
    (run / "checkpoints" / "LATEST").write_text(json.dumps({"checkpoint": "../../other/checkpoints/step-0000000300"}))


TRAIN = ["train", "--out", "{run}"]
CASES = [
    # (id, omad arguments, preparation of the run dir, the error line names)
    ("hidden-zero", [*TRAIN, *TINY_FLAGS, "--actor-hidden", "[0]"], None, "actor_hidden"),
    ("hidden-empty", [*TRAIN, *TINY_FLAGS, "--actor-hidden", "[]"], None, "actor_hidden"),
    ("hidden-negative", [*TRAIN, *TINY_FLAGS, "--critic-hidden", "[-4]"], None, "critic_hidden"),
    ("env-option-value", [*TRAIN, *TINY_FLAGS, "--env-options", "{N: 0}"], None, "option N"),
    ("env-option-unknown", [*TRAIN, *TINY_FLAGS, "--env-options", "{bogus: 1}"], None, "unknown option 'bogus'"),
    ("env-unknown", [*TRAIN, *TINY_FLAGS, "--env", "mpe:nothing"], None, "unknown env id"),
    ("seed-negative", [*TRAIN, *TINY_FLAGS, "--seed", "-1"], None, "seed"),
    ("lr-inf", [*TRAIN, *TINY_FLAGS, "--lr-actor", ".inf"], None, "lr_actor"),
    ("budget-nan", [*TRAIN, *TINY_FLAGS, "--cost-budget-per-dim", "nan"], None, "cost_budget_per_dim"),
    ("reward-scale-overflow", [*TRAIN, *TINY_FLAGS, "--reward-scale", "1e400"], None, "reward_scale"),
    ("batch-over-buffer", [*TRAIN, *TINY_FLAGS, "--buffer-size", "4", "--batch-size", "8"], None, "buffer_size"),
    ("value-range", [*TRAIN, *TINY_FLAGS, "--v-min", "400"], None, "v_min"),
    ("field-of-another-algo", [*TRAIN, "--env", "mpe:simple_spread_v3", "--algo", "hasac", "--denoising-steps", "4"],
     None, "'denoising_steps' (--denoising-steps) does not apply to algo hasac: it is a field of omad"),
    ("field-of-another-algo-in-file", [*TRAIN, "--env", "mpe:simple_spread_v3", "--config", "{run}/cfg.yaml"],
     config_file("algo: hatd3\nalpha_init: 0.3\n"), "'alpha_init' (--alpha-init) does not apply to algo hatd3"),
    ("field-of-another-algo-on-resume", [*TRAIN, "--resume", "--explore-std", "0.3"], copy_of_the_tiny_run,
     "'explore_std' (--explore-std) does not apply to algo omad: it is a field of hatd3"),
    ("algo-changed-on-resume", [*TRAIN, "--resume", "--algo", "hasac"], copy_of_the_tiny_run,
     "--algo 'hasac' differs from the run's saved 'omad'"),
    ("compile-without-a-compiled-part", [*TRAIN, "--env", "mpe:simple_spread_v3", "--algo", "hatd3", "--compile", "true"],
     None, "'compile': hatd3 has nothing to compile"),
    ("resume-not-json", [*TRAIN, "--resume"], saved_config("{gamma: "), "config.json"),
    ("resume-empty", [*TRAIN, "--resume"], saved_config(""), "config.json"),
    ("resume-bad-value", [*TRAIN, "--resume"], saved_config('{"gamma": 5}'), "gamma"),
    ("resume-unknown-key", [*TRAIN, "--resume"], saved_config('{"bogus": 1}'), "bogus"),
    ("resume-list", [*TRAIN, "--resume"], saved_config("[1, 2]"), "mapping"),
    ("resume-no-run", [*TRAIN, "--resume"], None, "not a run dir"),
    ("run-dir-locked", [*TRAIN, *TINY_FLAGS, "--overwrite"], locked_by_another_trainer, "another process"),
    ("latest-outside", [*TRAIN, "--resume", "--total-steps", "400"], latest_outside_the_run, "not a checkpoint of this run"),
    ("token-file-missing", ["eval", "--env", "mpe:simple_spread_v3", "--servers", "127.0.0.1:1", "--token-file", "{run}/missing.txt"],
     None, "--token-file"),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "prepare", "names"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_configuration_is_one_line(tmp_path, tiny_run_dir, capsys, argv, prepare, names):
    run = tmp_path / "run"
    held = prepare(run, tiny_run_dir) if prepare else None
    before = sorted(p.relative_to(run).as_posix() for p in run.rglob("*")) if run.exists() else None
    code = main([a.replace("{run}", str(run)) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and names in lines[0], err
    after = sorted(p.relative_to(run).as_posix() for p in run.rglob("*")) if run.exists() else None
    assert after == before, "nothing may be written"
    if held:
        held.close()


def test_equal_weights_give_equal_actor_files(tmp_path):
    """The library writes safetensors metadata in hash-map order; the checkpoint writer sorts it."""
    from safetensors import safe_open

    from omad.train.checkpoint import save_with_metadata

    tensors = {"w": torch.arange(6.0).view(2, 3), "b": torch.ones(3)}
    meta = {"format_version": "1", "agent": "agent_0", "actor": "diffusion", "hparams": '{"hidden": [4]}'}
    digests = set()
    for i in range(12):
        save_with_metadata(tensors, tmp_path / f"{i}.safetensors", dict(reversed(meta.items())) if i % 2 else meta)
        digests.add(hashlib.sha256((tmp_path / f"{i}.safetensors").read_bytes()).hexdigest())
    assert len(digests) == 1
    with safe_open(str(tmp_path / "0.safetensors"), framework="pt") as f:
        assert f.metadata() == meta
        assert torch.equal(f.get_tensor("w"), tensors["w"]) and torch.equal(f.get_tensor("b"), tensors["b"])


def test_identical_runs_write_identical_actor_files(tmp_path):
    for name in ("a", "b"):
        assert main(["train", "--out", str(tmp_path / name), *TINY_FLAGS]) == 0
    files = sorted((tmp_path / "a" / "checkpoints" / "step-0000000100" / "actors").glob("*.safetensors"))
    assert len(files) == 3
    for path in files:
        twin = tmp_path / "b" / path.relative_to(tmp_path / "a")
        assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(twin.read_bytes()).digest(), path.name
