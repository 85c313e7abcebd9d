"""numpy <-> the wire Tensor (raw little-endian float32 bytes plus shape). Shared by server and client."""

from __future__ import annotations

import math

import numpy as np

from omad.serve._generated import policy_pb2

FLOAT32_LE = np.dtype("<f4")
MAX_RANK = 8
MAX_DIM = 2**31 - 1


class TensorError(ValueError):
    """A tensor on the wire that does not decode: the message says what is wrong and how to fix it."""


def to_tensor(array: np.ndarray) -> policy_pb2.Tensor:
    array = np.ascontiguousarray(array, dtype=FLOAT32_LE)
    return policy_pb2.Tensor(shape=array.shape, data=array.tobytes())


def from_tensor(tensor: policy_pb2.Tensor, name: str) -> np.ndarray:
    """A read-only float32 view of the tensor's bytes, with its shape checked against its byte length."""
    return decode_float32(tensor.data, tuple(tensor.shape), name)


def decode_float32(data: bytes, shape: tuple[int, ...], name: str) -> np.ndarray:
    if len(shape) > MAX_RANK:
        raise TensorError(f"{name}: rank {len(shape)} is over the limit of {MAX_RANK}")
    if shape and (min(shape) < 0 or max(shape) > MAX_DIM):
        raise TensorError(f"{name}: shape {list(shape)} has a dimension below 0 or above {MAX_DIM}")
    expected = math.prod(shape) * FLOAT32_LE.itemsize
    if len(data) != expected:
        raise TensorError(
            f"{name}: shape {list(shape)} needs {expected} bytes of little-endian float32, got {len(data)} bytes"
        )
    return np.frombuffer(data, FLOAT32_LE).reshape(shape)
