"""Run-dir checkpoints: safetensors + JSON, written atomically, verified on load.

Layout of a run dir:
    config.json, spec.json                  resolved config and agent specs
    checkpoints/step-<N>/manifest.json      format version, step, sha256 of every file below
    checkpoints/step-<N>/actors/<agent>.safetensors   deployable per-agent policy (+ hparams metadata)
    checkpoints/step-<N>/train/modules/<name>.safetensors     each network of the algorithm (state dict)
    checkpoints/step-<N>/train/optimizers/<name>.safetensors  each optimizer's moments
    checkpoints/step-<N>/train/extra.safetensors              loose tensors (e.g. log alpha)
    checkpoints/step-<N>/train/rng.safetensors                torch's RNG state
    checkpoints/step-<N>/replay.safetensors replay buffer snapshot
    checkpoints/step-<N>/envs.safetensors   the env copies' actions so far in their episodes
    checkpoints/step-<N>/train_state.json   counters, optimizer hyper-parameters, numpy RNG, env snapshot
Each file holds one thing under its own names, so nothing is found by cutting key prefixes.
    checkpoints/LATEST                      name of the newest complete checkpoint
A checkpoint directory is written under a temporary name and renamed when complete; LATEST is
replaced atomically afterwards, so a killed run always leaves a complete checkpoint behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import load_file as load_numpy
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import load_file as load_torch
from safetensors.torch import save as serialize_torch
from safetensors.torch import save_file as save_torch

from omad.core.errors import OmadError

FORMAT_VERSION = 1
CHECKPOINT_NAME = re.compile(r"step-\d{10,}")  # checkpoints/<name>: LATEST may name nothing else
KEEP_CHECKPOINTS = 2


class CheckpointError(OmadError, RuntimeError):
    """A checkpoint file is missing, corrupt or does not match; the message names the file."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


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
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:010d}"
    final, tmp = root / name, root / (name + ".tmp")
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
    (tmp / "train_state.json").write_text(json.dumps(train_state) + "\n")
    files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
    manifest = {"format_version": FORMAT_VERSION, "step": step, "files": {f: sha256_file(tmp / f) for f in files}}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    write_json_atomic(root / "LATEST", {"checkpoint": name})
    for old in sorted(p for p in root.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old)
    return final


# -- reading --------------------------------------------------------------------------------------
def latest_checkpoint(run_dir: Path, files: list[str] | None = None) -> Path:
    """The newest complete checkpoint, verified (only `files`, relative paths, when given)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run dir {run_dir} does not exist")
    pointer = run_dir / "checkpoints" / "LATEST"
    try:
        name = json.loads(pointer.read_text())["checkpoint"]
    except FileNotFoundError:
        raise CheckpointError(f"{pointer}: no checkpoint has been written in this run dir yet") from None
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{pointer}: unreadable checkpoint pointer ({err})") from None
    if not isinstance(name, str) or not CHECKPOINT_NAME.fullmatch(name):
        raise CheckpointError(f"{pointer}: names {name!r}, not a checkpoint of this run (step-<N>)")
    path = run_dir / "checkpoints" / name
    verify_checkpoint(path, files)
    return path


def verify_checkpoint(path: Path, files: list[str] | None = None) -> dict:
    """Check the manifest's format version and the sha256 of every file (or of `files`); return the manifest."""
    mpath = path / "manifest.json"
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
