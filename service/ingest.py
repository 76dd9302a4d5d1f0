"""Dataset readers: an upload becomes one canonical npz (x float32 [N, *shape], y int64 [N], -1 =
unlabelled) at the door, so every bad cell is a 422 at upload time and the worker reads one format.

Text (JSONL: one object per line with a text, optionally a label and a second text of a pair) is
stored as raw text in the canonical npz (service/store/datasets.py: UTF-8 bytes + offsets, no pickle): it can only be
tokenised once a job names the teacher whose tokenizer the student will share.

The readers are bounded (`Limits`): an npz is judged from its array headers before its data is
read (service/npz_reader.py), a CSV is streamed into float32 blocks, labels are class indices
below KDSERVE_MAX_CLASSES. The API runs them in a child process with a memory limit
(service/ingest_child.py), never in its own.

NumPy only (the API process never imports torch). npz files are never unpickled.
"""

from __future__ import annotations

import array
import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kdserve.service.ingest_errors import DatasetError  # noqa: F401  (re-exported: callers catch ingest.DatasetError)
from kdserve.service.npz_reader import read_npz
from kdserve.service.store.datasets import Parsed, TextParsed
from kdserve.service.vocab import DATASET_FORMATS

FORMATS = tuple(DATASET_FORMATS)
MAX_TEXT_CHARS = 200_000  # one text; longer is surely not a sentence or a document for an encoder
CSV_BLOCK_CELLS = 1 << 16  # CSV rows are converted to float32 this many cells at a time


@dataclass(frozen=True)
class Limits:
    """What one upload may become: `max_bytes` of canonical npz arrays (KDSERVE_MAX_DATASET_BYTES)
    and labels 0..max_classes-1 (KDSERVE_MAX_CLASSES)."""

    max_bytes: int
    max_classes: int

    @classmethod
    def defaults(cls) -> "Limits":
        """The settings' defaults, for callers without settings (tests, scripts). Imported here, not
        at the top: the parse child gets its limits from the API and need not load pydantic."""
        from kdserve.service.settings import Settings

        fields = Settings.model_fields
        return cls(fields["max_dataset_bytes"].default, fields["max_classes"].default)


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


def parse(path: Path, fmt: str, label_column: str | None = None, text_column: str = "text",
          text_pair_column: str = "text_pair", *, limits: Limits | None = None) -> "Parsed | TextParsed":
    """The upload at `path` as canonical arrays, or a DatasetError saying what is wrong with it.
    `label_column` None: the user named none (CSV: a column named like a label is taken, and the
    answer says so; JSONL: `label`). Memory: about the canonical arrays plus a chunk for npz, twice
    them for CSV (never the file's declared sizes: an npz header over limits.max_bytes is refused
    before its data is read)."""
    limits = limits or Limits.defaults()
    if fmt == "jsonl":
        return _parse_jsonl(path, text_column, text_pair_column, label_column or "label", limits)
    if fmt == "npz":
        x, y_raw, names = read_npz(path, limits.max_bytes)
        notes: dict = {"messages": []}
        if names != ({"x": "x", "y": "y"} if y_raw is not None else {"x": "x"}):
            notes["arrays"] = names
        y = _labels(y_raw, limits.max_classes, notes) if y_raw is not None else np.full(len(x), -1, np.int64)
        if not notes["messages"]:
            del notes["messages"]
        parsed = Parsed(x, y, notes=notes or None)
    elif fmt == "csv":
        parsed = _parse_csv(path, label_column, limits)
    else:
        raise DatasetError("unsupported_format", f"dataset format {fmt!r} is not supported; use one of {list(FORMATS)}", "format")
    if parsed.x.shape[0] == 0:
        raise DatasetError("invalid_request", "the dataset has no rows")
    bad = _first_nonfinite_row(parsed.x)
    if bad is not None:
        raise DatasetError("invalid_request", f"the features contain NaN or inf (first at row {bad})")
    return parsed


def _first_nonfinite_row(x: np.ndarray) -> int | None:
    """Checked a block of rows at a time: a boolean copy of all of x would be a quarter of it again."""
    rows = x.reshape(len(x), -1)
    step = max(1, CSV_BLOCK_CELLS * 16 // max(rows.shape[1], 1))
    for start in range(0, len(rows), step):
        finite = np.isfinite(rows[start:start + step]).all(axis=1)
        if not finite.all():
            return start + int(np.argmin(finite))
    return None


def _labels(raw: np.ndarray, max_classes: int, notes: dict) -> np.ndarray:
    """npz labels as int64: integral values in -1..max_classes-1, checked in their stored dtype
    (a float64 1e300 or an int64 2**62 must not wrap or become a 2**62-bin histogram); or class
    names (a str array, "" = unlabelled), numbered in sorted order."""
    if raw.dtype.kind == "U":
        seen, first = np.unique(raw, return_inverse=True)
        return name_ids([str(n) for n in seen], first, max_classes, notes)
    if raw.dtype.kind == "f" and (not np.isfinite(raw).all() or not np.all(raw == np.round(raw))):
        raise DatasetError("invalid_request", "labels must be integer class indices (or -1 for unlabelled)")
    outside = (raw < -1) | (raw >= max_classes)
    if outside.any():
        row = int(np.argmax(outside))
        raise DatasetError("label_out_of_range", f"y[{row}] = {raw[row]}: labels must be class indices 0.."
                           f"{max_classes - 1} (KDSERVE_MAX_CLASSES), or -1 for an unlabelled row")
    return raw.astype(np.int64)


def _parse_csv(path: Path, label_column: str | None, limits: Limits) -> Parsed:
    """Streamed: rows are read a line at a time and converted to float32 a block at a time, so the
    peak is about twice the final x (the blocks, then their concatenation), whatever the text."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle)
            try:
                return _read_csv_rows(reader, label_column, limits)
            except csv.Error as exc:  # a field over 128 KiB, a NUL byte, an unclosed quote at the end
                raise DatasetError("invalid_request", f"line {reader.line_num}: {exc}")
    except UnicodeDecodeError:
        raise DatasetError("unsupported_format", "the CSV is not UTF-8 text")


LABEL_NAMES = ("label", "target", "class", "y")  # a column named like this is the label when none is named


def _label_index(header: list[str], label_column: str | None, notes: dict) -> int | None:
    """The label column: the one named (a 422 listing the columns when there is none of that name),
    else the first named like a label (case aside), else none (every row unlabelled)."""
    if label_column is not None:
        if label_column not in header:
            near = [h for h in header if h.lower() == label_column.lower()]
            hint = f" (did you mean {near[0]!r}? names are case-sensitive)" if near else ""
            raise DatasetError("invalid_request", f"the CSV has no column {label_column!r}{hint}; its columns are "
                               f"{header[:50]}", "label_column")
        return header.index(label_column)
    found = next((i for i, h in enumerate(header) if h.lower() in LABEL_NAMES), None)
    if found is not None:
        notes["label_column"] = header[found]
        notes["messages"].append(f"no label_column given: column {header[found]!r} is the label")
    else:
        notes["messages"].append(f"no label_column given and no column named {' / '.join(LABEL_NAMES)}: every row is "
                                 "unlabelled (name the label column with label_column)")
    return found


def _drop_index_column(x: np.ndarray, header: list[str], feature_idx: list[int], notes: dict) -> np.ndarray:
    """pandas' to_csv writes the row index as a first column with an empty name: when that column
    holds distinct non-negative integers it is an index, not a feature, and is dropped (and said)."""
    if header[0] != "" or not feature_idx or feature_idx[0] != 0 or x.shape[1] < 2:
        return x
    col = x[:, 0]
    if (col >= 0).all() and (col == np.round(col)).all() and len(np.unique(col)) == len(col):
        notes["dropped_columns"] = ["(unnamed first column: the row index pandas writes)"]
        notes["messages"].append("the unnamed first column holds distinct row numbers (pandas' index): dropped, not a "
                                 "feature (write the CSV with index=False to avoid it)")
        return np.ascontiguousarray(x[:, 1:])
    return x


def _read_csv_rows(reader, label_column: str | None, limits: Limits) -> Parsed:
    header = next(reader, None)
    if not header:
        raise DatasetError("invalid_request", "the CSV is empty; it needs a header row")
    header = [h.strip() for h in header]
    notes: dict = {"messages": []}
    label_idx = _label_index(header, label_column, notes)
    feature_idx = [i for i in range(len(header)) if i != label_idx]
    if not feature_idx:
        raise DatasetError("invalid_request", "the CSV has no feature columns")
    max_rows = max(0, limits.max_bytes // (4 * len(feature_idx) + 8))
    block_rows = max(1, CSV_BLOCK_CELLS // len(feature_idx))
    blocks: list[np.ndarray] = []
    block: list[list[float]] = []
    labels = _CsvLabels(limits.max_classes)
    for row in reader:
        if not row or all(not c.strip() for c in row):
            continue
        line_no = reader.line_num
        if len(row) != len(header):
            raise DatasetError("invalid_request", f"line {line_no} has {len(row)} cells, the header has {len(header)}")
        block.append(_csv_features(row, feature_idx, header, line_no))
        labels.add(row[label_idx] if label_idx is not None else "", line_no)
        if len(labels.ids) > max_rows:
            raise DatasetError("payload_too_large", f"the CSV passes the {limits.max_bytes}-byte dataset limit "
                               f"(KDSERVE_MAX_DATASET_BYTES) at line {line_no}", status=413)
        if len(block) == block_rows:
            blocks.append(np.array(block, dtype=np.float32))
            block.clear()
    blocks.append(np.array(block, dtype=np.float32).reshape(len(block), len(feature_idx)))
    x = _drop_index_column(np.concatenate(blocks) if len(blocks) > 1 else blocks[0], header, feature_idx, notes)
    return Parsed(x, labels.finish(notes), notes=notes if notes["messages"] else None)


def _csv_features(row: list[str], feature_idx: list[int], header: list[str], line_no: int) -> list[float]:
    try:
        return [float(row[i]) for i in feature_idx]
    except ValueError:
        col = next(i for i in feature_idx if not _is_float(row[i]))
        raise DatasetError("invalid_request", f"line {line_no}, column {header[col]!r}: {_clip(row[col])!r} is not "
                           f"a number (features must be numbers; if {header[col]!r} is the label, name it: "
                           f"label_column={header[col]})", "label_column")


class _CsvLabels:
    """A CSV's label cells, a row at a time: class indices ("3", "3.0"), or class names as soon as
    one cell is not a number ("setosa"; numbers seen before become names too). An empty cell is an
    unlabelled row. Names get provisional ids in the order met; finish() numbers them sorted."""

    def __init__(self, max_classes: int):
        self.max_classes = max_classes
        self.ids = array.array("q")
        self.names: dict[str, int] | None = None  # class name -> provisional id, once labels are names

    def add(self, cell: str, line_no: int) -> None:
        cell = cell.strip()
        if cell and self.names is None and not _is_float(cell):
            self.names = {}
            for i, value in enumerate(self.ids):
                if value >= 0:
                    self.ids[i] = self.names.setdefault(str(value), len(self.names))
        if not cell:
            self.ids.append(-1)
        elif self.names is None:
            self.ids.append(_csv_label(cell, line_no, self.max_classes))
        else:
            self.ids.append(self.names.setdefault(cell, len(self.names)))
            if len(self.names) > self.max_classes:
                raise DatasetError("label_out_of_range", f"line {line_no}: class name {_clip(cell)!r} is the "
                                   f"{len(self.names)}th distinct label, over KDSERVE_MAX_CLASSES ({self.max_classes})",
                                   "label_column")

    def finish(self, notes: dict) -> np.ndarray:
        ids = np.frombuffer(self.ids, dtype=np.int64) if len(self.ids) else np.zeros(0, np.int64)
        return ids if self.names is None else name_ids(list(self.names), ids, self.max_classes, notes)


def name_ids(met: list[str], ids: np.ndarray, max_classes: int, notes: dict) -> np.ndarray:
    """Labels given as class names: `ids` index `met` (the names in any order; "" = unlabelled).
    The classes are numbered in sorted order, as scikit-learn's LabelEncoder numbers them (so a
    teacher trained with it agrees); `notes` gets class_names and says so."""
    classes = sorted(n for n in met if n != "")
    if len(classes) > max_classes:
        raise DatasetError("label_out_of_range", f"{len(classes)} distinct class names, over KDSERVE_MAX_CLASSES "
                           f"({max_classes})", "label_column")
    number = np.array([classes.index(n) if n != "" else -1 for n in met] + [-1], dtype=np.int64)
    notes["class_names"] = classes
    shown = ", ".join(f"{i} = {n!r}" for i, n in enumerate(classes[:10])) + (", …" if len(classes) > 10 else "")
    notes["messages"].append(f"the labels are class names: numbered in sorted order ({shown}); a teacher's output i "
                             "is taken to mean class i of that list, and the student answers these names")
    return number[np.where(ids >= 0, ids, -1)]


def _csv_label(cell: str, line_no: int, max_classes: int) -> int:
    """An integer class index 0..max_classes-1 ("3" or "3.0"); an empty cell is an unlabelled row."""
    cell = cell.strip()
    if not cell:
        return -1
    try:
        value = int(cell)
    except ValueError:
        number = float(cell) if _is_float(cell) else float("nan")
        if not np.isfinite(number) or number != int(number):
            raise DatasetError("invalid_request", f"line {line_no}: label {_clip(cell)!r} is not an integer class index",
                               "label_column")
        value = int(number)
    if not 0 <= value < max_classes:
        raise DatasetError("label_out_of_range", f"line {line_no}: label {_clip(cell)} is not a class index 0.."
                           f"{max_classes - 1} (KDSERVE_MAX_CLASSES); leave the cell empty for an unlabelled row",
                           "label_column")
    return value


def _clip(cell: str) -> str:
    """A cell as an error message quotes it: a 100 KiB cell is shown by its first 40 characters."""
    return cell if len(cell) <= 40 else cell[:40] + "…"


def _is_float(cell: str) -> bool:
    try:
        float(cell)
        return True
    except ValueError:
        return False


def _parse_jsonl(path: Path, text_column: str, pair_column: str, label_column: str, limits: Limits) -> TextParsed:
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
                except RecursionError:  # [[[[… nested deeper than the interpreter's stack
                    raise DatasetError("invalid_request", f"line {line_no} nests JSON too deeply")
                if not isinstance(row, dict):
                    raise DatasetError("invalid_request", f"line {line_no} must be a JSON object like "
                                       f'{{"{text_column}": "...", "{label_column}": 0}}')
                texts.append(_text_cell(row, text_column, line_no, "text_column"))
                pairs.append(_text_cell(row, pair_column, line_no, "text_pair_column") if pair_column in row else None)
                labels.append(_label_cell(row.get(label_column), line_no, limits.max_classes))
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


def _label_cell(value, line_no: int, max_classes: int) -> int:
    if value is None:
        return -1
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            isinstance(value, float) and (not np.isfinite(value) or value != int(value))):
        raise DatasetError("invalid_request", f"line {line_no}: label {value!r} is not an integer class index "
                           "(use null or leave it out for an unlabelled row)", "label_column")
    if value < -1 or value >= max_classes:
        raise DatasetError("label_out_of_range", f"line {line_no}: label {value} is not a class index 0.."
                           f"{max_classes - 1} (KDSERVE_MAX_CLASSES); use null or -1 for an unlabelled row",
                           "label_column")
    return int(value)
