"""Dataset readers: an upload becomes one canonical npz (x float32 [N, *shape], y int64 [N], -1 =
unlabelled) at the door, so every bad cell is a 422 at upload time and the worker reads one format.

NumPy only (the API process never imports torch). npz files are read with allow_pickle=False.
"""

from __future__ import annotations

import csv
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMATS = ("npz", "csv")


class DatasetError(Exception):
    def __init__(self, code: str, message: str, param: str | None = "file"):
        super().__init__(message)
        self.code, self.message, self.param = code, message, param


@dataclass
class Parsed:
    x: np.ndarray  # float32 [N, *feature_shape]
    y: np.ndarray  # int64 [N], -1 where unlabelled

    @property
    def labeled(self) -> bool:
        return bool((self.y >= 0).any())

    def summary(self) -> dict:
        labelled = self.y[self.y >= 0]
        counts = np.bincount(labelled) if labelled.size else np.zeros(0, dtype=np.int64)
        return {
            "num_rows": int(self.x.shape[0]),
            "feature_shape": [int(d) for d in self.x.shape[1:]],
            "labeled": self.labeled,
            "num_classes": int(counts.size) if labelled.size else None,
            "class_counts": {str(c): int(n) for c, n in enumerate(counts) if n} if labelled.size else None,
        }

    def save(self, path: Path) -> None:
        with open(path, "wb") as f:
            np.savez(f, x=self.x, y=self.y)


def detect_format(filename: str | None, head: bytes) -> str:
    if head[:4] == b"PK\x03\x04":
        return "npz"
    if filename and filename.lower().endswith(".csv"):
        return "csv"
    try:
        head.decode("utf-8")
        return "csv"
    except UnicodeDecodeError:
        raise DatasetError("unsupported_format", "cannot tell the dataset format; pass format (npz or csv)", "format")


def parse(path: Path, fmt: str, label_column: str = "label") -> Parsed:
    if fmt == "npz":
        parsed = _parse_npz(path)
    elif fmt == "csv":
        parsed = _parse_csv(path, label_column)
    else:
        raise DatasetError("unsupported_format", f"dataset format {fmt!r} is not supported; use one of {list(FORMATS)}", "format")
    if parsed.x.shape[0] == 0:
        raise DatasetError("invalid_request", "the dataset has no rows")
    if not np.isfinite(parsed.x).all():
        bad = int(np.argwhere(~np.isfinite(parsed.x.reshape(len(parsed.x), -1)))[0][0])
        raise DatasetError("invalid_request", f"the features contain NaN or inf (first at row {bad})")
    return parsed


def _labels(raw: np.ndarray, n: int) -> np.ndarray:
    if raw.shape != (n,):
        raise DatasetError("invalid_request", f"y must have shape [{n}] to match x, got {list(raw.shape)}")
    if raw.dtype.kind == "f":
        if not np.isfinite(raw).all() or not np.all(raw == np.round(raw)):
            raise DatasetError("invalid_request", "labels must be integer class indices (or -1 for unlabelled)")
    elif raw.dtype.kind not in "iub":
        raise DatasetError("invalid_request", f"labels must be integers, got dtype {raw.dtype}")
    y = raw.astype(np.int64)
    if (y < -1).any():
        raise DatasetError("label_out_of_range", "labels must be ≥ 0 (or -1 for an unlabelled row)")
    return y


def _parse_npz(path: Path) -> Parsed:
    try:
        with np.load(path, allow_pickle=False) as z:
            if "x" not in z.files:
                raise DatasetError("invalid_request", f"the npz has no array named 'x' (it has {z.files})")
            x = z["x"]
            y_raw = z["y"] if "y" in z.files else None
    except DatasetError:
        raise
    except ValueError as exc:  # object arrays need pickle: refused
        raise DatasetError("unsafe_file", f"the npz holds object arrays, which need pickle to load: {exc}")
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise DatasetError("unsupported_format", f"not a readable npz file: {exc}")
    if x.dtype.kind not in "fiub":
        raise DatasetError("invalid_request", f"x must be numeric, got dtype {x.dtype}")
    if x.ndim < 2:
        raise DatasetError("invalid_request", f"x must be [rows, features...], got shape {list(x.shape)}")
    y = _labels(y_raw, len(x)) if y_raw is not None else np.full(len(x), -1, dtype=np.int64)
    return Parsed(x.astype(np.float32), y)


def _parse_csv(path: Path, label_column: str) -> Parsed:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DatasetError("unsupported_format", "the CSV is not UTF-8 text")
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if not header:
        raise DatasetError("invalid_request", "the CSV is empty; it needs a header row")
    header = [h.strip() for h in header]
    label_idx = header.index(label_column) if label_column in header else None
    feature_idx = [i for i in range(len(header)) if i != label_idx]
    if not feature_idx:
        raise DatasetError("invalid_request", "the CSV has no feature columns")
    rows: list[list[float]] = []
    labels: list[int] = []
    for line_no, row in enumerate(reader, start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise DatasetError("invalid_request", f"line {line_no} has {len(row)} cells, the header has {len(header)}")
        try:
            rows.append([float(row[i]) for i in feature_idx])
        except ValueError:
            col = next(i for i in feature_idx if not _is_float(row[i]))
            raise DatasetError(
                "invalid_request", f"line {line_no}, column {header[col]!r}: {row[col]!r} is not a number"
            )
        if label_idx is not None:
            cell = row[label_idx].strip()
            if cell == "":
                labels.append(-1)
            else:
                try:
                    value = float(cell)
                except ValueError:
                    value = float("nan")
                if not np.isfinite(value) or value != int(value):
                    raise DatasetError(
                        "invalid_request", f"line {line_no}: label {cell!r} is not an integer class index", "label_column"
                    )
                labels.append(int(value))
    x = np.asarray(rows, dtype=np.float32).reshape(len(rows), len(feature_idx))
    y = _labels(np.asarray(labels, dtype=np.int64), len(x)) if label_idx is not None else np.full(len(x), -1, np.int64)
    return Parsed(x, y)


def _is_float(cell: str) -> bool:
    try:
        float(cell)
        return True
    except ValueError:
        return False


def load_canonical(path: Path) -> Parsed:
    with np.load(path, allow_pickle=False) as z:
        return Parsed(z["x"], z["y"])
