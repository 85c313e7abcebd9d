"""Run-dir checkpoints: safetensors + JSON, written atomically, verified on load. The files' names
and the LATEST pointer are omad.core.rundir's; what each file holds is written and read here.

Each file holds one thing under its own names, so nothing is found by cutting key prefixes. A
checkpoint directory is written under its staging name and renamed when complete; LATEST is replaced
atomically afterwards, so a killed run always leaves a complete checkpoint behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import load_file as load_numpy
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import load_file as load_torch
from safetensors.torch import save as serialize_torch
from safetensors.torch import save_file as save_torch

from omad.core.rundir import (
    ENVS_FILE,
    EXTRA_FILE,
    MANIFEST_FILE,
    REPLAY_FILE,
    RNG_FILE,
    TRAIN_STATE_FILE,
    CheckpointError,
    RunDir,
    actor_file,
    module_file,
    optimizer_file,
    staging,
)

if TYPE_CHECKING:
    from omad.core.envs import VecEnv
    from omad.train.replay import ReplayBuffer

FORMAT_VERSION = 1
# Version of the resumable training state (train/, replay, envs, train_state.json); 2 = one file per part.
TRAIN_STATE_VERSION = 2
KEEP_CHECKPOINTS = 2


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_with_metadata(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """A safetensors file whose header lists the metadata in sorted key order. The library writes
    metadata in hash-map order, which differs between processes; sorted, equal weights and metadata
    give byte-identical files (and equal sha256, which exports record)."""
    data = serialize_torch(tensors, metadata=metadata)
    size = int.from_bytes(data[:8], "little")
    header = json.dumps(json.loads(data[8 : 8 + size]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # the format aligns the tensor data to 8 bytes
    path.write_bytes(len(header).to_bytes(8, "little") + header + data[8 + size :])


# -- optimizers as flat tensors + JSON (no pickle) ----------------------------------------------
def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """The optimizer's per-parameter state as tensors named "<param index>.<state key>", and the JSON
    (param groups, which keys each parameter has) from which `restore_optimizer` names them again."""
    sd = opt.state_dict()
    tensors = {
        f"{idx}.{key}": value.detach().clone().contiguous()
        for idx, per_param in sd["state"].items()
        for key, value in per_param.items()
    }
    state_keys = {str(idx): sorted(per_param) for idx, per_param in sd["state"].items()}
    return tensors, {"param_groups": sd["param_groups"], "state_keys": state_keys}


def restore_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state = {int(idx): {key: tensors[f"{idx}.{key}"] for key in keys} for idx, keys in meta["state_keys"].items()}
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


# -- writing --------------------------------------------------------------------------------------
TorchFile = tuple[dict[str, torch.Tensor], dict[str, str] | None]  # tensors, metadata


def save_checkpoint(
    run_dir: Path,
    step: int,
    torch_files: dict[str, TorchFile],
    numpy_files: dict[str, dict[str, np.ndarray]],
    train_state: dict[str, Any],
) -> Path:
    """Write checkpoints/step-<step>/ from files given by their path inside it, then point LATEST at it."""
    run = RunDir(run_dir)
    run.checkpoints.mkdir(parents=True, exist_ok=True)
    final = run.checkpoint(step)
    tmp = staging(final)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for rel, (tensors, meta) in torch_files.items():
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        contiguous = {k: v.contiguous() for k, v in tensors.items()}
        if meta:
            save_with_metadata(contiguous, tmp / rel, meta)
        else:
            save_torch(contiguous, str(tmp / rel))
    for rel, arrays in numpy_files.items():
        save_numpy({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp / rel))
    (tmp / TRAIN_STATE_FILE).write_text(json.dumps(train_state) + "\n")
    files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
    manifest = {"format_version": FORMAT_VERSION, "step": step, "files": {f: sha256_file(tmp / f) for f in files}}
    (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    run.write_latest(step)
    for old in run.checkpoint_dirs()[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old)
    return final


# -- one agent's deployable policy ------------------------------------------------------------------
@dataclass(frozen=True)
class ActorFile:
    """What `actors/<agent>.safetensors` holds: the actor kind, the hyper-parameters that rebuild the
    network (omad.train.policies.AgentPolicy), and its weights."""

    kind: str
    hparams: dict[str, Any]
    tensors: dict[str, torch.Tensor]

    def entry(self, agent: str) -> TorchFile:
        meta = {"format_version": str(FORMAT_VERSION), "agent": agent, "actor": self.kind}
        return self.tensors, {**meta, "hparams": json.dumps(self.hparams)}


def read_actor(path: Path, known_kinds: list[str]) -> ActorFile:
    """An actor file of a verified checkpoint; its kind must be one of `known_kinds`."""
    meta = load_metadata(path)
    kind = meta.get("actor", "")
    if kind not in known_kinds:
        raise CheckpointError(f"{path}: unknown actor kind {kind!r} (known: {sorted(known_kinds)})")
    try:
        hparams = json.loads(meta["hparams"])
    except (KeyError, ValueError) as err:
        raise CheckpointError(f"{path}: missing or corrupt 'hparams' metadata ({err})") from None
    return ActorFile(kind, hparams, load_tensors(path))


# -- the training state -----------------------------------------------------------------------------
class Checkpointable(Protocol):
    """What a checkpoint holds of an algorithm (omad.train.algos.common.Algorithm)."""

    num_updates: int

    def modules(self) -> dict[str, torch.nn.Module]: ...

    def optimizers(self) -> dict[str, torch.optim.Optimizer]: ...

    def extra_tensors(self) -> dict[str, torch.Tensor]: ...


@dataclass(frozen=True)
class LoopCounters:
    """The training loop's counters a checkpoint carries."""

    step: int
    update_debt: float
    episodes_done: int
    last_train_return: float
    num_updates: int


def save_training(
    run_dir: Path,
    counters: LoopCounters,
    algo: Checkpointable,
    actors: dict[str, ActorFile],
    buffer: ReplayBuffer,
    envs: VecEnv,
    rng: np.random.Generator,
    device: torch.device,
) -> Path:
    """A checkpoint of everything a resumed run needs to continue exactly, and of every agent's
    deployable policy. Every tensor is saved from the CPU, so a checkpoint does not depend on the
    training device."""
    files: dict[str, TorchFile] = {actor_file(agent): actor.entry(agent) for agent, actor in actors.items()}
    for name, module in algo.modules().items():
        files[module_file(name)] = (module.state_dict(), None)
    opt_meta = {}
    for name, opt in algo.optimizers().items():
        tensors, opt_meta[name] = optimizer_tensors(opt)
        files[optimizer_file(name)] = (tensors, None)
    files[EXTRA_FILE] = ({k: v.detach().clone().reshape(-1) for k, v in algo.extra_tensors().items()}, None)
    rng_state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        rng_state["cuda"] = torch.cuda.get_rng_state(device)
    files[RNG_FILE] = (rng_state, None)
    files = {name: ({k: v.detach().cpu() for k, v in t.items()}, meta) for name, (t, meta) in files.items()}
    env_meta, env_arrays = envs.snapshot()
    state = {
        "format_version": TRAIN_STATE_VERSION,
        "step": counters.step,
        "update_debt": counters.update_debt,
        "episodes_done": counters.episodes_done,
        "last_train_return": counters.last_train_return,
        "num_updates": counters.num_updates,
        "numpy_rng": rng.bit_generator.state,
        "optimizers": opt_meta,
        "replay": buffer.state_meta(),
        "envs": env_meta,
    }
    arrays = {REPLAY_FILE: buffer.state_arrays(), ENVS_FILE: env_arrays}
    return save_checkpoint(run_dir, counters.step, files, arrays, state)


def restore_training(
    run_dir: Path,
    algo: Checkpointable,
    buffer: ReplayBuffer,
    envs: VecEnv,
    rng: np.random.Generator,
    device: torch.device,
) -> LoopCounters:
    """Load the latest checkpoint into the algorithm, replay buffer, env copies and RNGs (torch's
    and `rng`); returns the loop's counters."""
    ckpt = latest_checkpoint(run_dir)
    state = json.loads((ckpt / TRAIN_STATE_FILE).read_text())
    if state.get("format_version") != TRAIN_STATE_VERSION:
        raise CheckpointError(
            f"{ckpt}: training state format {state.get('format_version')!r}, this omad resumes format "
            f"{TRAIN_STATE_VERSION} (its policies still export and evaluate)"
        )
    for name, module in algo.modules().items():
        path = ckpt / module_file(name)
        load_into(module, load_tensors(path), path)
    for name, opt in algo.optimizers().items():
        restore_optimizer(opt, load_tensors(ckpt / optimizer_file(name)), state["optimizers"][name])
    extra = load_tensors(ckpt / EXTRA_FILE)
    with torch.no_grad():
        for k, v in algo.extra_tensors().items():
            v.copy_(extra[k].reshape(v.shape))
    rng_state = load_tensors(ckpt / RNG_FILE)
    torch.set_rng_state(rng_state["torch"])
    if device.type == "cuda" and "cuda" in rng_state:  # a CUDA run's stream; on the CPU it has none
        torch.cuda.set_rng_state(rng_state["cuda"], device)
    rng.bit_generator.state = state["numpy_rng"]
    buffer.load_state(load_arrays(ckpt / REPLAY_FILE), state["replay"])
    envs.restore(state["envs"], load_arrays(ckpt / ENVS_FILE))
    return LoopCounters(
        state["step"], state["update_debt"], state["episodes_done"], state["last_train_return"], state["num_updates"]
    )


# -- reading --------------------------------------------------------------------------------------
def latest_checkpoint(run_dir: Path, files: list[str] | None = None) -> Path:
    """The newest complete checkpoint, verified (only `files`, relative paths, when given)."""
    path = RunDir(run_dir).latest()
    verify_checkpoint(path, files)
    return path


def verify_checkpoint(path: Path, files: list[str] | None = None) -> dict:
    """Check the manifest's format version and the sha256 of every file (or of `files`); return the manifest."""
    mpath = path / MANIFEST_FILE
    try:
        manifest = json.loads(mpath.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{mpath}: missing; {path} is not a complete checkpoint") from None
    except ValueError as err:
        raise CheckpointError(f"{mpath}: corrupt JSON ({err})") from None
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{mpath}: checkpoint format version {version!r}, this omad reads version {FORMAT_VERSION}"
        )
    for rel, digest in manifest["files"].items():
        if files is not None and rel not in files:
            continue
        f = path / rel
        if not f.is_file():
            raise CheckpointError(f"{f}: listed in the manifest but missing")
        if sha256_file(f) != digest:
            raise CheckpointError(f"{f}: sha256 does not match the manifest (file corrupt or modified)")
    return manifest


def load_tensors(path: Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Tensors onto `device` (the CPU by default), whatever device saved them."""
    try:
        return load_torch(str(path), device=device)
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: cannot read safetensors file ({err})") from None


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    try:
        return load_numpy(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: cannot read safetensors file ({err})") from None


def load_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: cannot read safetensors file ({err})") from None


def load_into(module: torch.nn.Module, tensors: dict[str, torch.Tensor], source: Path) -> None:
    """Load a state dict into a module, naming the file and tensor on any mismatch."""
    own = module.state_dict()
    missing = sorted(set(own) - set(tensors))
    if missing:
        raise CheckpointError(f"{source}: missing tensors {missing[:5]}")
    for k, v in own.items():
        if tensors[k].shape != v.shape:
            raise CheckpointError(
                f"{source}: tensor '{k}' has shape {tuple(tensors[k].shape)}, the configured model expects {tuple(v.shape)}"
            )
    module.load_state_dict({k: tensors[k] for k in own})
