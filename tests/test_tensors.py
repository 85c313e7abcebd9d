"""The wire tensor: raw little-endian float32 bytes plus a shape, and the checks on decoding it
(rank, dimensions, byte length), each error naming the field the caller decodes."""

from __future__ import annotations

import re
import struct

import numpy as np
import pytest

from omad.serve._generated import policy_pb2
from omad.serve.tensors import MAX_DIM, MAX_RANK, TensorError, decode_float32, from_tensor, to_tensor


def test_to_tensor_writes_little_endian_float32_bytes_and_shape():
    array = np.arange(6, dtype=np.float64).reshape(2, 3).T  # non-contiguous, float64
    tensor = to_tensor(array)
    assert list(tensor.shape) == [3, 2]
    assert tensor.data == np.ascontiguousarray(array, "<f4").tobytes()
    assert tensor.data[:8] == struct.pack("<2f", 0.0, 3.0)  # row-major, little-endian
    decoded = from_tensor(tensor, "obs")
    np.testing.assert_array_equal(decoded, array)
    assert decoded.dtype == np.dtype("<f4") and not decoded.flags.writeable


def test_decode_checks_rank_dimensions_and_byte_length():
    assert decode_float32(b"", (0,) * MAX_RANK, "obs").shape == (0,) * MAX_RANK
    with pytest.raises(TensorError, match=rf"^obs: rank {MAX_RANK + 1} is over the limit of {MAX_RANK}$"):
        decode_float32(b"", (0,) * (MAX_RANK + 1), "obs")
    assert decode_float32(b"", (0, MAX_DIM), "obs").shape == (0, MAX_DIM)
    for shape in ((0, MAX_DIM + 1), (-1, 2), (2, -1)):
        with pytest.raises(
            TensorError, match=re.escape(f"noise: shape {list(shape)} has a dimension below 0 or above {MAX_DIM}")
        ):
            decode_float32(b"", shape, "noise")
    data = np.array([1.5, -2.0, 3.0, 0.25, 8.0, -1.0], "<f4").tobytes()
    np.testing.assert_array_equal(decode_float32(data, (2, 3), "obs"), [[1.5, -2.0, 3.0], [0.25, 8.0, -1.0]])
    for shape, got in (((2, 2), 24), ((7,), 24)):
        with pytest.raises(
            TensorError,
            match=rf"^obs: shape \[.*\] needs {4 * int(np.prod(shape))} bytes of little-endian float32, got {got} bytes$",
        ):
            decode_float32(data, shape, "obs")
    assert decode_float32(b"\x00\x00\x80\x3f", (), "obs") == 1.0  # rank 0: one value


@pytest.mark.parametrize(("shape", "size", "needed"), [([3], 4, 12), ([2, 3], 20, 24)])
def test_a_bad_wire_tensor_is_named_in_its_error(shape, size, needed):
    """The error names the field the caller decodes (here `noise`), so the client knows which tensor to fix."""
    bad = policy_pb2.Tensor(shape=shape, data=b"\0" * size)
    message = f"noise: shape {shape} needs {needed} bytes of little-endian float32, got {size} bytes"
    with pytest.raises(TensorError, match=f"^{re.escape(message)}$"):
        from_tensor(bad, "noise")
