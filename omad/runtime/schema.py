"""What an export dir holds, defined once: graph names, metadata_props keys, manifest fields.

The exporter writes these and the runtime reads them. Torch-free and onnx-free, so the serving
image can import it.

Export dir:
    <agent>.onnx        one graph per agent: action = pi(obs[B, d_o], noise[K+1, B, d_a])
    manifest.json       agents in env order with each file's sha256, the env id, format version and team id
    triton/<agent>/     optional Triton model repository (config.pbtxt, 1/model.onnx)

A graph's metadata_props hold its `ModelInfo` record (omad.core.agent's contract, plus provenance),
one key per entry: "omad." + the record key, text as is, numbers and bound lists as JSON.
"""

from __future__ import annotations

import hashlib
import json
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from omad.core.agent import (
    CONTRACT_KEYS,
    AgentContract,
    ContractError,
    contract_values,
    record_key,
    values_from_record,
)
from omad.runtime import protowire
from omad.runtime.team import team_id

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
class ModelInfo(AgentContract):
    """One exported agent: its contract, plus where the graph came from and the hashes that check it.
    Everything a server needs to validate requests and describe the agent."""

    algo: str
    sha256: str  # of the .onnx file itself, so it is the one field not stored inside the file
    weights_sha256: str  # of the file without its metadata (`weights_sha256` below): checkable from the file alone
    format_version: int
    source_run: str

    @classmethod
    def describing(
        cls,
        contract: AgentContract,
        *,
        algo: str,
        sha256: str,
        weights_sha256: str,
        format_version: int,
        source_run: str,
    ) -> ModelInfo:
        return cls(
            **contract_values(contract),
            algo=algo,
            sha256=sha256,
            weights_sha256=weights_sha256,
            format_version=format_version,
            source_run=source_run,
        )

    def record(self) -> dict[str, Any]:
        """The contract's record plus the provenance a file stores (everything but `sha256`)."""
        return {**super().record(), **{name: getattr(self, name) for name in STORED_PROVENANCE}}

    @classmethod
    def from_stored(cls, record: Mapping[str, Any], sha256: str) -> ModelInfo:
        """The inverse of `record`, given the file's own sha256; raises ContractError (a ValueError)."""
        return cls(**values_from_record(cls, record, skip=("sha256",)), sha256=sha256)


# What ModelInfo adds to the contract and a graph stores in its metadata.
STORED_PROVENANCE = ("algo", "weights_sha256", "format_version", "source_run")
# The record keys a graph's metadata stores, and those stored as text (the others as JSON).
STORED_KEYS = (*CONTRACT_KEYS, *STORED_PROVENANCE)
TEXT_KEYS = frozenset(
    record_key(name) for name, kind in typing.get_type_hints(ModelInfo).items() if kind is str and name != "sha256"
)
# Metadata beyond ModelInfo, for people and tools reading the graph.
EXTRA_METADATA = ("noise_layout", "actor_kind", "source_checkpoint", "checkpoint_sha256")

# Manifest fields (record keys) compared with each graph's metadata at load time.
MANIFEST_FIELDS = ("format_version", "env_id", "algo")
MANIFEST_AGENT_FIELDS = ("agent", "obs_dim", "act_dim", "denoising_steps", "weights_sha256")


def metadata_key(field: str) -> str:
    return METADATA_PREFIX + field


def encode_metadata(info: ModelInfo, **extra: str) -> dict[str, str]:
    """metadata_props for one graph (`info.sha256` is ignored: a file cannot hold its own hash)."""
    unknown = set(extra) - set(EXTRA_METADATA)
    if unknown:
        raise ValueError(f"unknown metadata fields {sorted(unknown)}")
    props = {
        metadata_key(key): value if key in TEXT_KEYS else json.dumps(value) for key, value in info.record().items()
    }
    props.update({metadata_key(name): str(value) for name, value in extra.items()})
    return props


def decode_metadata(props: Mapping[str, str], sha256: str) -> ModelInfo:
    """The inverse of `encode_metadata`; raises ValueError naming the first missing or bad key."""
    record: dict[str, Any] = {}
    for key in STORED_KEYS:
        name = metadata_key(key)
        if name not in props:
            raise ValueError(f"metadata key {name!r} is missing")
        text = props[name]
        if key in TEXT_KEYS:
            record[key] = text
            continue
        try:
            record[key] = json.loads(text)
        except ValueError:
            raise ValueError(f"metadata key {name!r} is not JSON: {text!r}") from None
    try:
        return ModelInfo.from_stored(record, sha256)
    except ContractError as err:
        raise ValueError(f"metadata: {err}") from None


def manifest_entry(info: ModelInfo, file_name: str) -> dict:
    record = info.record()
    entry = {key: record[key] for key in MANIFEST_AGENT_FIELDS}
    entry.update(file=file_name, sha256=info.sha256)
    return entry


def build_manifest(infos: list[ModelInfo], opset: int) -> dict:
    """manifest.json for agents in env order (every agent shares the run's env id, algo and version),
    with the team id of their weights (omad.runtime.team)."""
    first = infos[0].record()
    manifest = {key: first[key] for key in MANIFEST_FIELDS}
    manifest.update(
        source_run=first["source_run"],
        opset=opset,
        team_id=team_id([info.weights_sha256 for info in infos]),
        agents=[manifest_entry(info, info.name + ONNX_SUFFIX) for info in infos],
    )
    return manifest


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
    for field in protowire.fields(model_bytes):
        if field.number != protowire.MODEL_METADATA_PROPS:  # the one part the hash leaves out
            digest.update(model_bytes[field.start : field.end])
    return digest.hexdigest()
