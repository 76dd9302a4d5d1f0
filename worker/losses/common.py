"""Helpers shared by the distillation-loss modules (docs/methods.md#conventions).

Not a method: `worker/losses/__init__.py` imports this module like the others, and it registers
nothing.

- `upcast` and `labelled_ce` (re-exported from base) compute in at least float32 (docs/methods.md#conventions) without
  down-casting float64, so `torch.autograd.gradcheck` in float64 sees float64 arithmetic.
- `resolve_targets` is the one fallback rule for label-dependent KD terms: the label where a
  sample has one, the teacher's argmax where it has none (label −1, or `labels is None`).
- `non_target` drops the target column of a [B, C] tensor, giving [B, C−1].
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .base import labelled_ce, upcast  # noqa: F401  (re-exported for the method modules)


def check_logits(logits: torch.Tensor, name: str = "student_logits") -> None:
    if logits.dim() != 2:
        raise ValueError(f"{name} must be [B, C], got shape {tuple(logits.shape)}")
    if logits.shape[0] == 0:
        raise ValueError(f"{name} has an empty batch")


def require_classes(num_classes: int, minimum: int, method: str, why: str) -> None:
    if num_classes < minimum:
        raise ValueError(f"{method} needs at least {minimum} classes ({why}); got C={num_classes}")


def require_teacher(teacher_logits: torch.Tensor | None, student_logits: torch.Tensor, method: str) -> torch.Tensor:
    if teacher_logits is None:
        raise ValueError(f"{method} needs teacher_logits")
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(
            f"{method}: teacher_logits {tuple(teacher_logits.shape)} and student_logits "
            f"{tuple(student_logits.shape)} must have the same shape [B, C]"
        )
    return teacher_logits


def checked_teacher(inp: Any, method: str, two_classes: str | None = None) -> torch.Tensor:
    """The batch's teacher logits, after checking the student's are [B, C] and the teacher's match;
    `two_classes`: why the method needs C ≥ 2, when it does."""
    check_logits(inp.student_logits)
    teacher = require_teacher(inp.teacher_logits, inp.student_logits, method)
    if two_classes is not None:
        require_classes(inp.student_logits.shape[1], 2, method, two_classes)
    return teacher


def require_extra(extras: dict[str, Any], key: str, method: str) -> torch.Tensor:
    if key not in extras or extras[key] is None:
        raise ValueError(f"{method} needs extras[{key!r}] (declared in its `requires`)")
    return extras[key]


def resolve_targets(labels: torch.Tensor | None, teacher_logits: torch.Tensor | None) -> torch.Tensor:
    """Target class per sample for label-dependent KD terms: y_i where labelled, else argmax_c t_ic.

    Raises ValueError when a sample has neither a label nor a teacher."""
    fallback = None if teacher_logits is None else teacher_logits.argmax(dim=1)
    if labels is None:
        if fallback is None:
            raise ValueError("no labels and no teacher logits: cannot pick a target class")
        return fallback
    labels = labels.long()
    unlabelled = labels < 0
    if not bool(unlabelled.any()):
        return labels
    if fallback is None:
        raise ValueError("unlabelled samples (label −1) need teacher logits for the target-class fallback")
    return torch.where(unlabelled, fallback, labels)


def target_mask(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Boolean one-hot [B, C] of the target classes."""
    return F.one_hot(target, num_classes).bool()


def non_target(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """[B, C] → [B, C−1]: every column except the target one, order kept."""
    b, c = x.shape
    keep = ~target_mask(target, c)
    return x[keep].view(b, c - 1)
