"""A distillation job from queued to published, stage by stage:

    validating → [refining_teacher] → [caching_teacher] → training → evaluating
               → exporting → verifying → [quantizing] → publishing

Each stage updates the job row (stage, progress, estimated_finish, heartbeat) and writes an event;
each epoch writes a metrics event. A job that cannot succeed ends `failed` with an error code the
user can act on. Each stage takes what earlier stages produced as arguments and returns its own
result; `JobRun.execute` is the list of stages.
"""

from __future__ import annotations

import io
import time
import traceback
from dataclasses import dataclass
from typing import Callable

import torch

from kdserve.service.sandbox.jail import JailError
from kdserve.service.sandbox.sniff import ModelFileError
from kdserve.service.schemas import JobCreate, MethodSpec
from kdserve.service.search_space import PRUNED
from kdserve.service.settings import get_settings
from kdserve.service.spec.jobs import auto_epochs
from kdserve.service.store.blobs import BlobStore
from kdserve.service.store.db import Database, Job, now
from kdserve.worker import search, trainer
from kdserve.worker.losses import METHODS, build_loss
from kdserve.worker.pipeline import inputs
from kdserve.worker.pipeline.common import LEASE_LOST, Cancelled, JobFailed, context, fail, finish, log, pick_device
from kdserve.worker.pipeline.baseline import train_baseline
from kdserve.worker.pipeline.checkpoints import from_checkpoint, keep_epoch_weights, training_summary
from kdserve.worker.pipeline.evaluate import compare_to_teacher, final_metrics, score_test_set
from kdserve.worker.pipeline.inputs import Prepared
from kdserve.worker.pipeline.lease import Lease
from kdserve.worker.pipeline.progress import Progress, RunContext
from kdserve.worker.pipeline.publish import export_and_publish


@dataclass
class Trained:
    """What the training stage hands on: the exported form of the student, and its run."""

    model: torch.nn.Module  # the student's main head, mapped to class logits by the method
    result: trainer.TrainResult


class JobRun:
    def __init__(self, db: Database, blobs: BlobStore, job: Job, delivery: str):
        spec = JobCreate.model_validate(job.spec)
        t_start = time.time()
        lease = Lease(db, blobs, job.id, delivery, spec.training.max_duration_s, t_start)
        progress = Progress(db, job, lease, t_start, spec.training.epochs)
        self.ctx = RunContext(db, blobs, job, spec, lease, progress)
        self.checkpoint_key = f"checkpoints/{job.id}/last.pt"

    def watch(self):
        return self.ctx.lease.watch()

    def close_teachers(self) -> None:
        for teacher in self.ctx.teachers:
            teacher.close()
        self.ctx.teachers.clear()

    def execute(self) -> None:
        ctx, stage = self.ctx, self.ctx.progress.stage
        if ctx.spec.method.name not in METHODS:
            raise JobFailed("invalid_request", f"this worker does not know method {ctx.spec.method.name!r}")
        device = pick_device(ctx.spec.training.device)
        with stage("validating"):
            prep = inputs.validate(ctx, device)
        if ctx.spec.teacher_refinement is not None:
            with stage("refining_teacher"):
                prep = inputs.refine_teacher(ctx, prep, device)
        if prep.teacher is not None:
            with stage("caching_teacher"):
                inputs.cache_teacher(ctx, prep)
        with stage("training"):
            trained = self.train(prep, device)
        with stage("evaluating"):
            student_logits = trainer.predict(trained.model, prep.val)
            metrics = final_metrics(student_logits, prep.val, trained.result, prep.embedding)
            compare_to_teacher(ctx, metrics)
            ctx.test = score_test_set(ctx, prep, trained.model, trained.result)
            if ctx.spec.baseline:
                ctx.baseline = train_baseline(ctx, prep, device, metrics)
                metrics.update(baseline_accuracy=ctx.baseline["accuracy"], baseline_agreement=ctx.baseline["agreement"])
            ctx.db.update_job(ctx.job.id, metrics=metrics)
        model_id = export_and_publish(ctx, prep, trained.model, student_logits, metrics)
        self.succeeded(model_id, trained.result)

    def train(self, prep: Prepared, device: torch.device) -> Trained:
        ctx, spec = self.ctx, self.ctx.spec
        if spec.from_checkpoint is not None:
            result = from_checkpoint(ctx, prep, device)
            ref = spec.from_checkpoint
            ctx.training = {**training_summary(result), "from_checkpoint": ref.model_dump(),
                            "published_because": f"epoch {ref.epoch} of job {ref.job_id} was asked for"}
            return Trained(trainer.predictor(prep.student.cpu().eval(), prep.loss_fn.cpu()), result)
        epochs = spec.training.epochs
        if not isinstance(epochs, int):  # a spec that did not come through POST /v1/jobs (which resolves it)
            epochs = auto_epochs(len(prep.train), spec.training.batch_size)
        ctx.progress.epochs = epochs
        resume = self._load_checkpoint(device, epochs)
        if resume is not None:
            ctx.progress.event(f"resumed from the checkpoint after epoch {resume['epoch']}",
                               data={"resume_epoch": resume["epoch"]})
        loss_fn, named = prep.loss_fn, spec.method.name
        # a trial's first arm trains prep.loss_fn, the named method's (a retried run may name the winner already)
        trial = (named, *[m for m in spec.method.candidates if m != named]) if spec.method.candidates else ()
        if resume is not None and resume["arm"].get("method") not in (None, spec.method.name):
            loss_fn = build_loss(resume["arm"]["method"])  # the trial's winner, chosen before the checkpoint
        on_epoch = ctx.progress.on_epoch
        if ctx.job.search_id is not None:  # a search's trial: each epoch reported to its pruner
            on_epoch = search.pruning(get_settings(), ctx.db, ctx.job, on_epoch)
        try:
            training = spec.training.model_copy(update={"epochs": epochs})  # resolved once, here
            result = trainer.train(prep.student, loss_fn, prep.train, prep.val, training, device,
                                   on_epoch=on_epoch, should_stop=ctx.lease.should_stop,
                                   checkpoint=self._save_checkpoint, resume=resume, embedding=prep.embedding,
                                   lr_candidates=trainer.lr_grid(spec.student.architecture, spec.training.optimizer),
                                   methods=trial, on_note=ctx.progress.note, on_progress=ctx.progress.on_progress)
        except trainer.SetupError as exc:
            raise JobFailed("invalid_request", str(exc))
        ctx.training = training_summary(result)
        if trial:
            self.chosen_method(result)
        # What is evaluated and exported: the student's main head only (auxiliary heads stay behind),
        # mapped to class logits by the method (LELP's subclass head), with the weights train() left
        # in it (the best epoch's unless training.publish is "last").
        return Trained(trainer.predictor(prep.student.cpu().eval(), result.loss_fn.cpu()), result)

    def chosen_method(self, result: trainer.TrainResult) -> None:
        """A method trial's outcome into the job's spec (as shown by GET /v1/jobs/{id}) and the card:
        the winner with its default params, and why."""
        ctx, method = self.ctx, self.ctx.spec.method
        name = result.method or method.name
        params = METHODS[name].params.model_validate({}).model_dump(mode="json")
        ctx.spec.method = MethodSpec(name=name, params=params, candidates=method.candidates,
                                     reason=result.method_source or method.reason)
        spec = dict(ctx.job.spec)
        spec["method"] = ctx.spec.method.model_dump(mode="json")
        ctx.db.update_job(ctx.job.id, spec=spec)

    def succeeded(self, model_id: str, result: trainer.TrainResult) -> None:
        ctx, progress = self.ctx, self.ctx.progress
        progress.timings["total"] = round(time.time() - progress.t_start, 4)
        finish(ctx.db, ctx.blobs, ctx.job.id, "succeeded", f"succeeded: model {model_id}", model_id=model_id,
               progress=1.0, stage=None)
        progress.event("stage timings", data={"timings": progress.timings,
                                              "train_samples_per_second": result.samples_per_second})

    def _save_checkpoint(self, state: dict) -> None:
        buf = io.BytesIO()
        torch.save(state, buf)
        self.ctx.blobs.put_bytes(self.checkpoint_key, buf.getvalue())
        keep_epoch_weights(self.ctx.blobs, self.ctx.job.id, state["arm"])

    def _load_checkpoint(self, device: torch.device, epochs: int) -> dict | None:
        blobs = self.ctx.blobs
        if not blobs.exists(self.checkpoint_key):
            return None
        # our own file, still loaded without a general unpickler: tensors and plain containers only
        state = torch.load(io.BytesIO(blobs.get_bytes(self.checkpoint_key)), map_location=device, weights_only=True)
        return state if "arm" in state and 0 < state.get("epoch", 0) <= epochs else None


def run_job(job_id: str, delivery: str, send: Callable[[str], None] | None = None) -> None:
    """Run one delivery. Its message wakes this worker; the job it runs is the fair choice among
    all waiting jobs (Database.claim_next), often but not always `job_id`. `delivery` names this
    worker process and message; the job row's lease (worker + heartbeat) makes sure only one
    delivery runs a job at a time. `send` queues a job id: a search's trial, once it has ended,
    takes its search's next step (kdserve.worker.search), which may queue the next trial."""
    db, blobs = context()
    settings = get_settings()
    job = db.claim_next(delivery, now() - int(settings.stale_after_s))
    if job is None:
        log.info("delivery %s (sent for job %s): no job is waiting", delivery, job_id)
        return
    job_id = job.id
    if job.attempts > settings.max_attempts:
        fail(db, blobs, job_id, "worker_lost", f"the job's worker was lost {job.attempts - 1} times "
             f"(KDSERVE_MAX_ATTEMPTS = {settings.max_attempts}); it will not be retried")
        return
    db.add_event(job_id, f"running (attempt {job.attempts})", type="stage", data={"status": "running",
                                                                              "attempt": job.attempts})
    run = JobRun(db, blobs, job, delivery)
    try:
        with run.watch():
            run.execute()
    except Exception as exc:
        _ended(db, blobs, job_id, delivery, exc)
    finally:
        run.close_teachers()
    if job.search_id is not None and send is not None:  # its search's next step: tell, start the next trial
        try:
            search.advance(db, settings, job.search_id, send)
        except Exception as exc:  # the reapers step it again within a round
            log.warning("search %s: step after its trial failed: %s: %s", job.search_id, type(exc).__name__, exc)


def _ended(db: Database, blobs: BlobStore, job_id: str, delivery: str, exc: Exception) -> None:
    """Record how a run that raised ended: cancelled, failed with a code the user can act on,
    released to the next worker (a shutdown: re-raised), or an internal error."""
    if isinstance(exc, JailError):  # the jailed teacher crashed, timed out or broke the protocol
        if exc.code == "cancelled":
            finish(db, blobs, job_id, "cancelled", "cancelled; nothing published")
        else:
            fail(db, blobs, job_id, exc.code, exc.message)
    elif isinstance(exc, ModelFileError):  # the teacher refused a request (an output it does not have, …)
        fail(db, blobs, job_id, exc.code, exc.message)
    elif isinstance(exc, (Cancelled, trainer.Stopped)):
        reason = getattr(exc, "reason", "cancelled")
        if reason == "cancelled":
            finish(db, blobs, job_id, "cancelled", "cancelled; partial progress kept in the events, nothing published")
        elif reason == PRUNED:
            message = "pruned: its search's pruner stopped it (its validation score could not catch up); nothing published"
            finish(db, blobs, job_id, "cancelled", message, error={"code": PRUNED, "message": message, "param": None})
        elif reason == LEASE_LOST:
            log.warning("job %s: another delivery took it over; this one stops without touching it", job_id)
        else:
            fail(db, blobs, job_id, "timeout", reason)
    elif isinstance(exc, JobFailed):
        fail(db, blobs, job_id, exc.code, exc.message)
    elif _out_of_memory(exc):
        fail(db, blobs, job_id, "out_of_memory", "the job ran out of memory (the device's, or this worker's "
             "KDSERVE_WORKER_MAX_MEMORY_BYTES); lower training.batch_size or the student size")
    elif _worker_shutting_down():
        # Celery's cold shutdown (`kdserve up` stopping, SIGQUIT, a second Ctrl-C) cancels the
        # running task by raising inside it (the solo pool cannot kill it). Not a failure: give
        # the job back; the next worker resumes it from its last checkpoint.
        log.warning("job %s interrupted by the worker's shutdown; released for the next worker", job_id)
        if db.release_job(job_id, delivery):
            db.add_event(job_id, "the worker shut down; the job resumes from its last checkpoint on the next "
                         "worker", level="warning", data={"released": True})
        raise exc
    else:  # a bug: keep the trace in the log, tell the user something useful
        log.error("job %s crashed:\n%s", job_id, "".join(traceback.format_exception(exc)))
        fail(db, blobs, job_id, "internal_error", f"the worker hit an unexpected error: {type(exc).__name__}: {exc}")


def _out_of_memory(exc: BaseException) -> bool:
    """An allocation failed: on the GPU, or past the worker's memory limit (RLIMIT_DATA), where
    Python and numpy raise MemoryError and torch's CPU allocator a RuntimeError."""
    return isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)) or (
        isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc))


def _worker_shutting_down() -> bool:
    from celery.worker import state

    return state.should_stop is not None or state.should_terminate is not None

