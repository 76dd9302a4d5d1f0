"""A stored dataset in its canonical form: one npz, the only dataset format the worker ever reads.

- a tensor dataset: `x` float32 [N, *feature_shape] and `y` int64 [N] (-1 = unlabelled)
- a text dataset: the texts as UTF-8 bytes + N+1 offsets (`text_bytes`, `text_offsets`, and
  `pair_bytes`, `pair_offsets` for text pairs), and `y`; no object arrays, so nothing is unpickled

The API's upload parser (service/ingest.py) turns every accepted upload into one of these; the
worker loads them with `load_canonical`. NumPy only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


def _label_summary(y: np.ndarray) -> dict:
    """What a dataset's labels say: whether any row is labelled, the class count and counts."""
    labelled = y[y >= 0]
    counts = np.bincount(labelled) if labelled.size else np.zeros(0, dtype=np.int64)
    return {
        "labeled": bool(labelled.size),
        "num_classes": int(counts.size) if labelled.size else None,
        "class_counts": {str(c): int(n) for c, n in enumerate(counts) if n} if labelled.size else None,
    }



def unknown_classes(names: list[str] | None, known: list[str] | None) -> list[str]:
    """The class names of one dataset that another (or a model) lacks, sorted."""
    return sorted(set(names or []) - set(known or []))


def relabel(y: np.ndarray, names: list[str], into: list[str]) -> np.ndarray:
    """Labels numbered by `names` (a dataset's class_names, sorted within that dataset) renumbered
    by `into` (the training data's or a model's): a test set that meets fewer classes numbers them
    differently. -1 (unlabelled) stays; every name must be in `into` (see unknown_classes)."""
    ids = np.array([into.index(n) for n in names] + [-1], np.int64)
    return ids[np.where(y >= 0, y, -1)]

@dataclass
class Parsed:
    """A tensor dataset."""

    x: np.ndarray  # float32 [N, *feature_shape]
    y: np.ndarray  # int64 [N], -1 where unlabelled
    # what parsing decided for the user, said back at upload (DatasetOut.details): the label column
    # found, the columns dropped, the npz arrays read
    notes: dict | None = None

    @property
    def labeled(self) -> bool:
        return bool((self.y >= 0).any())

    def summary(self) -> dict:
        return {"num_rows": int(self.x.shape[0]), "feature_shape": [int(d) for d in self.x.shape[1:]],
                **_label_summary(self.y), **({"details": self.notes} if self.notes else {})}

    def save(self, path: Path) -> None:
        with open(path, "wb") as f:
            np.savez(f, x=self.x, y=self.y)


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
        chars = np.fromiter((len(t) for t in self.texts), dtype=np.int64, count=len(self.texts))
        return {
            "num_rows": len(self.texts),
            "feature_shape": [],  # texts have no shape until a job tokenises them
            **_label_summary(self.y),
            "details": {"kind": "text", "text_pairs": self.pairs is not None,
                        "mean_chars": round(float(chars.mean()), 2), "max_chars": int(chars.max())},
        }

    def save(self, path: Path) -> None:
        arrays = dict(zip(("text_bytes", "text_offsets"), _pack(self.texts)))
        if self.pairs is not None:
            arrays.update(zip(("pair_bytes", "pair_offsets"), _pack(self.pairs)))
        with open(path, "wb") as f:
            np.savez(f, y=self.y, **arrays)


def load_canonical(path: Path) -> Parsed | TextParsed:
    """A stored dataset, as the worker trains on it."""
    with np.load(path, allow_pickle=False) as z:
        if "text_offsets" in z.files:
            pairs = _unpack(z["pair_bytes"], z["pair_offsets"]) if "pair_offsets" in z.files else None
            return TextParsed(_unpack(z["text_bytes"], z["text_offsets"]), pairs, z["y"])
        return Parsed(z["x"], z["y"])


def _pack(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """UTF-8 bytes of every text back to back, and the N+1 offsets between them (no object arrays)."""
    encoded = [t.encode("utf-8") for t in texts]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    return np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets  # read-only is enough for np.savez


def _unpack(data: np.ndarray, offsets: np.ndarray) -> list[str]:
    raw = data.tobytes()
    return [raw[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(len(offsets) - 1)]
