"""The training loop, top to bottom. No callbacks: the pipeline passes two plain functions,
`on_epoch(metrics)` to record progress and `should_stop()` to honour cancel and time limits.

The whole split is moved to the device once (the datasets here fit in memory); batches are index
slices of those tensors, so there is no per-batch host→device copy and nothing assumes a CPU.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from service.schemas import TrainingSpec
from worker.data import Split
from worker.losses import DistillLoss, LossInputs


class Stopped(Exception):
    """should_stop() said so; `reason` is what it returned."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class EpochMetrics:
    epoch: int  # 1-based: epochs completed
    train_loss: float
    val_loss: float | None
    val_accuracy: float | None
    val_agreement: float | None
    seconds: float
    lr: float


@dataclass
class TrainResult:
    history: list[EpochMetrics] = field(default_factory=list)
    samples_per_second: float = 0.0


def make_optimizer(params, spec: TrainingSpec) -> torch.optim.Optimizer:
    if spec.optimizer == "sgd":
        return torch.optim.SGD(params, lr=spec.learning_rate, momentum=0.9, weight_decay=spec.weight_decay, nesterov=True)
    if spec.optimizer == "adam":
        return torch.optim.Adam(params, lr=spec.learning_rate, weight_decay=spec.weight_decay)
    return torch.optim.AdamW(params, lr=spec.learning_rate, weight_decay=spec.weight_decay)


def train(
    student: torch.nn.Module,
    loss_fn: DistillLoss,
    train_split: Split,
    val_split: Split,
    spec: TrainingSpec,
    device: torch.device,
    on_epoch: Callable[[EpochMetrics], None] = lambda m: None,
    should_stop: Callable[[], str | None] = lambda: None,
) -> TrainResult:
    torch.manual_seed(spec.seed)
    student.to(device)
    loss_fn.to(device)
    train_d, val_d = train_split.to(device), val_split.to(device)
    has_labels = bool(train_split.labelled.any())

    optimizer = make_optimizer(list(student.parameters()) + list(loss_fn.parameters()), spec)
    steps_per_epoch = math.ceil(len(train_d) / spec.batch_size)
    # Cosine decay to zero over the whole run: one schedule that works for every method here.
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=spec.epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(spec.seed)

    result = TrainResult()
    trained_samples, train_seconds = 0, 0.0
    for epoch in range(spec.epochs):
        student.train()
        t0 = time.perf_counter()
        order = torch.randperm(len(train_d), generator=generator).to(device)
        total, count = torch.zeros((), device=device), 0
        for start in range(0, len(order), spec.batch_size):
            reason = should_stop()
            if reason:
                raise Stopped(reason)
            idx = order[start : start + spec.batch_size]
            if len(idx) < 2 and count:  # a trailing batch of one breaks BatchNorm; the next shuffle places it elsewhere
                continue
            logits = student(train_d.x[idx])
            inp = LossInputs(
                student_logits=logits,
                labels=train_d.y[idx] if has_labels else None,
                teacher_logits=None if train_d.teacher_logits is None else train_d.teacher_logits[idx],
                epoch=epoch,
                epochs=spec.epochs,
            )
            loss = loss_fn(inp)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.detach() * len(idx)
            count += len(idx)
        seconds = time.perf_counter() - t0
        trained_samples += count
        train_seconds += seconds
        metrics = evaluate_epoch(student, loss_fn, val_d, epoch, spec)
        record = EpochMetrics(
            epoch=epoch + 1, train_loss=float(total) / max(count, 1), seconds=seconds,
            lr=optimizer.param_groups[0]["lr"], **metrics,
        )
        result.history.append(record)
        on_epoch(record)
    result.samples_per_second = trained_samples / train_seconds if train_seconds else 0.0
    return result


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]).float()


@torch.no_grad()
def evaluate_epoch(student, loss_fn: DistillLoss, val: Split, epoch: int, spec: TrainingSpec) -> dict:
    logits = predict(student, val.x)
    labelled = val.y >= 0
    inp = LossInputs(logits, val.y if bool(labelled.any()) else None, val.teacher_logits, epoch, spec.epochs)
    # A loss that needs per-batch extras (auxiliary heads, last epoch's predictions) has no whole-set value.
    val_loss = None if loss_fn.requires else float(loss_fn(inp))
    pred = logits.argmax(1)
    acc = float((pred[labelled] == val.y[labelled]).float().mean()) if bool(labelled.any()) else None
    agree = None if val.teacher_logits is None else float((pred == val.teacher_logits.argmax(1)).float().mean())
    return {"val_loss": val_loss, "val_accuracy": acc, "val_agreement": agree}
