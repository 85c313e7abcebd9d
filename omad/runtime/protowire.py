"""The protobuf wire format, as far as an export needs it: walk a message's top-level fields and
write a length-delimited one. Used to hash an ONNX model without its metadata (omad.runtime.schema)
and to add a metadata entry without touching any other byte (omad.runtime.team), with no onnx
package needed."""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

# The ONNX ModelProto field an export touches: metadata_props, repeated StringStringEntryProto {key, value}.
MODEL_METADATA_PROPS = 14
ENTRY_KEY, ENTRY_VALUE = 1, 2


class Field(NamedTuple):
    number: int
    start: int  # offset of the field's key
    value: int  # offset of its value (of a length-delimited field: of the bytes after the length)
    end: int  # offset just past its value
    delimited: bool  # wire type 2: the value is a string, bytes or an embedded message


def fields(data: bytes) -> Iterator[Field]:
    """Each top-level field of a serialized message, in file order; ValueError for malformed bytes."""
    view = memoryview(data)
    pos, end = 0, len(data)
    while pos < end:
        start = pos
        key, pos = read_varint(view, pos)
        number, wire_type = key >> 3, key & 7
        value = pos
        if wire_type == 0:
            _, pos = read_varint(view, pos)
        elif wire_type == 1:
            pos += 8
        elif wire_type == 2:
            length, pos = read_varint(view, pos)
            value = pos
            pos += length
        elif wire_type == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire_type} at byte {start}")
        if pos > end or number == 0:
            raise ValueError(f"truncated or malformed protobuf field at byte {start}")
        yield Field(number, start, value, pos, wire_type == 2)


def read_varint(view: memoryview, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(view) or shift > 63:
            raise ValueError(f"truncated or overlong varint at byte {pos}")
        byte = view[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not byte & 0x80:
            return value, pos


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def length_delimited(number: int, payload: bytes) -> bytes:
    """One length-delimited field (wire type 2): a string, bytes or an embedded message."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload
