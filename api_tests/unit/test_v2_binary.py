"""The binary tensor data extension's byte layout (service/serving/v2_binary.py), by hand-built bodies."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from kdserve.service.serving import v2_binary as vb


def test_split_body_uses_the_header_length():
    assert vb.split_body(b'{"a":1}rest', "7") == (b'{"a":1}', b"rest")
    assert vb.split_body(b'{"a":1}', None) == (b'{"a":1}', b"")
    for bad in ("0", "99", "-1", "x"):
        with pytest.raises(vb.BinaryError):
            vb.split_body(b'{"a":1}', bad)


@pytest.mark.parametrize("datatype,dtype", [("FP32", np.float32), ("FP64", np.float64), ("INT64", np.int64),
                                            ("INT32", np.int32), ("FP16", np.float16), ("UINT8", np.uint8)])
def test_numbers_round_trip_little_endian(datatype, dtype):
    x = (np.arange(6) * 3 - 5).astype(dtype).reshape(2, 3)
    raw = x.astype(np.dtype(dtype).newbyteorder("<")).tobytes()
    got = vb.decode(raw, datatype, [2, 3], "t")
    assert got.dtype == x.dtype and np.array_equal(got, x) and got.flags.writeable
    assert vb.encode(x, datatype) == raw


def test_fp32_bytes_are_read_as_little_endian():
    assert vb.decode(struct.pack("<2f", 1.5, -2.0), "FP32", [2], "t").tolist() == [1.5, -2.0]


def test_size_must_match_the_shape():
    with pytest.raises(vb.BinaryError, match="needs 24 bytes, binary_data_size is 20"):
        vb.decode(b"\0" * 20, "FP32", [2, 3], "t")


def test_bool_is_one_byte_of_0_or_1():
    assert vb.decode(b"\x01\x00\x01", "BOOL", [3], "t").tolist() == [True, False, True]
    with pytest.raises(vb.BinaryError, match="0 or 1"):
        vb.decode(b"\x02\x00\x01", "BOOL", [3], "t")


def test_bytes_elements_are_length_prefixed_utf8():
    texts = ["héllo", "", "a b"]
    raw = b"".join(struct.pack("<I", len(t.encode())) + t.encode() for t in texts)
    assert vb.decode(raw, "BYTES", [3], "t") == texts
    with pytest.raises(vb.BinaryError, match="2 BYTES elements, the shape needs 3"):
        vb.decode(raw[: -(4 + 3)], "BYTES", [3], "t")
    with pytest.raises(vb.BinaryError, match="says 5 bytes"):
        vb.decode(struct.pack("<I", 5) + b"abc", "BYTES", [1], "t")
    with pytest.raises(vb.BinaryError, match="4-byte length"):
        vb.decode(b"\x01\x00", "BYTES", [1], "t")
    with pytest.raises(vb.BinaryError, match="not UTF-8"):
        vb.decode(struct.pack("<I", 1) + b"\xff", "BYTES", [1], "t")


def test_unknown_datatype_and_bad_sizes_are_refused():
    with pytest.raises(vb.BinaryError, match="no binary form"):
        vb.decode(b"", "COMPLEX", [0], "t")
    assert vb.binary_size({"binary_data_size": 8}, "t") == 8 and vb.binary_size(None, "t") is None
    for bad in (-1, 1.5, True, "8"):
        with pytest.raises(vb.BinaryError):
            vb.binary_size({"binary_data_size": bad}, "t")


def test_binary_outputs_follow_triton_rules():
    assert vb.wants_binary({"binary_data_output": True}, None)
    assert not vb.wants_binary({"binary_data_output": True}, {"binary_data": False})
    assert vb.wants_binary(None, {"binary_data": True})
    assert not vb.wants_binary(None, None)
