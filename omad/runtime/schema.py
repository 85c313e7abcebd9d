"""What an export dir holds, defined once: graph names, metadata_props keys, manifest fields.

The exporter writes these and the runtime reads them. Torch-free and onnx-free (only the standard
library), so the serving image can import it.

Export dir:
    <agent>.onnx        one graph per agent: action = pi(obs[B, d_o], noise[K+1, B, d_a])
    manifest.json       agents in env order with each file's sha256, the env id and format version
    triton/<agent>/     optional Triton model repository (config.pbtxt, 1/model.onnx)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

# 2: weights_sha256 covers the graph itself (see `weights_sha256`), so a lone file can be checked;
# MatMul weights are 2-D (see omad.export.onnx.prepackable_matmul_weights).
EXPORT_FORMAT_VERSION = 2
DEFAULT_OPSET = 18
MANIFEST_NAME = "manifest.json"
ONNX_SUFFIX = ".onnx"

OBS_INPUT, NOISE_INPUT, ACTION_OUTPUT = "obs", "noise", "action"
BATCH_AXIS = "batch"

# Node types a fixed-step graph must not contain: control flow would stop ONNX Runtime from using
# CUDA graphs / TensorRT, and random ops would make the policy a non-function of its inputs.
FORBIDDEN_OP_TYPES = ("Loop", "If", "Scan")
FORBIDDEN_OP_PREFIX = "Random"

NOISE_LAYOUT = (
    "noise has shape [K+1, B, d_a], all entries standard normal; noise[0] is the prior draw, "
    "scaled by the prior std s0 inside the graph (x_0 = s0 * noise[0]); noise[k+1] is the step "
    "noise eps_k of denoising step k = 0..K-1; all zeros gives the deterministic policy"
)

METADATA_PREFIX = "omad."


@dataclass(frozen=True)
class ModelInfo:
    """Everything a server needs to validate requests and describe one exported agent."""

    agent: str
    obs_dim: int
    act_dim: int
    denoising_steps: int  # K
    noise_steps: int  # K + 1: the noise input's first axis
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]
    env_id: str
    algo: str
    sha256: str  # of the .onnx file itself, so it is the one field not stored inside the file
    weights_sha256: str  # of the file without its metadata (`weights_sha256` below): checkable from the file alone
    format_version: int
    source_run: str


# ModelInfo fields stored in metadata_props; text fields raw, numbers and bound lists as JSON.
STORED_FIELDS = tuple(f.name for f in fields(ModelInfo) if f.name != "sha256")
TEXT_FIELDS = frozenset({"agent", "env_id", "algo", "weights_sha256", "source_run"})
BOUND_FIELDS = frozenset({"action_low", "action_high"})
# Metadata beyond ModelInfo, for people and tools reading the graph.
EXTRA_METADATA = ("noise_layout", "actor_kind", "source_checkpoint", "checkpoint_sha256")

# Manifest fields compared with each graph's metadata at load time.
MANIFEST_FIELDS = ("format_version", "env_id", "algo")
MANIFEST_AGENT_FIELDS = ("agent", "obs_dim", "act_dim", "denoising_steps", "weights_sha256")


def metadata_key(field: str) -> str:
    return METADATA_PREFIX + field


def encode_metadata(info: ModelInfo, **extra: str) -> dict[str, str]:
    """metadata_props for one graph (`info.sha256` is ignored: a file cannot hold its own hash)."""
    unknown = set(extra) - set(EXTRA_METADATA)
    if unknown:
        raise ValueError(f"unknown metadata fields {sorted(unknown)}")
    values = asdict(info)
    props = {
        metadata_key(name): values[name] if name in TEXT_FIELDS else json.dumps(values[name]) for name in STORED_FIELDS
    }
    props.update({metadata_key(name): str(value) for name, value in extra.items()})
    return props


def decode_metadata(props: Mapping[str, str], sha256: str) -> ModelInfo:
    """The inverse of `encode_metadata`; raises ValueError naming the first missing or bad key."""
    values: dict[str, Any] = {}
    for name in STORED_FIELDS:
        key = metadata_key(name)
        if key not in props:
            raise ValueError(f"metadata key {key!r} is missing")
        text = props[key]
        if name in TEXT_FIELDS:
            values[name] = text
            continue
        try:
            value = json.loads(text)
        except ValueError:
            raise ValueError(f"metadata key {key!r} is not JSON: {text!r}") from None
        if name in BOUND_FIELDS:
            if not isinstance(value, list) or not all(isinstance(v, (int, float)) for v in value):
                raise ValueError(f"metadata key {key!r} must be a list of numbers, got {text!r}")
            value = tuple(float(v) for v in value)
        elif not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"metadata key {key!r} must be a non-negative integer, got {text!r}")
        values[name] = value
    info = ModelInfo(sha256=sha256, **values)
    if info.noise_steps != info.denoising_steps + 1:
        raise ValueError(
            f"metadata says K = {info.denoising_steps} but {info.noise_steps} noise steps (expected K + 1)"
        )
    if not (len(info.action_low) == len(info.action_high) == info.act_dim):
        raise ValueError(f"metadata action bounds do not have act_dim = {info.act_dim} entries")
    return info


def manifest_entry(info: ModelInfo, file_name: str) -> dict:
    entry = {name: getattr(info, name) for name in MANIFEST_AGENT_FIELDS}
    entry.update(file=file_name, sha256=info.sha256)
    return entry


def build_manifest(infos: list[ModelInfo], opset: int) -> dict:
    """manifest.json for agents in env order (every agent shares the run's env id, algo and version)."""
    first = infos[0]
    manifest = {name: getattr(first, name) for name in MANIFEST_FIELDS}
    manifest.update(
        source_run=first.source_run,
        opset=opset,
        agents=[manifest_entry(info, info.agent + ONNX_SUFFIX) for info in infos],
    )
    return manifest


# ModelProto's metadata_props field: the one part of the file that weights_sha256 leaves out.
MODEL_METADATA_FIELD = 14


def weights_sha256(model_bytes: bytes) -> str:
    """SHA-256 of a serialized ONNX ModelProto without its metadata_props.

    It covers every other top-level field exactly as stored, in file order (each field's key and
    value bytes): the graph (nodes, attributes, initializers, inputs and outputs), the opset
    imports, local functions, IR version and doc string, i.e. everything ONNX Runtime executes.
    Metadata is left out so the hash can be stored in the metadata itself. Reads the protobuf wire
    format directly (no onnx package needed); raises ValueError for bytes that are not a well-formed
    message.
    """
    digest = hashlib.sha256()
    view = memoryview(model_bytes)
    pos, end = 0, len(model_bytes)
    while pos < end:
        start = pos
        key, pos = _varint(view, pos)
        field, wire_type = key >> 3, key & 7
        if wire_type == 0:
            _, pos = _varint(view, pos)
        elif wire_type == 1:
            pos += 8
        elif wire_type == 2:
            length, pos = _varint(view, pos)
            pos += length
        elif wire_type == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire_type} at byte {start}")
        if pos > end or field == 0:
            raise ValueError(f"truncated or malformed protobuf field at byte {start}")
        if field != MODEL_METADATA_FIELD:
            digest.update(view[start:pos])
    return digest.hexdigest()


def _varint(view: memoryview, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(view) or shift > 63:
            raise ValueError(f"truncated or overlong varint at byte {pos}")
        byte = view[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not byte & 0x80:
            return value, pos
