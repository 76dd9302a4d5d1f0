"""The job's data in memory: the canonical arrays split into train and validation tensors."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from service.ingest import Parsed


@dataclass
class Split:
    x: torch.Tensor  # float32 [N, *shape]
    y: torch.Tensor  # int64 [N], -1 = unlabelled
    teacher_logits: torch.Tensor | None = None  # [N, C], filled by the caching stage
    teacher_features: torch.Tensor | None = None  # [N, ...], the teacher output a job names, if any

    def __len__(self) -> int:
        return len(self.x)

    @property
    def labelled(self) -> torch.Tensor:
        return self.y >= 0

    def to(self, device: torch.device) -> "Split":
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return Split(move(self.x), move(self.y), move(self.teacher_logits), move(self.teacher_features))


def split_dataset(data: Parsed, fraction: float, seed: int) -> tuple[Split, Split]:
    """A seeded random split: `fraction` of the rows (at least one) become the validation set."""
    n = len(data.x)
    if n < 2:
        raise ValueError("a dataset needs at least 2 rows to hold out a validation split")
    order = np.random.default_rng(seed).permutation(n)
    n_val = min(max(1, int(round(n * fraction))), n - 1)
    val, train = order[:n_val], order[n_val:]
    return _split(data, train), _split(data, val)


def whole(data: Parsed) -> Split:
    return _split(data, np.arange(len(data.x)))


def _split(data: Parsed, idx: np.ndarray) -> Split:
    return Split(torch.from_numpy(np.ascontiguousarray(data.x[idx])), torch.from_numpy(np.ascontiguousarray(data.y[idx])))
