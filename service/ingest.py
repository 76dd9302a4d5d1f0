"""Dataset readers: an upload becomes one canonical npz (x float32 [N, *shape], y int64 [N], -1 =
unlabelled) at the door, so every bad cell is a 422 at upload time and the worker reads one format.

Text (JSONL: one object per line with a text, optionally a label and a second text of a pair) is
stored as raw text in the canonical npz (UTF-8 bytes + offsets, no pickle): it can only be
tokenised once a job names the teacher whose tokenizer the student will share.

NumPy only (the API process never imports torch). npz files are read with allow_pickle=False.
"""

from __future__ import annotations

import csv
import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMATS = ("npz", "csv", "jsonl")
TEXT_FORMATS = ("jsonl",)
MAX_TEXT_CHARS = 200_000  # one text; longer is surely not a sentence or a document for an encoder


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
    if (filename and filename.lower().endswith((".jsonl", ".ndjson"))) or head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"{":
        return "jsonl"
    try:
        head.decode("utf-8")
        return "csv"
    except UnicodeDecodeError:
        raise DatasetError("unsupported_format", "cannot tell the dataset format; pass format (npz, csv or jsonl)",
                           "format")


def parse(path: Path, fmt: str, label_column: str = "label", text_column: str = "text",
          text_pair_column: str = "text_pair") -> "Parsed | TextParsed":
    if fmt == "jsonl":
        return _parse_jsonl(path, text_column, text_pair_column, label_column)
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


def load_canonical(path: Path) -> "Parsed | TextParsed":
    with np.load(path, allow_pickle=False) as z:
        if "text_offsets" in z.files:
            pairs = _unpack(z["pair_bytes"], z["pair_offsets"]) if "pair_offsets" in z.files else None
            return TextParsed(_unpack(z["text_bytes"], z["text_offsets"]), pairs, z["y"])
        return Parsed(z["x"], z["y"])


# ---- text -----------------------------------------------------------------------------------


@dataclass
class TextParsed:
    """A text dataset: raw texts (and the second texts of pairs), labels (-1 = unlabelled)."""

    texts: list[str]
    pairs: list[str] | None
    y: np.ndarray  # int64 [N]

    @property
    def labeled(self) -> bool:
        return bool((self.y >= 0).any())

    def summary(self) -> dict:
        labelled = self.y[self.y >= 0]
        counts = np.bincount(labelled) if labelled.size else np.zeros(0, dtype=np.int64)
        chars = np.fromiter((len(t) for t in self.texts), dtype=np.int64, count=len(self.texts))
        return {
            "num_rows": len(self.texts),
            "feature_shape": [],  # texts have no shape until a job tokenises them
            "labeled": self.labeled,
            "num_classes": int(counts.size) if labelled.size else None,
            "class_counts": {str(c): int(n) for c, n in enumerate(counts) if n} if labelled.size else None,
            "details": {"kind": "text", "text_pairs": self.pairs is not None,
                        "mean_chars": round(float(chars.mean()), 2), "max_chars": int(chars.max())},
        }

    def save(self, path: Path) -> None:
        arrays = dict(zip(("text_bytes", "text_offsets"), _pack(self.texts)))
        if self.pairs is not None:
            arrays.update(zip(("pair_bytes", "pair_offsets"), _pack(self.pairs)))
        with open(path, "wb") as f:
            np.savez(f, y=self.y, **arrays)


def _pack(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """UTF-8 bytes of every text back to back, and the N+1 offsets between them (no object arrays)."""
    encoded = [t.encode("utf-8") for t in texts]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    return np.frombuffer(b"".join(encoded), dtype=np.uint8).copy(), offsets


def _unpack(data: np.ndarray, offsets: np.ndarray) -> list[str]:
    raw = data.tobytes()
    return [raw[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(len(offsets) - 1)]


def _parse_jsonl(path: Path, text_column: str, pair_column: str, label_column: str) -> TextParsed:
    """One JSON object per line: `text_column` (a string) is required; `label_column` is an integer
    class index, absent or null for an unlabelled row; `pair_column` makes the rows text pairs and
    then every row needs it. Blank lines are skipped. Every error names its line."""
    texts: list[str] = []
    pairs: list[str | None] = []
    labels: list[int] = []
    try:
        with open(path, encoding="utf-8-sig") as handle:
            for line_no, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as exc:
                    raise DatasetError("invalid_request", f"line {line_no} is not valid JSON: {exc}")
                if not isinstance(row, dict):
                    raise DatasetError("invalid_request", f"line {line_no} must be a JSON object like "
                                       f'{{"{text_column}": "...", "{label_column}": 0}}')
                texts.append(_text_cell(row, text_column, line_no, "text_column"))
                pairs.append(_text_cell(row, pair_column, line_no, "text_pair_column") if pair_column in row else None)
                labels.append(_label_cell(row.get(label_column), line_no))
    except UnicodeDecodeError:
        raise DatasetError("unsupported_format", "the JSONL file is not UTF-8 text")
    if not texts:
        raise DatasetError("invalid_request", "the dataset has no rows")
    have_pairs = [p is not None for p in pairs]
    if any(have_pairs) and not all(have_pairs):
        first = have_pairs.index(False) if have_pairs[0] else have_pairs.index(True)
        raise DatasetError("invalid_request", f"some rows have {pair_column!r} and some do not (first difference at row "
                           f"{first + 1}); a dataset is all single texts or all text pairs", "text_pair_column")
    return TextParsed(texts, [p for p in pairs if p is not None] if any(have_pairs) else None,
                      np.asarray(labels, dtype=np.int64))


def _text_cell(row: dict, column: str, line_no: int, param: str) -> str:
    if column not in row:
        raise DatasetError("invalid_request", f"line {line_no} has no {column!r} field (its fields are "
                           f"{sorted(row)[:10]}); set {param} to the field holding the text", param)
    value = row[column]
    if not isinstance(value, str):
        raise DatasetError("invalid_request", f"line {line_no}: {column!r} must be a string, got "
                           f"{type(value).__name__}", param)
    if len(value) > MAX_TEXT_CHARS:
        raise DatasetError("invalid_request", f"line {line_no}: {column!r} has {len(value)} characters; the limit is "
                           f"{MAX_TEXT_CHARS}", param)
    return value


def _label_cell(value, line_no: int) -> int:
    if value is None:
        return -1
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            isinstance(value, float) and (not np.isfinite(value) or value != int(value))):
        raise DatasetError("invalid_request", f"line {line_no}: label {value!r} is not an integer class index "
                           "(use null or leave it out for an unlabelled row)", "label_column")
    if value < -1 or value >= 2**31:
        raise DatasetError("label_out_of_range", f"line {line_no}: label {value} must be ≥ 0 (or -1 / null for "
                           "unlabelled)", "label_column")
    return int(value)
