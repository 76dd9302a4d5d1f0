"""The binary tensor data extension of the Open Inference Protocol v2 (KServe / Triton).

JSON turns every float into text and back; for a request of 64 rows × 64 features that is most of
what serving it costs. With this extension the body is a JSON header followed by the raw tensors:

    Inference-Header-Content-Length: <n>        (HTTP header: the JSON header's length in bytes)
    body = <n bytes of JSON> <tensor bytes> <tensor bytes> …

An input sent this way has `"parameters": {"binary_data_size": <bytes>}` and no `data`; its bytes
follow the JSON header in the order the inputs are listed. Numbers are little-endian, row-major;
BOOL is one byte per element; BYTES is, per element, a 4-byte little-endian length and the bytes.
Outputs come back the same way when the request asks for it (`"parameters":
{"binary_data_output": true}` on the request, or `{"binary_data": true}` on a requested output):
the answer's JSON header then says `binary_data_size` per output and the response carries the
Inference-Header-Content-Length header. Triton's and KServe's HTTP clients use this by default.

Pure functions of bytes and arrays; service/api/inference_v2.py wires them into the routes.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np

HEADER = "inference-header-content-length"

# Datatype → little-endian numpy dtype of its binary form.
DTYPES = {"BOOL": "|b1", "UINT8": "|u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8", "INT8": "|i1",
          "INT16": "<i2", "INT32": "<i4", "INT64": "<i8", "FP16": "<f2", "FP32": "<f4", "FP64": "<f8"}


class BinaryError(ValueError):
    """The binary part of a request does not match its JSON header; the message says how."""


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """(JSON header, binary tail) of a request; the whole body is JSON without the header."""
    if header_length is None:
        return body, b""
    try:
        n = int(header_length)
    except ValueError:
        raise BinaryError(f"Inference-Header-Content-Length must be a byte count, not {header_length!r}") from None
    if not 0 < n <= len(body):
        raise BinaryError(f"Inference-Header-Content-Length is {n}, but the body has {len(body)} bytes")
    return body[:n], body[n:]


def binary_size(parameters: dict[str, Any] | None, label: str) -> int | None:
    size = (parameters or {}).get("binary_data_size")
    if size is None:
        return None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise BinaryError(f"{label}: binary_data_size must be a non-negative integer, not {size!r}")
    return size


def decode(chunk: bytes, datatype: str, shape: list[int], label: str) -> np.ndarray | list[str]:
    """One tensor's bytes → a numpy array of `shape` (BYTES → a flat list of strings)."""
    count = math.prod(shape)
    if datatype == "BYTES":
        return _decode_bytes(chunk, count, label)
    if datatype not in DTYPES:
        raise BinaryError(f"{label}: datatype {datatype!r} has no binary form; use one of {sorted(DTYPES) + ['BYTES']}")
    dtype = np.dtype(DTYPES[datatype])
    if len(chunk) != count * dtype.itemsize:
        raise BinaryError(f"{label}: shape {shape} of {datatype} needs {count * dtype.itemsize} bytes, "
                          f"binary_data_size is {len(chunk)}")
    if datatype == "BOOL" and chunk.translate(None, b"\x00\x01"):
        raise BinaryError(f"{label}: BOOL bytes must be 0 or 1")
    arr = np.frombuffer(chunk, dtype).reshape(shape)
    return arr.astype(dtype.newbyteorder("="))  # native order, writable (a copy, not a view of the body)


def _decode_bytes(chunk: bytes, count: int, label: str) -> list[str]:
    out, offset = [], 0
    while offset < len(chunk):
        if offset + 4 > len(chunk):
            raise BinaryError(f"{label}: BYTES data ends inside an element's 4-byte length")
        (n,) = struct.unpack_from("<I", chunk, offset)
        offset += 4
        if offset + n > len(chunk):
            raise BinaryError(f"{label}: a BYTES element says {n} bytes, {len(chunk) - offset} are left")
        try:
            out.append(chunk[offset:offset + n].decode("utf-8"))
        except UnicodeDecodeError:
            raise BinaryError(f"{label}: element {len(out)} is not UTF-8 text") from None
        offset += n
    if len(out) != count:
        raise BinaryError(f"{label}: {len(out)} BYTES elements, the shape needs {count}")
    return out


def encode(value: np.ndarray, datatype: str) -> bytes:
    """An output array in the binary form of its datatype."""
    return np.ascontiguousarray(value, dtype=np.dtype(DTYPES[datatype])).tobytes()


def wants_binary(request_parameters: dict[str, Any] | None, output_parameters: dict[str, Any] | None) -> bool:
    """Triton's rule: an output's own `binary_data` decides; else the request's `binary_data_output`."""
    own = (output_parameters or {}).get("binary_data")
    if own is not None:
        return bool(own)
    return bool((request_parameters or {}).get("binary_data_output", False))
