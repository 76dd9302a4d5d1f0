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

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from kdserve.models.zoo import Student
from kdserve.service.schemas import TrainingSpec
from kdserve.service.spec.jobs import auto_epochs
from kdserve.worker.data import Split
from kdserve.worker.losses import DistillLoss, LossInputs, PrepareData, build_loss


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
    val_score: float | None = None   # what epochs and learning rates are chosen by: selection_score()
    val_kl: float | None = None      # mean KL(teacher ‖ student) at T = 1 on every validation row: fidelity


@dataclass
class TrainResult:
    history: list[EpochMetrics] = field(default_factory=list)
    samples_per_second: float = 0.0      # wall clock, training steps only (validation excluded)
    cpu_samples_per_second: float = 0.0  # the same per second of this process's CPU time (all its
                                         # threads): what the loop costs, however busy the machine is
    learning_rate: float = 0.0           # the peak learning rate the run trained at
    learning_rate_source: str = ""       # "given", or how "auto" chose it
    lr_search: list[dict] | None = None  # the search's rungs: scores per rate, the rates kept
    method: str | None = None            # a method trial's winner (None: the run had one method)
    method_source: str = ""              # how the trial chose it
    loss_fn: DistillLoss | None = None   # the loss holding the published state (the winner's, after a trial)
    epochs_planned: int = 0
    epochs_run: int = 0
    best_epoch: int | None = None
    published_epoch: int | None = None   # whose weights the student holds after train()
    stopped_early: bool = False


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


# ---- the recipe: what a job that leaves training alone gets -------------------------------------
#
# Peak learning rates tried by `learning_rate: "auto"`, per student family (Adam/AdamW; SGD's are
# ten times larger). Measured on small students (bench/results/auto.md): from-scratch MLPs and CNNs
# want 3e-3 to 3e-2, far above the 1e-3 that suits fine-tuning; transformers trained from scratch
# want less, and students cut from the teacher's own weights (layer_dropped) less again.
LR_GRIDS = {
    "default": (1e-3, 3e-3, 1e-2, 3e-2),
    "transformer": (1e-4, 3e-4, 1e-3, 3e-3),
    "from_teacher": (3e-5, 1e-4, 3e-4, 1e-3),
}
GRID_OF_ARCH = {"patch_transformer": "transformer", "transformer": "transformer", "layer_dropped": "from_teacher"}
AUTO_LR_MIN_EPOCHS = 4  # fewer epochs than this: no search, the grid's second value
WARMUP_SHARE = 0.05     # of all optimizer steps: a linear warm-up, then cosine decay to zero


def lr_grid(architecture: str, optimizer: str) -> tuple[float, ...]:
    grid = LR_GRIDS[GRID_OF_ARCH.get(architecture, "default")]
    return tuple(lr * 10 for lr in grid) if optimizer == "sgd" else grid


def lr_at(peak: float, step: int, total: int) -> float:
    """The learning rate of optimizer step `step` (0-based) of `total`: linear warm-up over the
    first WARMUP_SHARE of the steps, then cosine decay to zero."""
    warmup = int(total * WARMUP_SHARE)
    if step < warmup:
        return peak * (step + 1) / warmup
    return 0.5 * peak * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def param_groups(modules: list[torch.nn.Module], weight_decay: float) -> list[dict]:
    """Weight decay on weight matrices and kernels only: biases and normalisation scales (1-D)
    are left alone, as decaying them only pulls the model towards a worse fit."""
    decay, keep, seen = [], [], set()
    for module in modules:
        for p in module.parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                (decay if p.ndim >= 2 else keep).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def make_optimizer(groups: list[dict], spec: TrainingSpec, lr: float) -> torch.optim.Optimizer:
    if spec.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)
    return (torch.optim.Adam if spec.optimizer == "adam" else torch.optim.AdamW)(groups, lr=lr)


def selection_score(m: dict, n_labelled: int, n_val: int) -> float | None:
    """How good an epoch is, on the validation split, for choosing between epochs and learning
    rates: accuracy and agreement with the teacher weighted by how many rows each is measured on
    (with 10 % labels, a validation split has a tenth as many labelled rows, and their accuracy is
    that much noisier); an embedding student's mean cosine. None when there is neither."""
    if m.get("val_cosine") is not None:
        return m["val_cosine"]
    acc, agree = m.get("val_accuracy"), m.get("val_agreement")
    if acc is not None and agree is not None:
        return (n_labelled * acc + n_val * agree) / (n_labelled + n_val)
    return acc if acc is not None else agree


def rank_key(m: EpochMetrics) -> tuple[float, float]:
    """Higher is better: the selection score, ties to the lower validation loss."""
    loss = -m.val_loss if m.val_loss is not None and math.isfinite(m.val_loss) else -math.inf
    return (m.val_score if m.val_score is not None else -math.inf, loss)


@dataclass
class Loop:
    """What every epoch of a run shares: the data on the device, the plan, the callbacks."""

    train: Split
    val: Split
    spec: TrainingSpec
    epochs: int
    total_steps: int
    device: torch.device
    should_stop: Callable[[], str | None]
    embedding: bool
    has_labels: bool
    lengths: torch.Tensor | None  # text: tokens per training row (sortish batches)


class Arm:
    """One training trajectory at one peak learning rate (and, in a method trial, with one of its
    methods): the student, its loss, the batcher, the optimizer, the shuffling, the history and its
    best epoch so far."""

    def __init__(self, student: Student, loss_fn: DistillLoss, batcher: Batcher, lr: float, spec: TrainingSpec,
                 method: str | None = None):
        self.student, self.loss_fn, self.batcher, self.lr, self.method = student, loss_fn, batcher, lr, method
        modules = [student, loss_fn, *([batcher.aux_head] if batcher.aux_head is not None else [])]
        self.optimizer = make_optimizer(param_groups(modules, spec.weight_decay), spec, lr)
        self.clip = spec.grad_clip_norm
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.generator = torch.Generator().manual_seed(spec.seed)
        self.step = self.epoch = 0
        self.history: list[EpochMetrics] = []
        self.best: tuple[int, tuple[float, float], dict] | None = None  # epoch, rank key, weights
        self.samples = self.cpu_samples = 0
        self.seconds = self.cpu_seconds = 0.0

    def weights(self) -> dict:
        """What publishing needs (detached copies): the student's and the loss's state."""
        copy_of = lambda sd: {k: v.detach().clone() for k, v in sd.items()}  # noqa: E731
        return {"student": copy_of(self.student.state_dict()), "loss": copy_of(self.loss_fn.state_dict())}

    def _step(self, inputs: LossInputs, lr: float) -> torch.Tensor:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss = self.loss_fn(inputs)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.clip is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.optimizer.step()
        return loss.detach()

    def run_epoch(self, loop: Loop) -> EpochMetrics:
        self.student.train()
        self.loss_fn.train()
        t0, c0 = time.perf_counter(), time.process_time()
        losses, sizes = [], []  # kept on the device: no sync per batch
        for idx in epoch_batches(len(loop.train), loop.lengths, loop.spec.batch_size, self.generator):
            reason = loop.should_stop()
            if reason:
                raise Stopped(reason)
            idx = idx.to(loop.device)
            if len(idx) < 2 and sizes:  # a trailing batch of one breaks BatchNorm; the next shuffle places it elsewhere
                continue
            inputs = self.batcher.inputs(loop.train, idx, loop.has_labels, self.epoch, loop.epochs, training=True)
            losses.append(self._step(inputs, lr_at(self.lr, self.step, loop.total_steps)))
            self.step += 1
            sizes.append(len(idx))
        count = sum(sizes)
        epoch_loss = float((torch.stack(losses) * torch.tensor(sizes, device=loop.device)).sum()) / count
        seconds = time.perf_counter() - t0
        self.cpu_seconds += time.process_time() - c0
        self.samples, self.cpu_samples, self.seconds = self.samples + count, self.cpu_samples + count, self.seconds + seconds
        metrics = evaluate_epoch(self.student, self.loss_fn, self.batcher, loop.val, self.epoch, loop.spec,
                                 loop.embedding)
        self.epoch += 1
        labelled = int(loop.val.labelled.sum())
        record = EpochMetrics(epoch=self.epoch, train_loss=epoch_loss, seconds=seconds, lr=self.optimizer.param_groups[0]["lr"],
                              val_score=selection_score(metrics, labelled, len(loop.val)), **metrics)
        self.history.append(record)
        if self.best is None or rank_key(record) > self.best[1]:
            self.best = (record.epoch, rank_key(record), self.weights())
        return record

    @property
    def label(self) -> str:
        """How the search's notes and rungs name the arm: its rate, after its method in a trial."""
        return f"{self.lr:g}" if self.method is None else f"{self.method} {self.lr:g}"

    def recent_key(self, last: int = 3) -> tuple[float, float]:
        """How arms are compared: the mean selection score of the last few epochs (one epoch's score
        on a small validation split is noisy), ties to the lower KL(teacher ‖ student), which unlike
        each method's own loss means the same for every arm (the loss where there is no teacher)."""
        def key(m: EpochMetrics) -> tuple[float, float]:
            tie = m.val_kl if m.val_kl is not None else m.val_loss
            return (m.val_score if m.val_score is not None else -math.inf,
                    -tie if tie is not None and math.isfinite(tie) else -math.inf)
        keys = [key(m) for m in self.history[-last:]]
        return tuple(sum(k[i] for k in keys) / len(keys) for i in range(2))  # type: ignore[return-value]

    def state_dict(self) -> dict:
        return {"lr": self.lr, "method": self.method, "step": self.step, "epoch": self.epoch, "student": self.student.state_dict(),
                "loss": self.loss_fn.state_dict(), "batcher": self.batcher.state_dict(),
                "optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state(),
                "history": [m.__dict__ for m in self.history],
                "best": None if self.best is None else {"epoch": self.best[0], "key": list(self.best[1]),
                                                        "weights": self.best[2]},
                "trained_samples": self.samples, "train_seconds": self.seconds}

    def load_state_dict(self, state: dict) -> None:
        for part, name in ((self.student, "student"), (self.loss_fn, "loss"), (self.batcher, "batcher"),
                           (self.optimizer, "optimizer")):
            part.load_state_dict(state[name])
        self.generator.set_state(state["generator"])
        self.method = state.get("method")
        self.step, self.epoch = state["step"], state["epoch"]
        self.history = [EpochMetrics(**m) for m in state["history"]]
        best = state.get("best")
        self.best = None if best is None else (best["epoch"], tuple(best["key"]), best["weights"])
        self.samples, self.seconds = state["trained_samples"], state["train_seconds"]


def rung_epochs(epochs: int, arms: int = 4) -> list[int]:
    """Successive halving's checkpoints: the better half of the arms goes on at each, until one is
    left (4 arms: 2 rungs, 8: 3). The last rung falls after a quarter of the run, each earlier one
    after half as many epochs as the next (4 arms: an eighth, then a quarter); the survivor simply
    continues, as its schedule was the full run's from the start, so nothing is retrained. Cost for
    4 arms: 1.5 runs instead of 4; for 8: 1.75."""
    rungs, alive = 0, arms
    while alive > 1:
        rungs, alive = rungs + 1, alive // 2
    ends: list[int] = []
    for k in range(rungs):
        end = max(1, round(epochs / 2 ** (rungs + 1 - k)))
        ends.append(max(ends[-1] + 1, end) if ends else end)
    return ends


def _segments(epochs: int, arms: int) -> list[tuple[int, int, int]]:
    """The run as (first epoch, end epoch, arms alive) stretches between rungs."""
    segments, start, alive = [], 0, arms
    for end in rung_epochs(epochs, arms):
        segments.append((start, end, alive))
        start, alive = end, max(1, alive // 2)
    return segments + [(start, epochs, alive)]


def search_work(epochs: int, arms: int = 4) -> float:
    """The search's training run in epochs of one arm (4 arms: four to the first rung, two to the
    second, one to the end: 1.5 runs for 100 epochs)."""
    return sum(alive * (end - start) for start, end, alive in _segments(epochs, arms))


def work_done(epoch: int, epochs: int, arms: int = 1) -> float:
    """The fraction of the run's training work done once every live arm has trained `epoch` epochs
    (`arms`: how many the search started with; 1, no search)."""
    if arms <= 1:
        return epoch / epochs
    done = sum(alive * (min(epoch, end) - start) for start, end, alive in _segments(epochs, arms) if epoch > start)
    return min(1.0, done / search_work(epochs, arms))


def search_lr(arms: list[Arm], loop: Loop, on_note: Callable[[str, dict], None],
              on_progress: Callable[[int, float], None]) -> tuple[Arm, list[dict]]:
    """Successive halving over the arms (learning rates, and methods in a trial); the survivor and
    the record of each rung. The arms train in lockstep, an epoch each in turn, so that progress (and
    a cancel) is seen every epoch, as in a run without a search."""
    record = []
    epoch, started = 0, len(arms)
    what = "learning rate search" if all(a.method is None for a in arms) else "method and learning rate trial"
    for end in rung_epochs(loop.epochs, started):
        while epoch < end:
            scores = {arm.label: arm.run_epoch(loop).val_score for arm in arms}
            epoch += 1
            on_progress(epoch, work_done(epoch, loop.epochs, started))
            on_note(f"{what}, epoch {epoch}/{end}: " + ", ".join(
                f"{'' if ' ' in k else 'lr '}{k} → {'-' if v is None else f'{v:.4f}'}" for k, v in scores.items()),
                {"lr_search_epoch": epoch, "val_scores": scores})
        ranked = sorted(arms, key=Arm.recent_key, reverse=True)
        arms = ranked[: max(1, len(arms) // 2)]
        rung = {"epoch": end, "scores": {a.label: round(a.recent_key()[0], 4) for a in ranked},
                "kept": [a.lr for a in arms]}
        if arms[0].method is not None:
            rung["kept_methods"] = [a.method for a in arms]
        record.append(rung)
        on_note(f"{what} after epoch {end}: " + ", ".join(f"{k} → {v}" for k, v in rung["scores"].items())
                + f"; kept {', '.join(a.label for a in arms)}", {"lr_search": rung})
    return arms[0], record


def _arms(student: Student, loss_fn: DistillLoss, batcher: Batcher, loop: Loop, lrs: tuple[float, ...],
          methods: tuple[str, ...] = ()) -> list[Arm]:
    """One arm per learning rate (per method and rate in a method trial), all from the same initial
    weights: the first trains `student` and `loss_fn` themselves, the others copies. `methods[0]` is
    `loss_fn`'s; the others' losses are built with their defaults (methods that need nothing but
    logits: no auxiliary head, features or extra state)."""
    arms: list[Arm] = []
    for i, method in enumerate(methods or (None,)):
        for lr in lrs:
            if not arms:
                arms.append(Arm(student, loss_fn, batcher, lr, loop.spec, method))
                continue
            s = copy.deepcopy(student)
            if i == 0:
                fn = copy.deepcopy(loss_fn)
                b = Batcher(s, fn, loop.train, loop.device)
                b.load_state_dict(batcher.state_dict())
            else:
                fn = build_loss(method)
                _prepared_batcher(copy.deepcopy(s), fn, loop.train, loop.device)  # prepares fn; s stays as copied
                b = Batcher(s, fn, loop.train, loop.device)
            arms.append(Arm(s, fn, b, lr, loop.spec, method))
    return arms


def _first_arm(student: Student, loss_fn: DistillLoss, batcher: Batcher, loop: Loop, resume: dict | None,
               lr_candidates: tuple[float, ...], methods: tuple[str, ...], on_note: Callable[[str, dict], None],
               on_progress: Callable[[int, float], None], result: TrainResult) -> Arm:
    """The arm that trains to the end: resumed from a checkpoint, the given learning rate's, or the
    survivor of the search over learning rates (and `methods`, a trial; the first is `loss_fn`'s):
    its epochs so far become the run's first."""
    spec = loop.spec
    if resume is not None:
        arm = Arm(student, loss_fn, batcher, resume["arm"]["lr"], spec)
        arm.load_state_dict(resume["arm"])
        result.learning_rate_source, result.lr_search = resume["lr_source"], resume["lr_search"]
        result.method_source = resume.get("method_source", "")
        return arm
    auto = spec.learning_rate == "auto"
    if loop.epochs < AUTO_LR_MIN_EPOCHS:
        lrs = (lr_candidates[1],) if auto else (float(spec.learning_rate),)
        if len(methods) > 1:
            result.method_source = f"{methods[0]}: {loop.epochs} epoch(s) are too few for a trial"
        methods = methods[:1]
    else:
        lrs = lr_candidates if auto else (float(spec.learning_rate),)
    if len(lrs) * max(1, len(methods)) == 1:
        if auto:
            result.learning_rate_source = (f"auto: {loop.epochs} epoch(s) are too few to compare rates; {lrs[0]:g} "
                                           "is the usual best")
            on_note(f"learning rate {lrs[0]:g} (too few epochs for a search)", {"learning_rate": lrs[0]})
        else:
            result.learning_rate_source = "given"
        return Arm(student, loss_fn, batcher, lrs[0], spec, methods[0] if methods else None)
    arm, result.lr_search = search_lr(_arms(student, loss_fn, batcher, loop, lrs, methods), loop, on_note,
                                      on_progress)
    decided = result.lr_search[-1]["epoch"]
    if auto:
        result.learning_rate_source = (f"auto: successive halving over {', '.join(f'{lr:g}' for lr in lrs)} on "
                                       f"the validation split, decided after epoch {decided}")
        on_note(f"learning rate {arm.lr:g} chosen ({result.learning_rate_source})", {"learning_rate": arm.lr})
    else:
        result.learning_rate_source = "given"
    if len(methods) > 1:
        first = result.lr_search[0]["scores"]
        best = {m: max(v for k, v in first.items() if k.split(" ")[0] == m) for m in methods}
        others = [m for m in methods if m != arm.method]
        result.method_source = (
            f"{arm.method}: a short trial on the validation split favoured it over {', '.join(others)} (successive "
            f"halving over methods × learning rates, decided after epoch {decided}; best score per method after "
            f"epoch {result.lr_search[0]['epoch']}: " + ", ".join(f"{m} {v:.4f}" for m, v in best.items()) + ")")
        on_note(f"method {arm.method} chosen ({result.method_source})", {"method": arm.method})
    return arm


def load_weights(student: Student, loss_fn: DistillLoss, train_split: Split, device: torch.device,
                 weights: dict) -> None:
    """Weights an earlier run kept, into a fresh student and loss prepared as training prepares them."""
    student.to(device)
    _prepared_batcher(student, loss_fn, train_split.to(device), device)
    student.load_state_dict(weights["student"])
    loss_fn.load_state_dict(weights["loss"])


def patience_of(spec: TrainingSpec, epochs: int) -> int | None:
    if spec.early_stopping_patience == "auto":
        return max(10, epochs // 5)
    return spec.early_stopping_patience


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
    lr_candidates: tuple[float, ...] = LR_GRIDS["default"],
    methods: tuple[str, ...] = (),
    on_note: Callable[[str, dict], None] = lambda message, data: None,
    on_progress: Callable[[int, float], None] = lambda epoch, fraction: None,
) -> TrainResult:
    """Train `student` in place and leave in it the weights to publish (the best epoch's, unless
    spec.publish is "last"). With `checkpoint`, the full training state is handed to it after
    every epoch once the learning rate is settled; `resume` is such a state, and training goes on
    after its epoch exactly as if it had never stopped. `embedding`: the student outputs vectors,
    not class logits (validation reports their mean cosine to the teacher's instead of accuracy).
    `methods`: a method trial, the methods compared side by side (the first is `loss_fn`'s) in the
    same successive halving as the learning rates; `result.method` is the winner and
    `result.loss_fn` its loss, which holds the published state.
    `on_note(message, data)`: the learning-rate search's findings, for the job's events.
    `on_progress(epoch, fraction)`: after every epoch, of the search's arms or of the run, the
    epochs trained and the fraction of the training work done (a search makes it 1.5 runs)."""
    torch.manual_seed(spec.seed)
    student.to(device)
    train_d, val_d = train_split.to(device), val_split.to(device)
    batcher = _prepared_batcher(student, loss_fn, train_d, device)
    epochs = spec.epochs if isinstance(spec.epochs, int) else auto_epochs(len(train_d), spec.batch_size)
    loop = Loop(train_d, val_d, spec, epochs, epochs * math.ceil(len(train_d) / spec.batch_size), device,
                should_stop, embedding, bool(train_split.labelled.any()),
                None if train_split.mask is None else train_split.mask.sum(1).cpu())
    result = TrainResult(epochs_planned=epochs)
    arm = _first_arm(student, loss_fn, batcher, loop, resume, lr_candidates, methods, on_note, on_progress, result)
    started = len(result.lr_search[0]["scores"]) if result.lr_search else 1  # arms the search began with
    for m in arm.history[(resume or {}).get("arm", {}).get("epoch", 0):]:
        on_epoch(m)  # the survivor's search epochs, now that they are the run's
    patience = patience_of(spec, epochs)
    while arm.epoch < epochs:
        if patience is not None and arm.best is not None and arm.epoch - arm.best[0] >= patience:
            result.stopped_early = True
            on_note(f"early stop after epoch {arm.epoch}: no better validation score for {patience} epochs since "
                    f"epoch {arm.best[0]}", {"stopped_early": arm.epoch, "best_epoch": arm.best[0]})
            break
        on_epoch(arm.run_epoch(loop))
        on_progress(arm.epoch, work_done(arm.epoch, epochs, started))
        if checkpoint is not None:
            checkpoint({"epoch": arm.epoch, "arm": arm.state_dict(), "lr_source": result.learning_rate_source,
                        "lr_search": result.lr_search, "method_source": result.method_source})
    return _finish(arm, student, loss_fn, spec, result)


def _finish(arm: Arm, student: Student, loss_fn: DistillLoss, spec: TrainingSpec, result: TrainResult) -> TrainResult:
    """Leave the weights to publish in `student` and the loss (`loss_fn`, or after a method trial won
    by another method, the winner's own), and say what the run did."""
    result.history, result.learning_rate, result.epochs_run = arm.history, arm.lr, arm.epoch
    result.method = arm.method
    result.loss_fn = loss_fn if type(arm.loss_fn) is type(loss_fn) else arm.loss_fn
    result.best_epoch = arm.best[0] if arm.best is not None else None
    if spec.publish == "best" and arm.best is not None:
        weights, result.published_epoch = arm.best[2], arm.best[0]
    else:
        weights, result.published_epoch = arm.weights(), arm.epoch
    student.load_state_dict(weights["student"])
    result.loss_fn.load_state_dict(weights["loss"])
    result.samples_per_second = arm.samples / arm.seconds if arm.seconds else 0.0
    result.cpu_samples_per_second = arm.cpu_samples / arm.cpu_seconds if arm.cpu_seconds else 0.0
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
    out = torch.cat(parts)
    pred = out.argmax(1)
    acc = float((pred[labelled] == val.y[labelled]).float().mean()) if bool(labelled.any()) else None
    agree = kl = None
    if val.teacher_logits is not None:
        teacher = val.teacher_logits.float().to(out.device)
        agree = float((pred == teacher.argmax(1)).float().mean())
        kl = float(F.kl_div(F.log_softmax(out, 1), F.log_softmax(teacher, 1), reduction="batchmean", log_target=True))
    return {"val_loss": total / len(val) if with_loss else None, "val_accuracy": acc, "val_agreement": agree,
            "val_kl": kl}
