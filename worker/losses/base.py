"""The losses: one decorated class per distillation method, bound by name to its spec.

A method's params schema, description and flags live torch-free in kdserve.service.spec.methods
(the API validates a job with them, and serves them at GET /v1/methods); its loss is one module
in this package:

    @register_method("mine")          # define_method("mine", params=MyParams, ...) in the spec
    class MyLoss(DistillLoss):
        def forward(self, inp: LossInputs) -> torch.Tensor:
            ...  # self.params is a validated MyParams

`worker/losses/__init__.py` imports every module of the package; every defined method must have a
loss (api_tests/unit/test_spec.py checks it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from kdserve.service.spec.methods import METHODS as METHOD_SPECS
from kdserve.service.spec.binding import Bound
from kdserve.service.spec.methods import MethodParams


@dataclass
class LossInputs:
    """Everything a loss may look at for one batch.

    student_logits: [B, C] raw student outputs (the main head).
    labels:         [B] int64, -1 where a sample is unlabelled; None for an unlabelled dataset.
    teacher_logits: [B, C] cached teacher outputs (detached); None for self-distillation.
    epoch/epochs:   0-based current epoch and the total, for schedules (warm-ups, PS-KD's alpha).
    extras:         method-specific tensors the trainer provides when a loss asks for them
                    through its spec's `requires` (e.g. "aux_logits", "prev_probs").
    """

    student_logits: torch.Tensor
    labels: torch.Tensor | None = None
    teacher_logits: torch.Tensor | None = None
    epoch: int = 0
    epochs: int = 1
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class PrepareData:
    """What a loss may look at once, before training (to size or fit its own parts)."""

    student_feature_shape: tuple[int, ...]  # one batch's student hint feature shape, e.g. (B, D)
    teacher_logits: torch.Tensor | None     # [N, C] over the training split
    teacher_features: torch.Tensor | None   # [N, ...] the teacher output named by the job
    labels: torch.Tensor                    # [N], -1 = unlabelled


class DistillLoss(torch.nn.Module):
    """A distillation objective. It is an nn.Module so a method may own learnable parts
    (a FitNets regressor, say); the trainer optimises them with the student.

    Extras the trainer can provide (the method's spec lists those it needs: `requires`):
      "aux_logits"        [B, C]  an auxiliary linear head on the student's penultimate features
                                  (trained with the student, never exported)
      "student_features"  the output of `student_layer()` of the student's body (default: the
                                  penultimate features [B, D])
      "teacher_features"  [B, ...] the teacher output the job names in `teacher_features`
      "prev_probs"        [B, C]  the student's own softmax for these samples from the previous
                                  epoch (one-hot labels before the first)
    """

    requires: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, params: MethodParams):
        super().__init__()
        self.params = params

    def forward(self, inp: LossInputs) -> torch.Tensor:  # pragma: no cover - abstract
        raise TypeError(f"{type(self).__name__} must implement forward()")

    # Hooks with defaults; a method overrides only what it needs.

    def output_width(self, num_classes: int) -> int:
        """Width of the student's head (LELP's is S·C)."""
        return num_classes

    def class_logits(self, student_logits: torch.Tensor) -> torch.Tensor:
        """Class logits from the head's output; what evaluation and the exported model return."""
        return student_logits

    def student_layer(self) -> int:
        """Index into the student's `body` whose output is "student_features" (-1: the last)."""
        return -1

    def prepare(self, data: PrepareData) -> None:
        """Called once before the optimizer is built: create or fit the loss's own parts."""


@dataclass(frozen=True)
class MethodInfo(Bound):
    """A method's spec (params, flags: `info.needs_teacher`...) and the loss that implements it."""

    loss_cls: type[DistillLoss]


METHODS: dict[str, MethodInfo] = {}


def register_method(name: str):
    """Bind a loss to the method `name` of kdserve.service.spec.methods: its params class validates
    the loss's params, its `requires` are the extras the trainer provides."""
    spec = METHOD_SPECS[name]

    def decorate(cls: type[DistillLoss]) -> type[DistillLoss]:
        if name in METHODS:
            raise ValueError(f"method {name!r} registered twice")
        cls.requires = spec.requires
        METHODS[name] = MethodInfo(spec, cls)
        return cls

    return decorate


def build_loss(name: str, params: dict[str, Any] | None = None) -> DistillLoss:
    info = METHODS[name]
    return info.loss_cls(info.params.model_validate(params or {}))


# ---- helpers shared by the method modules ---------------------------------------------------


def upcast(x: torch.Tensor) -> torch.Tensor:
    """Compute in at least float32 (fp16/bf16 → fp32), never down-cast float64."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def labelled_ce(logits: torch.Tensor, labels: torch.Tensor | None, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy over the labelled samples of the batch (label -1 = unlabelled), in ≥ fp32.
    Zero (with a graph) when the batch has no labelled sample."""
    if labels is None:
        return logits.sum() * 0.0
    # ignore_index instead of a boolean mask: no host sync and no gather on the hot path. "mean"
    # divides by the labelled count; a batch without labels gives 0/0 = NaN, which nan_to_num turns
    # into 0 (its gradient is 0 there, and cross_entropy gives ignored rows none): two autograd ops,
    # where sum / count.clamp(1) took five.
    mean = F.cross_entropy(upcast(logits), labels, ignore_index=-1, label_smoothing=label_smoothing)
    return torch.nan_to_num(mean, nan=0.0, posinf=math.inf, neginf=-math.inf)


def kl_batchmean(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) summed over classes, averaged over the batch, from log-probabilities.
    (F.kl_div takes the arguments the other way round: input = log q, target = log p.)"""
    return F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)
