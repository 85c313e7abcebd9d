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

TEAM_ID_FIELD = "team_id"  # manifest.json key, record key and wire field
TEAM_ID_METADATA_KEY = "omad." + TEAM_ID_FIELD  # the graph's metadata_props key
UNKNOWN_TEAM = "unknown"  # what an export without a team id reports


@dataclass(frozen=True)
class ModelRef:
    """The model that answered a call: its file's sha256 and its team id ("" where a source has none)."""

    sha256: str
    team_id: str


_MODEL_METADATA_FIELD = 14  # ModelProto.metadata_props
_ENTRY_KEY, _ENTRY_VALUE = 1, 2  # StringStringEntryProto.key / .value


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
    entry = _field(_ENTRY_KEY, TEAM_ID_METADATA_KEY.encode()) + _field(_ENTRY_VALUE, team.encode())
    kept = bytearray()
    for number, start, end, payload in _top_level_fields(model_bytes):
        if number == _MODEL_METADATA_FIELD and payload is not None and _entry_key(payload) == TEAM_ID_METADATA_KEY:
            continue
        kept += model_bytes[start:end]
    return bytes(kept) + _field(_MODEL_METADATA_FIELD, entry)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint_bytes(number << 3 | 2) + _varint_bytes(len(payload)) + payload


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError(f"truncated or overlong varint at byte {pos}")
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not byte & 0x80:
            return value, pos


def _top_level_fields(data: bytes):
    """(field number, start, end, payload of a length-delimited field or None) for each field."""
    pos = 0
    while pos < len(data):
        start = pos
        key, pos = _read_varint(data, pos)
        number, wire_type = key >> 3, key & 7
        payload = None
        if wire_type == 0:
            _, pos = _read_varint(data, pos)
        elif wire_type == 1:
            pos += 8
        elif wire_type == 2:
            length, pos = _read_varint(data, pos)
            payload = data[pos : pos + length]
            pos += length
        elif wire_type == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire_type} at byte {start}")
        if pos > len(data) or number == 0:
            raise ValueError(f"truncated or malformed protobuf field at byte {start}")
        yield number, start, pos, payload


def _entry_key(entry: bytes) -> str | None:
    for number, _start, _end, payload in _top_level_fields(entry):
        if number == _ENTRY_KEY and payload is not None:
            return payload.decode("utf-8", "replace")
    return None
