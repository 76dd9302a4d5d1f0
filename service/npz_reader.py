"""Reading an uploaded npz without trusting it: every array's header (shape and dtype) is read and
judged before a byte of its data is, and the data is then streamed, a chunk at a time, into one
preallocated array of the canonical dtype.

np.load would allocate whatever the header declares in the file's own dtype (a 0.26 MB deflated
npz can declare 256 MiB of float64) and then `astype` copies it again; here the peak is the
canonical array plus one chunk, and an array whose canonical size passes the limit is refused
from its header alone. Nothing is ever unpickled: object dtypes are refused from the header.
"""

from __future__ import annotations

import math
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
from numpy.lib import format as npy_format

from kdserve.service.ingest_errors import DatasetError

CHUNK_BYTES = 8 * 1024**2
NUMERIC_KINDS = "fiub"  # float, signed and unsigned integers, bool
# What np.load would raise or let escape for a corrupted member; none of them is our bug.
CORRUPT = (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError, NotImplementedError, ValueError,
           SyntaxError)


@dataclass
class Header:
    """One npz member's npy header: what the array claims to be, nothing read yet."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    stream: IO[bytes]  # positioned at the first data byte

    @property
    def count(self) -> int:
        return math.prod(self.shape)


# The names the features and labels may have: np.savez(f, x=…, y=…), np.savez(f, X=…, y=…) (the
# scikit-learn habit), or np.savez(f, features, labels) (positional: arr_0, arr_1).
X_NAMES, Y_NAMES = ("x", "X", "arr_0"), ("y", "Y", "arr_1")


def read_npz(path: Path, max_bytes: int) -> tuple[np.ndarray, np.ndarray | None, dict[str, str]]:
    """x as float32 [N, ...] and y in its stored dtype (or None), both checked against their
    headers first, and the array names they were read from ({"x": "X", "y": "y"}); a canonical
    size (x float32 + y int64) over max_bytes is a 413."""
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise DatasetError("unsupported_format", _not_a_zip_message(path))
    try:
        with archive:
            x_name = next((n for n in X_NAMES if _member(archive, n)), "x")
            x_head = _open_member(archive, x_name, required=True)
            _check_x(x_head, max_bytes)
            y_name = next((n for n in Y_NAMES if _member(archive, n) and (n == "arr_1") == (x_name == "arr_0")), "y")
            y_head = _open_member(archive, y_name, required=False)
            if y_head is not None:
                _check_y(y_head, x_head.shape[0])
            x = _read(x_head, np.float32)
            names = {"x": x_name, **({"y": y_name} if y_head is not None else {})}
            return x, (_read(y_head, y_head.dtype) if y_head is not None else None), names
    except DatasetError:
        raise
    except CORRUPT as exc:
        raise DatasetError("unsupported_format", f"not a readable npz file: {exc}")


def _not_a_zip_message(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(6)
    if head == npy_format.MAGIC_PREFIX:
        return ("this is a single .npy array, not an npz: save the features and labels together with "
                "np.savez(path, x=features, y=labels)")
    return "not an npz file (a zip of .npy arrays, as np.savez writes)"


def _member(archive: zipfile.ZipFile, name: str) -> str | None:
    """The member holding array `name` (`name.npy`, or `name` as np.load also accepts)."""
    return next((m for m in (f"{name}.npy", name) if m in archive.NameToInfo), None)


def _open_member(archive: zipfile.ZipFile, name: str, required: bool) -> Header | None:
    """The header of array `name`."""
    member = _member(archive, name)
    if member is None:
        if required:
            found = sorted(n.removesuffix(".npy") for n in archive.namelist())[:20]
            raise DatasetError("invalid_request", f"the npz has no features array (named x or X, or the first of two "
                               f"arrays saved without names); it has {found}: save it with np.savez(path, x=features, "
                               "y=labels)")
        return None
    info = archive.getinfo(member)
    stream = archive.open(info)
    version = npy_format.read_magic(stream)
    # 3.0 differs from 2.0 only in allowing UTF-8 field names (structured dtypes, refused below)
    read_header = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
    shape, fortran_order, dtype = read_header(stream)
    header = Header(name, tuple(int(d) for d in shape), dtype, bool(fortran_order), stream)
    _check_dtype(header)
    declared = header.count * dtype.itemsize
    if declared > info.file_size:  # the zip says how much data follows; a header cannot claim more
        raise DatasetError("unsupported_format", f"array {name!r} declares shape {list(header.shape)} of {dtype} "
                           f"({declared} bytes) but its member holds {info.file_size} bytes")
    return header


def _check_dtype(header: Header) -> None:
    if header.dtype.hasobject:
        raise DatasetError("unsafe_file", f"array {header.name!r} holds Python objects, which need pickle to load; "
                           "save numeric arrays")
    labels_may_be_names = header.name in Y_NAMES and header.dtype.kind == "U"  # y = class names (str)
    if (header.dtype.kind not in NUMERIC_KINDS and not labels_may_be_names) or header.dtype.fields is not None \
            or header.dtype.subdtype:
        raise DatasetError("invalid_request", f"{header.name} must be numeric (float, int or bool)"
                           f"{' or, for labels, strings' if header.name in Y_NAMES else ''}, got dtype {header.dtype}")


def _check_x(x: Header, max_bytes: int) -> None:
    if len(x.shape) < 2 or 0 in x.shape[1:]:
        raise DatasetError("invalid_request", f"x must be [rows, features...] with at least one feature, got shape "
                           f"{list(x.shape)}")
    stored = x.count * 4 + x.shape[0] * 8  # canonical x float32 and y int64
    if stored > max_bytes:
        raise DatasetError("payload_too_large", f"x declares shape {list(x.shape)}: {stored} bytes once stored as "
                           f"float32, over the {max_bytes}-byte dataset limit (KDSERVE_MAX_DATASET_BYTES)",
                           status=413)


def _check_y(y: Header, rows: int) -> None:
    if y.shape != (rows,):
        raise DatasetError("invalid_request", f"y must have shape [{rows}] to match x, got {list(y.shape)}")


def _read(header: Header, dtype) -> np.ndarray:
    """The member's data, CHUNK_BYTES at a time, cast into one array of `dtype` allocated up front
    (its size was judged from the header). Short data is an error, not a smaller array."""
    out = np.empty(header.count, dtype=dtype)
    step = max(1, CHUNK_BYTES // max(header.dtype.itemsize, 1))
    with np.errstate(over="ignore", invalid="ignore"):  # float64 1e300 → inf: refused later as not finite
        for start in range(0, header.count, step):
            n = min(step, header.count - start)
            raw = header.stream.read(n * header.dtype.itemsize)
            if len(raw) != n * header.dtype.itemsize:
                raise DatasetError("unsupported_format", f"array {header.name!r} is truncated: its header declares "
                                   f"shape {list(header.shape)} but the data ends early")
            out[start:start + n] = np.frombuffer(raw, dtype=header.dtype)
    if header.fortran_order:  # column-major on disk: one copy to the row-major layout the worker expects
        return np.ascontiguousarray(out.reshape(header.shape[::-1]).T)
    return out.reshape(header.shape)
