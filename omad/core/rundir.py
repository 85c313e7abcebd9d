"""The run directory that `omad train` writes: every path of a run is named here and nowhere else.

    config.json                 the resolved training config (omad.train.config)
    spec.json                   the environment's agent specs
    metrics.jsonl               one record per evaluation
    curves.png                  the evaluation return over training
    tensorboard/                TensorBoard event files of the same records
    coverage.json               Ant only: the torso's state coverage
    .lock                       held while a trainer writes the dir
    checkpoints/LATEST          {"checkpoint": "step-<N>"}: the newest complete checkpoint
    checkpoints/step-<N>/       one checkpoint, N zero-padded to 10 digits:
        manifest.json                       format version, step, sha256 of every file below
        actors/<agent>.safetensors          the agent's deployable policy (+ hparams metadata)
        train/modules/<name>.safetensors    each network of the algorithm (state dict)
        train/optimizers/<name>.safetensors each optimizer's moments
        train/extra.safetensors             loose tensors (e.g. log alpha)
        train/rng.safetensors               torch's RNG state
        replay.safetensors                  the replay buffer
        envs.safetensors                    the env copies' actions so far in their episodes
        train_state.json                    counters, optimizer hyper-parameters, numpy RNG, env snapshot

A file is written under its staging name (`staging`) and renamed into place, so a reader never sees
half a file. What the checkpoint files hold is omad.train.checkpoint's business; their names are here.
Torch-free, so sweeps, reports and evaluation read runs without the training stack.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

from omad.core.errors import OmadError

CONFIG_FILE = "config.json"
SPEC_FILE = "spec.json"
METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"
TENSORBOARD_DIR = "tensorboard"
COVERAGE_FILE = "coverage.json"
LOCK_FILE = ".lock"
CHECKPOINTS_DIR = "checkpoints"
LATEST_FILE = "LATEST"
CHECKPOINT_NAME = re.compile(r"step-(\d{10,})")  # checkpoints/<name>: LATEST may name nothing else

# Inside a checkpoint dir, relative to it (the manifest lists files by these paths).
MANIFEST_FILE = "manifest.json"
TRAIN_STATE_FILE = "train_state.json"
REPLAY_FILE = "replay.safetensors"
ENVS_FILE = "envs.safetensors"
EXTRA_FILE = "train/extra.safetensors"
RNG_FILE = "train/rng.safetensors"


def actor_file(agent: str) -> str:
    return f"actors/{agent}.safetensors"


def module_file(name: str) -> str:
    return f"train/modules/{name}.safetensors"


def optimizer_file(name: str) -> str:
    return f"train/optimizers/{name}.safetensors"


class RunDirError(OmadError, RuntimeError):
    """A run dir is missing, busy, or holds something other than a run; the message names the path."""


class CheckpointError(OmadError, RuntimeError):
    """A checkpoint file is missing, corrupt or does not match; the message names the file."""


def safe_name(text: str) -> str:
    """A file or directory name for an id: every character other than letters, digits, '.', '_', '-'
    becomes '_' (`mpe:simple_spread_v3` -> `mpe_simple_spread_v3`)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)


def default_run_dir(env: str, algo: str, seed: int) -> Path:
    """Where `omad train` writes when no --out is given: runs/<env>-<algo>-seed<S>, filesystem-safe."""
    return Path("runs") / safe_name(f"{env}-{algo}-seed{seed}")


def staging(path: Path) -> Path:
    """The name `path` is written under before it is renamed into place."""
    return path.with_name(path.name + ".tmp")


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` under its staging name, then rename it into place."""
    tmp = staging(path)
    tmp.write_text(text)
    tmp.replace(path)


def checkpoint_name(step: int) -> str:
    return f"step-{step:010d}"


class RunDir:
    """The paths of one run dir (nothing is read or created by building one)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def config(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def spec(self) -> Path:
        return self.path / SPEC_FILE

    @property
    def metrics(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def curves(self) -> Path:
        return self.path / CURVES_FILE

    @property
    def tensorboard(self) -> Path:
        return self.path / TENSORBOARD_DIR

    @property
    def coverage(self) -> Path:
        return self.path / COVERAGE_FILE

    @property
    def lock(self) -> Path:
        return self.path / LOCK_FILE

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS_DIR

    @property
    def latest_file(self) -> Path:
        return self.checkpoints / LATEST_FILE

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / checkpoint_name(step)

    def checkpoint_dirs(self) -> list[Path]:
        """The complete checkpoint dirs, oldest first (staging dirs left by a killed run excluded)."""
        if not self.checkpoints.is_dir():
            return []
        return sorted(p for p in self.checkpoints.iterdir() if p.is_dir() and CHECKPOINT_NAME.fullmatch(p.name))

    def has_checkpoint(self) -> bool:
        """Whether the dir holds a config and a checkpoint pointer: a run that can be resumed."""
        return self.config.is_file() and self.latest_file.is_file()

    # -- the LATEST pointer ------------------------------------------------------------------------
    def write_latest(self, step: int) -> None:
        """Point LATEST at checkpoint `step`, atomically (call once the checkpoint dir is complete)."""
        write_atomic(self.latest_file, json.dumps({"checkpoint": checkpoint_name(step)}, indent=2) + "\n")

    def latest(self) -> Path:
        """The checkpoint dir LATEST names (unverified: omad.train.checkpoint checks its files)."""
        if not self.path.is_dir():
            raise CheckpointError(f"run dir {self.path} does not exist")
        pointer = self.latest_file
        try:
            name = json.loads(pointer.read_text())["checkpoint"]
        except FileNotFoundError:
            raise CheckpointError(f"{pointer}: no checkpoint has been written in this run dir yet") from None
        except (ValueError, KeyError, TypeError) as err:
            raise CheckpointError(f"{pointer}: unreadable checkpoint pointer ({err})") from None
        if not isinstance(name, str) or not CHECKPOINT_NAME.fullmatch(name):
            raise CheckpointError(f"{pointer}: names {name!r}, not a checkpoint of this run (step-<N>)")
        return self.checkpoints / name

    def latest_step(self) -> int:
        """The env step of the checkpoint LATEST names."""
        match = CHECKPOINT_NAME.fullmatch(self.latest().name)
        assert match is not None  # `latest` accepts checkpoint names only
        return int(match.group(1))

    # -- one trainer at a time -----------------------------------------------------------------------
    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Create the dir and hold its lock file while training, so a second trainer of the same dir is
        refused (the kernel releases the lock when the process ends, however it ends)."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.lock, "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunDirError(
                    f"{self.path} is being trained by another process; wait for it or choose another --out"
                ) from None
            yield

    def clear(self, overwrite: bool) -> None:
        """Empty the dir for a fresh run (its lock file stays, held by this trainer); refuse a dir with
        contents unless `overwrite`."""
        contents = [p for p in self.path.iterdir() if p.name != LOCK_FILE]
        if contents and not overwrite:
            raise RunDirError(
                f"output dir {self.path} already exists; pass --resume to continue it or --overwrite to replace it"
            )
        for path in contents:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
