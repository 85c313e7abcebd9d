"""A team's identity: which agents' graphs were exported together.

The team id is the sha256 of every agent's `weights_sha256`, in env order, each hex digest followed by
a newline: `sha256("<w_0>\\n<w_1>\\n...")`. `omad export` stamps it into every graph's metadata (key
`omad.team_id`) and into manifest.json (`team_id`). The weights hash leaves metadata out, so the
stamp does not change it; the file's own sha256 does change, and the manifest records the stamped
file's. A server reports its graph's team id, so a client can tell when the agents it talks to come
from different exports (a half-finished rollout, a server pointed at the wrong files).

Exports made before the team id existed carry none: they load as before, and their team id reads as
`UNKNOWN_TEAM`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from omad.runtime import protowire

TEAM_ID_FIELD = "team_id"  # manifest.json key, record key and wire field
TEAM_ID_METADATA_KEY = "omad." + TEAM_ID_FIELD  # the graph's metadata_props key
UNKNOWN_TEAM = "unknown"  # what an export without a team id reports


@dataclass(frozen=True)
class ModelRef:
    """The model that answered a call: its file's sha256 and its team id ("" where a source has none)."""

    sha256: str
    team_id: str


def team_id(weights_sha256: Sequence[str]) -> str:
    """The team id of agents whose graphs have these weights hashes, in env order."""
    if not weights_sha256:
        raise ValueError("a team has at least one agent")
    for digest in weights_sha256:
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(f"not a sha256 hex digest: {digest!r}")
    return hashlib.sha256("".join(d + "\n" for d in weights_sha256).encode()).hexdigest()


def team_id_of(metadata: Mapping[str, str]) -> str:
    """The team id in a graph's metadata_props, or UNKNOWN_TEAM for a graph exported without one."""
    return metadata.get(TEAM_ID_METADATA_KEY) or UNKNOWN_TEAM


def short(team: str) -> str:
    """The first 12 hex digits, as messages and labels show a team id."""
    return team if team == UNKNOWN_TEAM else team[:12]


def stamp_team_id(model_bytes: bytes, team: str) -> bytes:
    """A serialized ONNX ModelProto with metadata `omad.team_id = team`, every other byte unchanged.

    A protobuf message may list a repeated field's entries anywhere, so the entry is appended at the
    end; an earlier team id entry is dropped first. Nothing else moves, so `weights_sha256` (which
    leaves metadata out) is the same before and after."""
    entry = protowire.length_delimited(protowire.ENTRY_KEY, TEAM_ID_METADATA_KEY.encode())
    entry += protowire.length_delimited(protowire.ENTRY_VALUE, team.encode())
    kept = bytearray()
    for field in protowire.fields(model_bytes):
        if (
            field.number == protowire.MODEL_METADATA_PROPS
            and _entry_key(model_bytes[field.value : field.end]) == TEAM_ID_METADATA_KEY
        ):
            continue
        kept += model_bytes[field.start : field.end]
    return bytes(kept) + protowire.length_delimited(protowire.MODEL_METADATA_PROPS, entry)


def _entry_key(entry: bytes) -> str | None:
    """The key of a metadata_props entry (StringStringEntryProto)."""
    for field in protowire.fields(entry):
        if field.number == protowire.ENTRY_KEY and field.delimited:
            return entry[field.value : field.end].decode("utf-8", "replace")
    return None
