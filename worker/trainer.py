"""The training loop, top to bottom. No callbacks: the pipeline passes two plain functions,
`on_epoch(metrics)` to record progress and `should_stop()` to honour cancel and time limits.

The whole split is moved to the device once (the datasets here fit in memory); batches are index
slices of those tensors, so there is no per-batch host→device copy and nothing assumes a CPU.

A method asks for more than logits through its loss's `requires` (see worker/losses/base.py):
an auxiliary head, the student's or teacher's features, or last epoch's predictions. The
`Batcher` below builds those for a batch; nothing is computed that the method did not ask for.

Text splits carry input_ids and an attention mask; each batch is cut to its own longest row
(`model_inputs`), so a batch of short sentences does not pay for the longest one in the dataset.
A tabular batch is the same index slice it always was.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from kdserve.models.zoo import Student
from kdserve.service.schemas import TrainingSpec
from kdserve.worker.data import Split
from kdserve.worker.losses import DistillLoss, LossInputs, PrepareData


class Stopped(Exception):
    """should_stop() said so; `reason` is what it returned."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class SetupError(ValueError):
    """The method cannot run with this student, teacher or data (a user error, not a bug)."""


@dataclass
class EpochMetrics:
    epoch: int  # 1-based: epochs completed
    train_loss: float
    val_loss: float | None
    val_accuracy: float | None
    val_agreement: float | None
    seconds: float
    lr: float
    val_cosine: float | None = None  # embedding students: mean cosine to the teacher's vectors


@dataclass
class TrainResult:
    history: list[EpochMetrics] = field(default_factory=list)
    samples_per_second: float = 0.0      # wall clock, training steps only (validation excluded)
    cpu_samples_per_second: float = 0.0  # the same per second of this process's CPU time (all its
                                         # threads): what the loop costs, however busy the machine is


class Predictor(torch.nn.Module):
    """What evaluation and export see: the student, then the method's class-logit mapping
    (the identity for every method but LELP, whose head has S outputs per class)."""

    def __init__(self, student: Student, loss_fn: DistillLoss):
        super().__init__()
        self.student = student
        self.to_classes = loss_fn.class_logits  # a bound method: the loss's own parts stay out of the graph

    # Named parameters, not *inputs: torch.export matches dynamic shapes to the signature.
    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        logits = self.student(x) if attention_mask is None else self.student(x, attention_mask)
        return self.to_classes(logits)


def predictor(student: Student, loss_fn: DistillLoss) -> torch.nn.Module:
    overridden = type(loss_fn).class_logits is not DistillLoss.class_logits
    return Predictor(student, loss_fn) if overridden else student


class Batcher:
    """Builds LossInputs for a batch, with exactly the extras the loss requires."""

    def __init__(self, student: Student, loss_fn: DistillLoss, train: Split, device: torch.device):
        self.student, self.loss_fn = student, loss_fn
        needs = loss_fn.requires
        self.layer = loss_fn.student_layer()
        if not -1 <= self.layer < len(student.body):
            raise SetupError(f"student_layer {self.layer} is out of range: the student body has {len(student.body)} "
                             "modules")
        self.wants_features = bool(needs & {"aux_logits", "student_features"})
        self.wants_hint = "student_features" in needs
        self.wants_teacher_features = "teacher_features" in needs
        width = student.head.out_features
        self.aux_head = torch.nn.Linear(student.feature_dim, width).to(device) if "aux_logits" in needs else None
        if "teacher_features" in needs and train.teacher_features is None:
            raise SetupError("this method needs teacher features: name a teacher output in the job's teacher_features")
        self.prev_probs = None
        if "prev_probs" in needs:  # last epoch's own predictions; one-hot labels (uniform if none) to start
            self.prev_probs = torch.full((len(train), width), 1.0 / width, device=device)
            labelled = train.y >= 0
            self.prev_probs[labelled] = F.one_hot(train.y[labelled], width).float().to(device)

    def parameters(self):
        return [] if self.aux_head is None else list(self.aux_head.parameters())

    @staticmethod
    def model_inputs(split: Split, idx: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """What the student is called with for these rows: (x,) or, for text, (input_ids,
        attention_mask) cut to the batch's longest row."""
        x = split.x if idx is None else split.x[idx]
        if split.mask is None:
            return (x,)
        mask = split.mask if idx is None else split.mask[idx]
        width = max(int(mask.sum(1).max()), 1)  # one host sync per text batch
        return x[:, :width], mask[:, :width]

    def state_dict(self) -> dict:
        return {"aux_head": None if self.aux_head is None else self.aux_head.state_dict(),
                "prev_probs": self.prev_probs}

    def load_state_dict(self, state: dict) -> None:
        if self.aux_head is not None:
            self.aux_head.load_state_dict(state["aux_head"])
        if self.prev_probs is not None:
            self.prev_probs.copy_(state["prev_probs"])

    def inputs(self, split: Split, idx: torch.Tensor | None, labels_ok: bool, epoch: int, epochs: int,
               training: bool) -> LossInputs:
        def take(t: torch.Tensor | None) -> torch.Tensor | None:
            return t if idx is None or t is None else t[idx]

        extras = {}
        inputs = self.model_inputs(split, idx)
        if self.wants_features:
            hint, feats, logits = self.student.forward_features(*inputs, layer=self.layer)
            if self.aux_head is not None:
                extras["aux_logits"] = self.aux_head(feats)
            if self.wants_hint:
                extras["student_features"] = hint
        else:
            logits = self.student(*inputs)
        if self.wants_teacher_features:
            extras["teacher_features"] = take(split.teacher_features)
        if self.prev_probs is not None and training:
            extras["prev_probs"] = self.prev_probs[idx]
            self.prev_probs[idx] = F.softmax(logits.detach().float(), dim=1)
        return LossInputs(
            student_logits=logits,
            labels=take(split.y) if labels_ok else None,
            teacher_logits=take(split.teacher_logits),
            epoch=epoch, epochs=epochs, extras=extras,
        )


# Text batches are drawn "sortish": the shuffled rows are cut into pools of up to this many batches,
# each pool sorted by length before it is cut into batches, and the batches shuffled. Every batch then
# holds rows of similar length, so the batch (cut to its longest row) is mostly real tokens rather
# than padding, while which rows meet in a batch stays random from epoch to epoch. A dataset of fewer
# than SORTISH_MIN_POOLS pools of two batches is batched plainly: sorted as a whole, its batches would
# hardly change between epochs.
SORTISH_POOL_BATCHES = 50
SORTISH_MIN_POOLS = 8


def epoch_batches(n: int, lengths: torch.Tensor | None, batch_size: int, generator: torch.Generator
                  ) -> list[torch.Tensor]:
    """One epoch's batches of row indices: a random permutation cut into batches, or with
    `lengths` (text) the sortish order above. Batch sizes are the same either way (all full but
    the last, which pools of whole batches keep to one), so is the number of optimizer steps."""
    order = torch.randperm(n, generator=generator)
    pool_batches = min(SORTISH_POOL_BATCHES, n // batch_size // SORTISH_MIN_POOLS)
    if lengths is None or pool_batches < 2:
        return list(order.split(batch_size))
    pools = order.split(batch_size * pool_batches)
    batches = torch.cat([pool[torch.argsort(lengths[pool], stable=True)] for pool in pools]).split(batch_size)
    return [batches[i] for i in torch.randperm(len(batches), generator=generator)]


def make_optimizer(params, spec: TrainingSpec) -> torch.optim.Optimizer:
    if spec.optimizer == "sgd":
        return torch.optim.SGD(params, lr=spec.learning_rate, momentum=0.9, weight_decay=spec.weight_decay, nesterov=True)
    if spec.optimizer == "adam":
        return torch.optim.Adam(params, lr=spec.learning_rate, weight_decay=spec.weight_decay)
    return torch.optim.AdamW(params, lr=spec.learning_rate, weight_decay=spec.weight_decay)


def _prepared_batcher(student: Student, loss_fn: DistillLoss, train_d: Split, device: torch.device) -> Batcher:
    """The batcher of this run, and the loss prepared with the student's hint shape and the teacher's
    outputs (a loss that cannot work with them is a SetupError)."""
    batcher = Batcher(student, loss_fn, train_d, device)
    with torch.no_grad():
        first = torch.arange(min(2, len(train_d)), device=train_d.x.device)
        hint_shape = tuple(batcher.student.forward_features(*batcher.model_inputs(train_d, first),
                                                            layer=batcher.layer)[0].shape)
    try:
        loss_fn.prepare(PrepareData(hint_shape, train_d.teacher_logits, train_d.teacher_features, train_d.y))
    except ValueError as exc:
        raise SetupError(str(exc)) from exc
    loss_fn.to(device)
    return batcher


def _step(loss_fn: DistillLoss, optimizer: torch.optim.Optimizer, inputs) -> torch.Tensor:
    """One optimizer step on one batch; the loss, detached (left on the device)."""
    loss = loss_fn(inputs)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def train(
    student: Student,
    loss_fn: DistillLoss,
    train_split: Split,
    val_split: Split,
    spec: TrainingSpec,
    device: torch.device,
    on_epoch: Callable[[EpochMetrics], None] = lambda m: None,
    should_stop: Callable[[], str | None] = lambda: None,
    checkpoint: Callable[[dict], None] | None = None,
    resume: dict | None = None,
    embedding: bool = False,
) -> TrainResult:
    """Train `student` in place. With `checkpoint`, the full training state (weights, optimizer,
    schedule position, shuffling RNG, the loss's and batcher's own parts) is handed to it after
    every epoch; `resume` is such a state, and training continues after its epoch exactly as if it
    had never stopped. `embedding`: the student outputs vectors, not class logits (validation
    reports their mean cosine to the teacher's instead of accuracy)."""
    torch.manual_seed(spec.seed)
    student.to(device)
    train_d, val_d = train_split.to(device), val_split.to(device)
    has_labels = bool(train_split.labelled.any())
    batcher = _prepared_batcher(student, loss_fn, train_d, device)

    params = list(student.parameters()) + list(loss_fn.parameters()) + batcher.parameters()
    optimizer = make_optimizer(params, spec)
    # Cosine decay to zero over the whole run: one schedule that works for every method here.
    total_steps, step = spec.epochs * math.ceil(len(train_d) / spec.batch_size), 0
    generator = torch.Generator().manual_seed(spec.seed)
    lengths = None if train_split.mask is None else train_split.mask.sum(1).cpu()  # text: tokens per row

    result = TrainResult()
    trained_samples, train_seconds, first_epoch = 0, 0.0, 0
    cpu_samples, cpu_seconds = 0, 0.0  # this run only (not carried over a resume)
    if resume is not None:
        for part, state in ((student, "student"), (loss_fn, "loss"), (batcher, "batcher"), (optimizer, "optimizer")):
            part.load_state_dict(resume[state])
        generator.set_state(resume["generator"])
        step, first_epoch = resume["step"], resume["epoch"]
        result.history = [EpochMetrics(**m) for m in resume["history"]]
        trained_samples, train_seconds = resume["trained_samples"], resume["train_seconds"]
    for epoch in range(first_epoch, spec.epochs):
        student.train()
        loss_fn.train()
        t0, c0 = time.perf_counter(), time.process_time()
        losses, sizes = [], []  # kept on the device: no sync per batch
        for idx in epoch_batches(len(train_d), lengths, spec.batch_size, generator):
            reason = should_stop()
            if reason:
                raise Stopped(reason)
            idx = idx.to(device)
            if len(idx) < 2 and sizes:  # a trailing batch of one breaks BatchNorm; the next shuffle places it elsewhere
                continue
            losses.append(_step(loss_fn, optimizer, batcher.inputs(train_d, idx, has_labels, epoch, spec.epochs,
                                                                    training=True)))
            step += 1
            for group in optimizer.param_groups:
                group["lr"] = 0.5 * spec.learning_rate * (1 + math.cos(math.pi * step / total_steps))
            sizes.append(len(idx))
        count = sum(sizes)
        epoch_loss = float((torch.stack(losses) * torch.tensor(sizes, device=device)).sum()) / count
        seconds = time.perf_counter() - t0
        cpu_seconds += time.process_time() - c0
        trained_samples += count
        cpu_samples += count
        train_seconds += seconds
        metrics = evaluate_epoch(student, loss_fn, batcher, val_d, epoch, spec, embedding)
        record = EpochMetrics(epoch=epoch + 1, train_loss=epoch_loss, seconds=seconds,
                              lr=optimizer.param_groups[0]["lr"], **metrics)
        result.history.append(record)
        on_epoch(record)
        if checkpoint is not None:
            checkpoint({"epoch": epoch + 1, "step": step, "student": student.state_dict(), "loss": loss_fn.state_dict(),
                        "batcher": batcher.state_dict(), "optimizer": optimizer.state_dict(),
                        "generator": generator.get_state(), "history": [m.__dict__ for m in result.history],
                        "trained_samples": trained_samples, "train_seconds": train_seconds})
    result.samples_per_second = trained_samples / train_seconds if train_seconds else 0.0
    result.cpu_samples_per_second = cpu_samples / cpu_seconds if cpu_seconds else 0.0
    return result


@torch.no_grad()
def predict(model: torch.nn.Module, data: torch.Tensor | Split, batch_size: int = 1024) -> torch.Tensor:
    """The model's outputs for every row of a tensor or a Split (text: batches of 64 rows, each cut
    to its longest row)."""
    model.eval()
    if isinstance(data, Split) and data.is_text:
        rows = torch.arange(len(data), device=data.x.device)
        return torch.cat([model(*Batcher.model_inputs(data, rows[i : i + 64])) for i in range(0, len(data), 64)]).float()
    x = data.x if isinstance(data, Split) else data
    return torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]).float()


@torch.no_grad()
def evaluate_epoch(student: Student, loss_fn: DistillLoss, batcher: Batcher, val: Split, epoch: int,
                   spec: TrainingSpec, embedding: bool = False) -> dict:
    """Validation loss (in training-sized batches: some losses depend on the batch) and metrics."""
    student.eval()
    loss_fn.eval()
    labelled = val.y >= 0
    # Last epoch's predictions exist only for training samples: such a method has no validation loss.
    with_loss = "prev_probs" not in loss_fn.requires
    parts, total = [], 0.0
    for start in range(0, len(val), spec.batch_size):
        idx = torch.arange(start, min(start + spec.batch_size, len(val)), device=val.x.device)
        if with_loss:
            inp = batcher.inputs(val, idx, bool(labelled.any()), epoch, spec.epochs, training=False)
            total += float(loss_fn(inp)) * len(idx)
            logits = inp.student_logits
        else:
            logits = student(*batcher.model_inputs(val, idx))
        parts.append(loss_fn.class_logits(logits).float())
    if embedding:
        out = torch.cat(parts)
        cosine = None if val.teacher_logits is None else float(
            F.cosine_similarity(out, val.teacher_logits.float(), dim=1).mean())
        return {"val_loss": total / len(val) if with_loss else None, "val_accuracy": None, "val_agreement": None,
                "val_cosine": cosine}
    pred = torch.cat(parts).argmax(1)
    acc = float((pred[labelled] == val.y[labelled]).float().mean()) if bool(labelled.any()) else None
    agree = None if val.teacher_logits is None else float((pred == val.teacher_logits.argmax(1)).float().mean())
    return {"val_loss": total / len(val) if with_loss else None, "val_accuracy": acc, "val_agreement": agree}
