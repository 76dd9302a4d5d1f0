"""A run's progress: the job row's stage, progress, estimated finish and heartbeat, a stage event
as each stage starts, a metrics event per epoch, and how long each stage took."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field

from kdserve.service.schemas import JobCreate
from kdserve.service.store.blobs import BlobStore
from kdserve.service.store.db import Database, Job, now
from kdserve.worker import trainer
from kdserve.worker.pipeline.common import STAGES
from kdserve.worker.pipeline.lease import Lease


class Progress:
    def __init__(self, db: Database, job: Job, lease: Lease, t_start: float, epochs: int):
        self.db, self.job, self.lease, self.t_start, self.epochs = db, job, lease, t_start, epochs
        self.timings: dict[str, float] = {}

    def event(self, message: str, **kwargs) -> None:
        self.db.add_event(self.job.id, message, **kwargs)

    @staticmethod
    def at(stage: str, fraction: float = 0.0) -> float:
        names = list(STAGES)
        before = sum(STAGES[n] for n in names[: names.index(stage)])
        return min(1.0, before + STAGES[stage] * fraction)

    def update(self, stage: str, fraction: float, **fields) -> None:
        progress = self.at(stage, fraction)
        elapsed = time.time() - self.t_start
        eta = int(self.t_start + elapsed / progress) if progress > 0.05 else None
        self.db.update_job(self.job.id, stage=stage, progress=round(progress, 4), estimated_finish=eta,
                           heartbeat_at=now(), **fields)

    @contextmanager
    def stage(self, name: str):
        if self.lease.stop_reason:
            raise trainer.Stopped(self.lease.stop_reason)
        self.update(name, 0.0)
        self.event(name.replace("_", " "), type="stage", data={"stage": name})
        t0 = time.perf_counter()
        yield
        self.timings[name] = round(time.perf_counter() - t0, 4)

    def on_progress(self, epoch: int, fraction: float) -> None:
        """Epochs trained and the fraction of training done (the learning-rate search's arms count)."""
        self.update("training", fraction, epoch=epoch)

    def on_epoch(self, m: trainer.EpochMetrics) -> None:
        """An epoch of the trajectory that is published: its losses on the job row, a metrics event."""
        epochs = self.epochs
        metrics = dict(self.job.metrics or {})
        metrics.update(train_loss=m.train_loss, val_loss=m.val_loss)
        self.job.metrics = metrics
        self.db.update_job(self.job.id, metrics=metrics, heartbeat_at=now())
        parts = [f"train_loss {m.train_loss:.4f}"]
        if m.val_cosine is not None:
            parts.append(f"val_cosine {m.val_cosine:.4f}")
        if m.val_accuracy is not None:
            parts.append(f"val_accuracy {m.val_accuracy:.4f}")
        if m.val_agreement is not None:
            parts.append(f"val_agreement {m.val_agreement:.4f}")
        self.event(f"epoch {m.epoch}/{epochs}: " + ", ".join(parts), type="metrics", data=m.__dict__)

    def note(self, message: str, data: dict) -> None:
        """A finding of the training loop (the learning-rate search, an early stop) for the events."""
        self.event(message, data=data)

    def on_refine_epoch(self, event: dict, epochs: int) -> None:
        epoch, loss, cmi = int(event["epoch"]), float(event["loss"]), float(event["cmi"])
        self.update("refining_teacher", epoch / epochs)
        self.event(f"teacher refinement epoch {epoch}/{epochs}: loss {loss:.4f}, CMI {cmi:.4f}", type="metrics",
                   data={"refine_epoch": epoch, "loss": loss, "cmi": cmi})


@dataclass
class RunContext:
    """What every stage of one run works with (stage results are passed, not kept here)."""

    db: Database
    blobs: BlobStore
    job: Job
    spec: JobCreate
    lease: Lease
    progress: Progress
    teachers: list = field(default_factory=list)  # jailed teacher processes to end with the run
    training: dict | None = None  # what training did (learning rate and why, best epoch): the card's `training`
    baseline: dict | None = None  # `baseline: true`: the ce student's accuracy and agreement, the card's `baseline`
    input_scaling: dict | None = None  # MLP students: whether they standardise their inputs and why (the card's)
    validation: dict | None = None  # the validation rows: how many, where from, whether the teacher saw them (card)
    test: dict | None = None  # test_dataset_id: the student and teacher scored on it at the end (the card's)
    teacher_latency: dict | None = None  # tensor teachers: median ms at batch 1 and 64 in their own runtime (card)
    warnings: list = field(default_factory=list)  # [{code, message}]: the job's and the card's

    def warn(self, code: str, message: str, data: dict | None = None) -> None:
        """Something the user should know about this run: on the job row at once, on the card, and
        as a warning event."""
        self.warnings.append({"code": code, "message": message})
        self.db.update_job(self.job.id, warnings=list(self.warnings))
        self.progress.event(message, level="warning", data={"warning": code, **(data or {})})
