"""The job's data in memory: the canonical arrays split into train and validation tensors.

A tabular split holds `x` (float features). A text split holds token tensors from the teacher's
tokenizer: `x` is input_ids, `mask` the attention mask and `types` the segment ids (which only the
teacher reads: the student derives segments from the [SEP] positions itself)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from kdserve.service.store.datasets import Parsed


@dataclass
class Split:
    x: torch.Tensor  # float32 [N, *shape], or int64 input_ids [N, L] for text
    y: torch.Tensor  # int64 [N], -1 = unlabelled
    teacher_logits: torch.Tensor | None = None  # [N, C] (or [N, D] embeddings), filled by the caching stage
    teacher_features: torch.Tensor | None = None  # [N, ...], the teacher output a job names, if any
    mask: torch.Tensor | None = None  # text: int64 attention mask [N, L]
    types: torch.Tensor | None = None  # text: int64 token type ids [N, L] (for the teacher)

    def __len__(self) -> int:
        return len(self.x)

    @property
    def is_text(self) -> bool:
        return self.mask is not None

    @property
    def labelled(self) -> torch.Tensor:
        return self.y >= 0

    def to(self, device: torch.device) -> "Split":
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return Split(move(self.x), move(self.y), move(self.teacher_logits), move(self.teacher_features),
                     move(self.mask), move(self.types))


@dataclass
class Tokens:
    """A tokenised text dataset (kdserve.service.serving.textio.Encoded as tensors) with its labels."""

    x: np.ndarray
    mask: np.ndarray
    types: np.ndarray
    y: np.ndarray


def split_dataset(data: Parsed | Tokens, fraction: float, seed: int) -> tuple[Split, Split]:
    """A seeded random split: `fraction` of the rows (at least one) become the validation set."""
    n = len(data.x)
    if n < 2:
        raise ValueError("a dataset needs at least 2 rows to hold out a validation split")
    order = np.random.default_rng(seed).permutation(n)
    n_val = min(max(1, int(round(n * fraction))), n - 1)
    val, train = order[:n_val], order[n_val:]
    return _split(data, train), _split(data, val)


def whole(data: Parsed | Tokens) -> Split:
    return _split(data, np.arange(len(data.x)))


def _split(data: Parsed | Tokens, idx: np.ndarray) -> Split:
    take = lambda a: torch.from_numpy(np.ascontiguousarray(a[idx]))  # noqa: E731
    if isinstance(data, Tokens):
        return Split(take(data.x), take(data.y), mask=take(data.mask), types=take(data.types))
    return Split(take(data.x), take(data.y))
