"""A distillation job from queued to published, stage by stage:

    validating → caching_teacher → training → evaluating → exporting → verifying → publishing

Each stage updates the job row (stage, progress, estimated_finish, heartbeat) and writes an event;
each epoch writes a metrics event. A job that cannot succeed ends `failed` with an error code the
user can act on. Publishing is keyed by job id, so a rerun never publishes a second model.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
import threading
import time
import traceback
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import torch
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError

from kdserve.models import export as onnx_export
from kdserve.models import text_export
from kdserve.service.serving import textio
from kdserve.service.sandbox.sniff import ModelFileError
from kdserve.service.sandbox.jail import JailError
from kdserve.worker.jailed_teacher import JailedTeacher
from kdserve.models.teachers import Teacher, teacher_outputs, text_teacher_outputs
from kdserve.models.text import TextSource
from kdserve.models.zoo import ARCHITECTURES, ArchitectureError, count_parameters, create_student
from kdserve.service.ingest import TextParsed, load_canonical
from kdserve.service.schemas import JobCreate
from kdserve.service.settings import get_settings
from kdserve.service.store.blobs import BlobStore, make_blob_store
from kdserve.service.store.db import TERMINAL, Database, Dataset, Job, JobEvent, Model, Teacher as TeacherRow, new_id, now
from kdserve.worker import trainer
from kdserve.worker.losses.mcmi import MCMIParams
from kdserve.worker.data import Split, Tokens, split_dataset, whole
from kdserve.worker.losses import METHODS, build_loss

log = logging.getLogger("kdserve.worker")

# Share of the progress bar each stage gets; training's share is spread over its epochs.
STAGES = {
    "validating": 0.02, "refining_teacher": 0.10, "caching_teacher": 0.04, "training": 0.70, "evaluating": 0.02,
    "exporting": 0.05, "verifying": 0.04, "quantizing": 0.02, "publishing": 0.01,
}


LEASE_LOST = "lease_lost"


class JobFailed(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


class Cancelled(Exception):
    pass


@lru_cache
def context() -> tuple[Database, BlobStore]:
    settings = get_settings()
    db = Database(settings.resolved_database_url)
    db.migrate()
    return db, make_blob_store(settings)


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise JobFailed("invalid_request", f"training.device is {requested!r} but this worker has no CUDA device")
    return torch.device(requested)


def run_job(job_id: str, delivery: str) -> None:
    """Run one delivery. Its message wakes this worker; the job it runs is the fair choice among
    all waiting jobs (Database.claim_next), often but not always `job_id`. `delivery` names this
    worker process and message; the job row's lease (worker + heartbeat) makes sure only one
    delivery runs a job at a time."""
    db, blobs = context()
    settings = get_settings()
    job = db.claim_next(delivery, now() - int(settings.stale_after_s))
    if job is None:
        log.info("delivery %s (sent for job %s): no job is waiting", delivery, job_id)
        return
    job_id = job.id
    if job.attempts > settings.max_attempts:
        _fail(db, blobs, job_id, "worker_lost", f"the job's worker was lost {job.attempts - 1} times "
              f"(KDSERVE_MAX_ATTEMPTS = {settings.max_attempts}); it will not be retried")
        return
    db.add_event(job_id, f"running (attempt {job.attempts})", type="stage", data={"status": "running",
                                                                              "attempt": job.attempts})
    run = JobRun(db, blobs, job, delivery)
    try:
        with run.watch():
            run.execute()
    except JailError as exc:  # the jailed teacher crashed, timed out or broke the protocol
        if exc.code == "cancelled":
            _finish(db, blobs, job_id, "cancelled", "cancelled; nothing published")
        else:
            _fail(db, blobs, job_id, exc.code, exc.message)
    except ModelFileError as exc:  # the teacher refused a request (an output it does not have, …)
        _fail(db, blobs, job_id, exc.code, exc.message)
    except (Cancelled, trainer.Stopped) as exc:
        reason = getattr(exc, "reason", "cancelled")
        if reason == "cancelled":
            _finish(db, blobs, job_id, "cancelled", "cancelled; partial progress kept in the events, nothing published")
        elif reason == LEASE_LOST:
            log.warning("job %s: another delivery took it over; this one stops without touching it", job_id)
        else:
            _fail(db, blobs, job_id, "timeout", reason)
    except JobFailed as exc:
        _fail(db, blobs, job_id, exc.code, exc.message)
    except Exception as exc:
        if _out_of_memory(exc):
            _fail(db, blobs, job_id, "out_of_memory", "the job ran out of memory (the device's, or this worker's "
                  "KDSERVE_WORKER_MAX_MEMORY_BYTES); lower training.batch_size or the student size")
            return
        if _worker_shutting_down():
            # Celery's cold shutdown (`kdserve up` stopping, SIGQUIT, a second Ctrl-C) cancels the
            # running task by raising inside it (the solo pool cannot kill it). Not a failure: give
            # the job back; the next worker resumes it from its last checkpoint.
            log.warning("job %s interrupted by the worker's shutdown; released for the next worker", job_id)
            if db.release_job(job_id, delivery):
                db.add_event(job_id, "the worker shut down; the job resumes from its last checkpoint on the next "
                             "worker", level="warning", data={"released": True})
            raise
        # a bug: keep the trace in the log, tell the user something useful
        log.error("job %s crashed:\n%s", job_id, traceback.format_exc())
        _fail(db, blobs, job_id, "internal_error", f"the worker hit an unexpected error: {type(exc).__name__}: {exc}")
    finally:
        run.close_teachers()


def _out_of_memory(exc: BaseException) -> bool:
    """An allocation failed: on the GPU, or past the worker's memory limit (RLIMIT_DATA), where
    Python and numpy raise MemoryError and torch's CPU allocator a RuntimeError."""
    return isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)) or (
        isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc))


def _worker_shutting_down() -> bool:
    from celery.worker import state

    return state.should_stop is not None or state.should_terminate is not None


def _finish(db: Database, blobs: BlobStore, job_id: str, status: str, message: str, **fields) -> None:
    # The final status and its event in one transaction: a reader that sees the job ended (the
    # SSE stream, say) also sees the event that says so.
    with db.session() as s:
        s.execute(update(Job).where(Job.id == job_id).values(status=status, finished_at=now(), estimated_finish=None,
                                                             **fields))
        s.add(JobEvent(job_id=job_id, message=message, type="stage", level="info" if status != "failed" else "error",
                       data={"status": status}))
    blobs.delete_prefix(f"checkpoints/{job_id}")  # a finished job never resumes


def _fail(db: Database, blobs: BlobStore, job_id: str, code: str, message: str) -> None:
    log.warning("job %s failed: %s: %s", job_id, code, message)
    _finish(db, blobs, job_id, "failed", f"failed: {message}", error={"code": code, "message": message, "param": None})


class JobRun:
    def __init__(self, db: Database, blobs: BlobStore, job: Job, delivery: str):
        self.db, self.blobs, self.job, self.delivery = db, blobs, job, delivery
        self.checkpoint_key = f"checkpoints/{job.id}/last.pt"
        self.spec = JobCreate.model_validate(job.spec)
        self.timings: dict[str, float] = {}
        self.refined_teacher_id: str | None = None
        self._teachers: list[JailedTeacher] = []  # jailed processes to end with the run
        self._stop_reason: str | None = None
        self._t_start = time.time()

    # -- bookkeeping -------------------------------------------------------------------------

    @contextmanager
    def watch(self):
        """A thread beside the run: it renews the job's lease (heartbeat), and polls the row once a
        second for a cancel request and the time limit, so the training loop checks a flag, not the
        database, between batches. A run that does not stop within cancel_grace_s of a cancel or of
        its time limit (stuck in one step: a teacher forward over the dataset, a huge batch) is
        ended the hard way: the job is marked cancelled (or failed with `timeout`) and this worker
        process exits; its supervisor (kdserve up, systemd, k8s) starts a fresh one."""
        done = threading.Event()
        settings = get_settings()
        limit = self.spec.training.max_duration_s
        last_beat, stop_seen = 0.0, None

        def poll() -> None:
            nonlocal last_beat, stop_seen
            while not done.wait(1.0):
                if time.time() - last_beat >= settings.heartbeat_s:
                    last_beat = time.time()
                    if not self.db.heartbeat(self.job.id, self.delivery):
                        self._stop_reason = LEASE_LOST
                row = self.db.get_job(self.job.id)
                if row is None or row.cancel_requested:
                    self._stop_reason = self._stop_reason or "cancelled"
                elif limit and time.time() - self._t_start > limit:
                    self._stop_reason = self._stop_reason or f"the job ran past training.max_duration_s = {limit} s"
                if self._stop_reason in (None, LEASE_LOST):
                    continue
                stop_seen = stop_seen or time.time()
                if time.time() - stop_seen > settings.cancel_grace_s and not done.is_set():
                    self._terminate(row, settings.cancel_grace_s)

        thread = threading.Thread(target=poll, name=f"watch-{self.job.id}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join(timeout=5)

    def _terminate(self, row: Job | None, grace: float) -> None:
        """The run ignored its stop request for `grace` seconds: record the outcome, exit the process."""
        reason = self._stop_reason
        log.error("job %s did not stop within %.0f s of %r: terminating this worker", self.job.id, grace, reason)
        if row is not None and row.status not in TERMINAL:
            note = f"the worker was stuck for {grace:.0f} s and was terminated"
            if reason == "cancelled":
                _finish(self.db, self.blobs, self.job.id, "cancelled", f"cancelled; {note}")
            else:
                _fail(self.db, self.blobs, self.job.id, "timeout", f"{reason}; {note}")
        logging.shutdown()
        os._exit(70)

    def should_stop(self) -> str | None:
        return self._stop_reason

    def _progress_at(self, stage: str, fraction: float = 0.0) -> float:
        names = list(STAGES)
        before = sum(STAGES[n] for n in names[: names.index(stage)])
        return min(1.0, before + STAGES[stage] * fraction)

    def _update_progress(self, stage: str, fraction: float, **fields) -> None:
        progress = self._progress_at(stage, fraction)
        elapsed = time.time() - self._t_start
        eta = int(self._t_start + elapsed / progress) if progress > 0.05 else None
        self.db.update_job(self.job.id, stage=stage, progress=round(progress, 4), estimated_finish=eta,
                           heartbeat_at=now(), **fields)

    @contextmanager
    def stage(self, name: str):
        if self._stop_reason:
            raise trainer.Stopped(self._stop_reason)
        self._update_progress(name, 0.0)
        self.db.add_event(self.job.id, name.replace("_", " "), type="stage", data={"stage": name})
        t0 = time.perf_counter()
        yield
        self.timings[name] = round(time.perf_counter() - t0, 4)

    # -- the stages ----------------------------------------------------------------------------

    def execute(self) -> None:
        spec = self.spec
        info = METHODS.get(spec.method.name)
        if info is None:
            raise JobFailed("invalid_request", f"this worker does not know method {spec.method.name!r}")
        device = pick_device(spec.training.device)

        with self.stage("validating"):
            teacher_row, teacher = self._load_teacher(device) if spec.teacher_id else (None, None)
            self.text = teacher is not None and teacher.format == "hf"
            train_split, val_split = self._load_data(teacher)
            self.embedding = self.text and teacher.task == "embedding"
            if self.embedding:
                num_classes = teacher.output_dim  # the student's output width: the embedding's
            else:
                num_classes = teacher.num_classes if teacher else int(max(train_split.y.max(), val_split.y.max())) + 1
            input_shape = list(train_split.x.shape[1:])
            if teacher and not self.text and teacher.input_shape != input_shape:
                raise JobFailed("teacher_output_mismatch",
                                f"dataset rows have shape {input_shape}, the teacher expects {teacher.input_shape}")
            if not self.embedding and int(max(train_split.y.max(), val_split.y.max())) >= num_classes:
                raise JobFailed("label_out_of_range", f"a label is ≥ the teacher's {num_classes} classes")
            if spec.teacher_features and spec.teacher_features not in teacher.output_names:
                raise JobFailed("invalid_request", f"the teacher has no output {spec.teacher_features!r}")
            loss_fn = build_loss(spec.method.name, spec.method.params)
            torch.manual_seed(spec.training.seed)  # the student's initial weights are part of the seeded run
            try:
                source = self._text_source(teacher, train_split, loss_fn.output_width(num_classes)) if self.text else None
                student = create_student(spec.student.architecture, spec.student.params, input_shape,
                                         loss_fn.output_width(num_classes), source=source)
            except ArchitectureError as exc:
                raise JobFailed("invalid_request", str(exc))

        if spec.teacher_refinement is not None:
            with self.stage("refining_teacher"):
                teacher_row, teacher = self._refine_teacher(teacher_row, teacher, train_split, device)

        if teacher is not None:
            with self.stage("caching_teacher"):
                t0 = time.perf_counter()
                cached = self._load_text_cache() if self.text else None
                for i, split in enumerate((train_split, val_split)):
                    if cached is not None:
                        split.teacher_logits, split.teacher_features = cached[i]
                    elif self.text:
                        split.teacher_logits, split.teacher_features = text_teacher_outputs(
                            teacher, split.x, split.mask, split.types, spec.teacher_features)
                    else:
                        split.teacher_logits, split.teacher_features = teacher_outputs(teacher, split.x,
                                                                                       spec.teacher_features)
                seconds = time.perf_counter() - t0
                if self.text and cached is None:
                    self._save_text_cache(train_split, val_split)
                self.db.add_event(self.job.id, f"teacher outputs {'reused' if cached else 'cached'} for "
                                  f"{len(train_split) + len(val_split)} samples in {seconds:.2f} s",
                                  data={"teacher_forward_seconds": round(seconds, 4), "reused": cached is not None})
            if train_split.teacher_logits.shape[1] != num_classes:
                raise JobFailed("teacher_output_mismatch", "the teacher's output width changed between calls")

        with self.stage("training"):
            resume = self._load_checkpoint(device)
            if resume is not None:
                self.db.add_event(self.job.id, f"resumed from the checkpoint after epoch {resume['epoch']}",
                                  data={"resume_epoch": resume["epoch"]})
            try:
                result = trainer.train(student, loss_fn, train_split, val_split, spec.training, device,
                                       on_epoch=self._on_epoch, should_stop=self.should_stop,
                                       checkpoint=self._save_checkpoint, resume=resume, embedding=self.embedding)
            except trainer.SetupError as exc:
                raise JobFailed("invalid_request", str(exc))
        # What is evaluated and exported: the student's main head only (auxiliary heads stay behind),
        # mapped to class logits by the method (LELP's subclass head).
        model = trainer.predictor(student.cpu().eval(), loss_fn.cpu())

        with self.stage("evaluating"):
            student_logits = trainer.predict(model, val_split)
            metrics = self._final_metrics(student_logits, val_split, result)
            self.db.update_job(self.job.id, metrics=metrics)

        if self.text:
            model_id = self._export_text(model, student_logits, val_split, teacher, teacher_row, metrics)
        else:
            model_id = self._export_tensor(model, student_logits, train_split, val_split, teacher_row, metrics,
                                           input_shape, num_classes)

        self.timings["total"] = round(time.time() - self._t_start, 4)
        _finish(self.db, self.blobs, self.job.id, "succeeded", f"succeeded: model {model_id}", model_id=model_id,
                progress=1.0, stage=None)
        self.db.add_event(self.job.id, "stage timings", data={"timings": self.timings,
                                                               "train_samples_per_second": result.samples_per_second})

    def _export_tensor(self, model, student_logits, train_split: Split, val_split: Split, teacher_row, metrics,
                       input_shape, num_classes) -> str:
        """Export, gate fp32 on parity, build and gate the requested int8/fp16 variants (each
        measured on the validation set, latency at batch 1 and 64), publish what passed."""
        spec = self.spec
        val_x, reference = val_split.x.numpy(), student_logits.numpy()
        with tempfile.TemporaryDirectory(dir=self.blobs.scratch_dir) as tmp:
            onnx_path = Path(tmp) / "model.onnx"
            with self.stage("exporting"):
                try:
                    onnx_export.export_onnx(model, input_shape, onnx_path, spec.export.opset)
                except Exception as exc:
                    raise JobFailed("export_failed", f"ONNX export failed: {type(exc).__name__}: {exc}")
            with self.stage("verifying"):
                try:
                    parity = onnx_export.check_parity(onnx_path, reference, val_x)
                except Exception as exc:  # the exported file does not load or run in onnxruntime
                    raise JobFailed("export_failed", f"onnxruntime cannot run the exported model (opset "
                                    f"{spec.export.opset}): {type(exc).__name__}: {str(exc)[:300]}")
                self._parity_gate({"max_abs_diff": parity.max_abs_diff, "max_rel_diff": parity.max_rel_diff,
                                   "argmax_agreement": parity.argmax_agreement})
                variant_args = dict(calib_x=train_split.x.numpy(), val_x=val_x, val_y=val_split.y.numpy(),
                                    reference_logits=reference, max_accuracy_drop=spec.export.max_accuracy_drop,
                                    kind=spec.student.architecture, out_dir=Path(tmp))
                fp32 = onnx_export.build_variants(onnx_path, ["fp32"], fp32_accuracy=None, **variant_args)[0]
                if fp32.path is None:  # measuring failed after parity passed: report it, as a failed export
                    raise JobFailed("export_failed", fp32.reason)
            files = [("fp32", onnx_path, fp32.artifact())]
            if spec.export.quantize:
                with self.stage("quantizing"):
                    for v in onnx_export.build_variants(onnx_path, list(spec.export.quantize),
                                                        fp32_accuracy=fp32.accuracy, **variant_args):
                        self.db.add_event(self.job.id, v.reason if v.published else f"not published: {v.reason}",
                                          level="info" if v.published else "warning",
                                          data={"precision": v.precision, "published": v.published,
                                                "accuracy_delta": onnx_export.finite_or_none(v.accuracy_delta),
                                                "latency_ms_batch1": v.latency_ms_batch1})
                        if v.published:
                            files.append((v.precision, v.path, v.artifact()))
            with self.stage("publishing"):
                return self._publish(files, model, teacher_row, metrics, input_shape, num_classes)

    def _parity_gate(self, data: dict) -> None:
        """The fp32 gate, the same for every student: publish only within export.parity_tolerance."""
        tolerance = self.spec.export.parity_tolerance
        data = {**data, "tolerance": tolerance}
        if not data["max_abs_diff"] <= tolerance:
            self.db.add_event(self.job.id, "ONNX parity check failed", level="error", data=data)
            raise JobFailed("parity_failed", f"onnxruntime and PyTorch differ by up to {data['max_abs_diff']:.3g} on "
                            f"the validation set (tolerance {tolerance:g}); nothing published")
        self.db.add_event(self.job.id, f"ONNX parity ok: max abs diff {data['max_abs_diff']:.3g}", data=data)

    def _export_text(self, model, student_logits: torch.Tensor, val: Split, teacher: Teacher, teacher_row,
                     metrics: dict) -> str:
        """Export a text student (input_ids + attention_mask), gate it on parity, make the requested
        variants and publish it with its tokenizer (per precision: the .onnx file, and a zip of it
        with the tokenizer files)."""
        from kdserve.models.text import Embeddings

        spec = self.spec
        task = teacher.task
        output_name = text_export.EMBEDDING_OUTPUT if self.embedding else text_export.LOGITS_OUTPUT
        ids, mask = val.x.numpy(), val.mask.numpy()
        reference = student_logits.numpy()
        labels = None if self.embedding else val.y.numpy()
        seq_len = max(int(val.mask.sum(1).float().median()), 2)
        positions = next(m for m in model.modules() if isinstance(m, Embeddings)).position.num_embeddings
        with tempfile.TemporaryDirectory(dir=self.blobs.scratch_dir) as tmp:
            onnx_path = Path(tmp) / "model.onnx"
            with self.stage("exporting"):
                try:
                    text_export.export_text_onnx(model, onnx_path, spec.export.opset, output_name, positions)
                except Exception as exc:
                    raise JobFailed("export_failed", f"ONNX export failed: {type(exc).__name__}: {exc}")
            with self.stage("verifying"):
                try:
                    parity = text_export.check_text_parity(onnx_path, reference, ids, mask, task)
                except Exception as exc:
                    raise JobFailed("export_failed", f"onnxruntime cannot run the exported model (opset "
                                    f"{spec.export.opset}): {type(exc).__name__}: {str(exc)[:300]}")
                self._parity_gate({"max_abs_diff": parity.max_abs_diff, "max_rel_diff": parity.max_rel_diff,
                                   "agreement": parity.agreement})
                artifact = text_export.artifact_fields(onnx_path, "fp32", parity, parity.outputs, labels, task,
                                                       seq_len, teacher.vocab_size)
                artifact["quantization"] = "none (fp32)"
            variants = []
            if spec.export.quantize:
                with self.stage("quantizing"):
                    variants = text_export.build_text_variants(
                        onnx_path, list(spec.export.quantize), ids=ids, mask=mask, reference=reference, labels=labels,
                        task=task, max_drop=spec.export.max_accuracy_drop, seq_len=seq_len,
                        vocab_size=teacher.vocab_size, out_dir=Path(tmp))
                    for v in variants:
                        self.db.add_event(self.job.id, v.reason, level="info" if v.published else "warning",
                                          data={"precision": v.precision, "published": v.published})
            files = [("fp32", onnx_path, artifact)] + [(v.precision, v.path, v.artifact) for v in variants if v.published]
            with self.stage("publishing"):
                return self._publish_text(files, model, teacher, teacher_row, metrics, output_name,
                                          int(reference.shape[1]), Path(tmp))

    def _publish_text(self, files, model, teacher: Teacher, teacher_row, metrics, output_name: str, width: int,
                      tmp: Path) -> str:
        with self.db.session() as s:
            existing = s.query(Model).filter_by(job_id=self.job.id).one_or_none()
            if existing is not None:  # a redelivered job that already published: keep the first model
                return existing.id
        single_file_artifacts(files)
        model_id = new_id("mdl")
        prefix = f"models/{model_id}"
        data = self._dataset_row(self.spec.dataset_id)
        text_info = {"task": teacher.task, "max_length": self.max_length, "inputs": [textio.INPUT_IDS,
                     textio.ATTENTION_MASK], "output": output_name, "normalized": bool(self.embedding and teacher.normalize),
                     "pooling": teacher.pooling if self.embedding else "cls",
                     "text_pairs": bool((data.details or {}).get("text_pairs")), "vocab_size": teacher.vocab_size}
        tokenizer = text_export.tokenizer_bundle(teacher.tokenizer_json, teacher.tokenizer_files, text_info)
        for name, content in tokenizer.items():
            self.blobs.put_bytes(f"{prefix}/tokenizer/{name}", content)
        artifacts, bundles = [], []
        for precision, path, artifact in files:
            artifacts.append(dict(artifact, blob_key=f"{prefix}/model.{precision}.onnx"))
            self.blobs.put_file(artifacts[-1]["blob_key"], path)
            zip_path = tmp / f"model.{precision}.zip"
            text_export.write_zip(zip_path, path, tokenizer)
            bundles.append({"format": "zip", "precision": precision, "blob_key": f"{prefix}/model.{precision}.zip",
                            "size_bytes": zip_path.stat().st_size, "sha256": onnx_export.sha256_file(zip_path)})
            self.blobs.put_file(bundles[-1]["blob_key"], zip_path)
        verify_stored(self.blobs, prefix, [a["blob_key"] for a in artifacts])
        n_params = count_parameters(model)
        t_params = teacher_row.num_parameters if teacher_row else None
        keys = ("teacher_accuracy", "student_accuracy", "agreement", "mean_cosine", "neighbour_overlap_at_10")
        card = {
            "teacher_id": self.spec.teacher_id, "dataset_id": self.spec.dataset_id,
            "method": self.spec.method.model_dump(), "student": self.spec.student.model_dump(),
            "num_parameters": n_params, "teacher_num_parameters": t_params, "refined_teacher_id": None,
            "compression_ratio": round(t_params / n_params, 3) if t_params else None,
            "metrics": {k: metrics[k] for k in keys if k in metrics},
            "input": {"name": textio.INPUT_IDS, "shape": [-1, -1], "datatype": "INT64"},
            "inputs": [{"name": textio.INPUT_IDS, "shape": [-1, -1], "datatype": "INT64"},
                       {"name": textio.ATTENTION_MASK, "shape": [-1, -1], "datatype": "INT64"}],
            "output": {"name": output_name, "shape": [-1, width], "datatype": "FP32"},
            "artifacts": artifacts, "bundles": bundles,
            "text": dict(text_info, tokenizer_files=sorted(tokenizer)),
        }
        name = self.spec.metadata.get("name") or f"{self.spec.student.architecture}-{self.spec.method.name}-{self.job.id[-6:]}"
        try:
            with self.db.session() as s:
                s.add(Model(id=model_id, tenant=self.job.tenant, name=name, job_id=self.job.id, card=card))
        except IntegrityError:  # another delivery of this job published first: keep that one
            self.blobs.delete_prefix(prefix)
            with self.db.session() as s:
                return s.query(Model).filter_by(job_id=self.job.id).one().id
        return model_id

    def _dataset_row(self, dataset_id: str) -> Dataset:
        with self.db.session() as s:
            return s.query(Dataset).filter_by(id=dataset_id).one()

    def _save_checkpoint(self, state: dict) -> None:
        buf = io.BytesIO()
        torch.save(state, buf)
        self.blobs.put_bytes(self.checkpoint_key, buf.getvalue())

    def _load_checkpoint(self, device: torch.device) -> dict | None:
        if not self.blobs.exists(self.checkpoint_key):
            return None
        # our own file, still loaded without a general unpickler: tensors and plain containers only
        state = torch.load(io.BytesIO(self.blobs.get_bytes(self.checkpoint_key)), map_location=device,
                           weights_only=True)
        return state if 0 < state.get("epoch", 0) <= self.spec.training.epochs else None

    def _refine_teacher(self, row: TeacherRow, teacher: JailedTeacher, train: Split, device: torch.device):
        """MCMI fine-tuning of a TorchScript teacher, in its jail; the refined teacher is stored as
        a new teacher and loaded (in a jail of its own) in place of the original."""
        if teacher.format != "torchscript":
            raise JobFailed("invalid_request", "only a TorchScript teacher can be refined")
        params = MCMIParams.model_validate(self.spec.teacher_refinement.params)

        def on_epoch(event: dict) -> None:
            epoch, loss, cmi = int(event["epoch"]), float(event["loss"]), float(event["cmi"])
            self._update_progress("refining_teacher", epoch / params.epochs)
            self.db.add_event(self.job.id, f"teacher refinement epoch {epoch}/{params.epochs}: loss {loss:.4f}, "
                              f"CMI {cmi:.4f}", type="metrics", data={"refine_epoch": epoch, "loss": loss, "cmi": cmi})

        labelled = train.y >= 0
        refined_id = new_id("tch")
        blob_key = f"teachers/{refined_id}/teacher.pt"
        with tempfile.TemporaryDirectory(dir=self.blobs.scratch_dir) as tmp:
            try:
                path = teacher.refine(train.x[labelled], train.y[labelled], params.model_dump(),
                                      self.spec.training.seed, Path(tmp) / "teacher.pt", on_epoch, self.should_stop)
            except JailError as exc:
                if exc.code == "cancelled":  # the run was asked to stop: say why, as the trainer does
                    raise trainer.Stopped(self._stop_reason or "cancelled")
                raise
            teacher.close()  # the refined teacher takes its place
            refined = self._jailed(path, "torchscript", row.input_shape, device)
            self.blobs.put_file(blob_key, path)
            refined_row = TeacherRow(
                id=refined_id, tenant=self.job.tenant, name=f"{row.name} (MCMI-refined, job {self.job.id})",
                format="torchscript", sha256=onnx_export.sha256_file(path), size_bytes=path.stat().st_size,
                input_shape=row.input_shape, input_dtype=row.input_dtype, num_classes=refined.num_classes,
                num_parameters=refined.num_parameters, outputs=row.outputs, blob_key=blob_key)
        with self.db.session() as s:
            s.add(refined_row)
        self.refined_teacher_id = refined_id
        self.db.add_event(self.job.id, f"refined teacher stored as {refined_id}", data={"refined_teacher_id": refined_id})
        return refined_row, refined

    def _load_teacher(self, device: torch.device) -> tuple[TeacherRow, JailedTeacher]:
        with self.db.session() as s:
            row = s.query(TeacherRow).filter_by(id=self.spec.teacher_id).one_or_none()
        if row is None:
            raise JobFailed("not_found", f"teacher {self.spec.teacher_id} no longer exists")
        try:
            teacher = self._jailed(self.blobs.local_path(row.blob_key), row.format, row.input_shape, device)
        except ModelFileError as exc:
            raise JobFailed(exc.code, exc.message)
        return row, teacher

    def _jailed(self, path: Path, fmt: str, input_shape, device: torch.device) -> JailedTeacher:
        """The teacher loaded in the jail, with this worker's threads; ended with the run."""
        jail = get_settings().teacher_jail(probe=False, threads=torch.get_num_threads(), scratch=self.blobs.scratch_dir)
        teacher = JailedTeacher(path, fmt, input_shape, str(device), jail=jail)
        self._teachers.append(teacher)
        return teacher

    def close_teachers(self) -> None:
        for teacher in self._teachers:
            teacher.close()
        self._teachers.clear()

    def _dataset(self, dataset_id: str):
        with self.db.session() as s:
            row = s.query(Dataset).filter_by(id=dataset_id).one_or_none()
        if row is None:
            raise JobFailed("not_found", f"dataset {dataset_id} no longer exists")
        return load_canonical(self.blobs.local_path(row.blob_key))

    def _load_data(self, teacher: Teacher | None) -> tuple[Split, Split]:
        data = self._prepare(self._dataset(self.spec.dataset_id), teacher)
        if self.spec.validation_dataset_id:
            return whole(data), whole(self._prepare(self._dataset(self.spec.validation_dataset_id), teacher))
        try:
            return split_dataset(data, self.spec.validation_split, self.spec.training.seed)
        except ValueError as exc:
            raise JobFailed("invalid_request", str(exc))

    def _prepare(self, data, teacher: Teacher | None):
        """Tabular data as it is; text tokenised with the teacher's tokenizer at the job's max_length."""
        is_text = isinstance(data, TextParsed)
        if is_text != (teacher is not None and teacher.format == "hf"):
            raise JobFailed("invalid_request", "a text dataset needs a text teacher (format hf) and a text teacher "
                            "needs a text dataset (jsonl)")
        if not is_text:
            return data
        max_length = min(self.spec.text.max_length, teacher.max_positions)
        try:
            enc = textio.encode(teacher.tokenizer, data.texts, max_length, data.pairs)
        except textio.TokenizerError as exc:
            raise JobFailed("invalid_request", str(exc))
        self.max_length = max_length
        return Tokens(enc.input_ids, enc.attention_mask, enc.token_type_ids, data.y)

    def _text_cache_key(self) -> str:
        """Text teachers are expensive to run, and jobs comparing students on the same data ask the
        same question: their outputs are kept in the blob store, keyed by everything that decides
        them (teacher, data, split, tokenisation, feature), so later jobs skip the teacher."""
        import hashlib
        import json as _json

        spec = self.spec
        ident = {"teacher": spec.teacher_id, "dataset": spec.dataset_id, "validation": spec.validation_dataset_id,
                 "split": spec.validation_split, "seed": spec.training.seed, "max_length": self.max_length,
                 "feature": spec.teacher_features, "version": 1}
        digest = hashlib.sha256(_json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]
        return f"cache/teacher_outputs/{spec.teacher_id}/{digest}.pt"

    def _load_text_cache(self):
        key = self._text_cache_key()
        if not self.blobs.exists(key):
            return None
        state = torch.load(io.BytesIO(self.blobs.get_bytes(key)), map_location="cpu", weights_only=True)
        return [(state[f"{n}_logits"], state.get(f"{n}_features")) for n in ("train", "val")]

    def _save_text_cache(self, train: Split, val: Split) -> None:
        state = {}
        for n, split in (("train", train), ("val", val)):
            state[f"{n}_logits"] = split.teacher_logits
            if split.teacher_features is not None:
                state[f"{n}_features"] = split.teacher_features
        buf = io.BytesIO()
        torch.save(state, buf)
        self.blobs.put_bytes(self._text_cache_key(), buf.getvalue())

    def _text_source(self, teacher: Teacher, train: Split, width: int) -> TextSource:
        """What a text student is built from; the teacher's weights only for architectures that copy
        them, a few hundred training texts to fit a narrow student's projection, and how often each
        token occurs in all of them (a factorised table's fit and its full rows)."""
        info = ARCHITECTURES.get(self.spec.student.architecture)
        weights = info is not None and info.needs_teacher_weights
        calibration = counts = None
        if weights:
            n = min(256, len(train))
            width_used = max(int(train.mask[:n].sum(1).max()), 1)
            calibration = (train.x[:n, :width_used], train.mask[:n, :width_used])
            counts = torch.bincount(train.x[train.mask.bool()].flatten(), minlength=teacher.vocab_size)
        return TextSource(
            vocab_size=teacher.vocab_size, pad_token_id=teacher.pad_token_id, sep_token_id=teacher.sep_token_id,
            max_positions=teacher.max_positions, task=teacher.task, output_dim=width, pooling=teacher.pooling,
            normalize=teacher.normalize, model_type=teacher.model_type, config=teacher.config,
            state_dict=teacher.state_dict() if weights else None,
            calibration=calibration, token_counts=counts)

    def _on_epoch(self, m: trainer.EpochMetrics) -> None:
        epochs = self.spec.training.epochs
        metrics = dict(self.job.metrics or {})
        metrics.update(train_loss=m.train_loss, val_loss=m.val_loss)
        self.job.metrics = metrics
        self._update_progress("training", m.epoch / epochs, epoch=m.epoch, metrics=metrics)
        parts = [f"train_loss {m.train_loss:.4f}"]
        if m.val_cosine is not None:
            parts.append(f"val_cosine {m.val_cosine:.4f}")
        if m.val_accuracy is not None:
            parts.append(f"val_accuracy {m.val_accuracy:.4f}")
        if m.val_agreement is not None:
            parts.append(f"val_agreement {m.val_agreement:.4f}")
        self.db.add_event(self.job.id, f"epoch {m.epoch}/{epochs}: " + ", ".join(parts), type="metrics",
                          data=m.__dict__)

    def _final_metrics(self, student_logits: torch.Tensor, val: Split, result: trainer.TrainResult) -> dict:
        labelled = val.y >= 0
        pred = student_logits.argmax(1)
        metrics = {"teacher_accuracy": None, "student_accuracy": None, "agreement": None,
                   "train_loss": result.history[-1].train_loss if result.history else None,
                   "val_loss": result.history[-1].val_loss if result.history else None}
        if getattr(self, "embedding", False):
            metrics["mean_cosine"] = float(torch.nn.functional.cosine_similarity(
                student_logits, val.teacher_logits.float(), dim=1).mean())
            metrics["neighbour_overlap_at_10"] = neighbour_overlap(student_logits, val.teacher_logits.float(), 10)
            return metrics
        if bool(labelled.any()):
            metrics["student_accuracy"] = float((pred[labelled] == val.y[labelled]).float().mean())
        if val.teacher_logits is not None:
            t_pred = val.teacher_logits.argmax(1)
            metrics["agreement"] = float((pred == t_pred).float().mean())
            if bool(labelled.any()):
                metrics["teacher_accuracy"] = float((t_pred[labelled] == val.y[labelled]).float().mean())
        return metrics

    def _publish(self, files: list[tuple[str, Path, dict]], model, teacher_row, metrics, input_shape,
                 num_classes) -> str:
        with self.db.session() as s:
            existing = s.query(Model).filter_by(job_id=self.job.id).one_or_none()
            if existing is not None:  # a redelivered job that already published: keep the first model
                return existing.id
        single_file_artifacts(files)
        model_id = new_id("mdl")
        artifacts = []
        for precision, path, artifact in files:
            artifacts.append(dict(artifact, blob_key=f"models/{model_id}/model.{precision}.onnx"))
            self.blobs.put_file(artifacts[-1]["blob_key"], path)
        verify_stored(self.blobs, f"models/{model_id}", [a["blob_key"] for a in artifacts])
        n_params = count_parameters(model)
        t_params = teacher_row.num_parameters if teacher_row else None
        card = {
            "teacher_id": self.spec.teacher_id, "dataset_id": self.spec.dataset_id,
            "method": self.spec.method.model_dump(), "student": self.spec.student.model_dump(),
            "num_parameters": n_params, "teacher_num_parameters": t_params,
            "refined_teacher_id": self.refined_teacher_id,
            "compression_ratio": round(t_params / n_params, 3) if t_params else None,
            "metrics": {k: metrics[k] for k in ("teacher_accuracy", "student_accuracy", "agreement")},
            "input": {"name": onnx_export.INPUT_NAME, "shape": [-1, *input_shape], "datatype": "FP32"},
            "output": {"name": onnx_export.OUTPUT_NAME, "shape": [-1, num_classes], "datatype": "FP32"},
            "artifacts": artifacts,
        }
        name = self.spec.metadata.get("name") or f"{self.spec.student.architecture}-{self.spec.method.name}-{self.job.id[-6:]}"
        try:
            with self.db.session() as s:
                s.add(Model(id=model_id, tenant=self.job.tenant, name=name, job_id=self.job.id, card=card))
        except IntegrityError:  # another delivery of this job published first: keep that one
            self.blobs.delete_prefix(f"models/{model_id}")
            with self.db.session() as s:
                return s.query(Model).filter_by(job_id=self.job.id).one().id
        return model_id


def single_file_artifacts(files: list[tuple[str, Path, dict]]) -> None:
    """A published model is one .onnx file per precision: the store keeps, downloads send and
    serving opens that one file. Weights too large for one protobuf (see
    kdserve.models.export.EXTERNAL_DATA_THRESHOLD_BYTES) would be in a side file left behind, so such a
    student fails here (the API's pre-flight refuses most before they run)."""
    for precision, path, _artifact in files:
        paths = onnx_export.model_files(path)
        if len(paths) > 1:
            size = sum(f.stat().st_size for f in paths)
            raise JobFailed("export_failed", f"the {precision} student is {size / 1024**3:.2f} GiB: its weights need an "
                            f"external data file ({paths[1].name}) and a published model is one ONNX file of at most "
                            f"{onnx_export.EXTERNAL_DATA_THRESHOLD_BYTES / 1024**3:.1f} GiB; choose a smaller student")


def verify_stored(blobs: BlobStore, prefix: str, keys: list[str]) -> None:
    """Never `succeeded` without a servable model: each published .onnx file is opened from the
    model store (with S3, the copy fetched back) in onnxruntime, as the API will serve it. A file
    that is incomplete or needs one that was not stored fails the job with nothing left behind."""
    for key in keys:
        try:
            onnx_export.ort_session(blobs.local_path(key))
        except Exception as exc:
            blobs.delete_prefix(prefix)
            raise JobFailed("export_failed", f"the published {key.rsplit('/', 1)[-1]} does not load from the model "
                            f"store: {type(exc).__name__}: {str(exc)[:300]}")


def neighbour_overlap(student: torch.Tensor, teacher: torch.Tensor, k: int) -> float | None:
    """Mean share of each row's k nearest neighbours (cosine, itself excluded) that the student's
    space and the teacher's have in common: how well the student serves retrieval in its place."""
    n = min(len(student), 2000)  # an n×n similarity matrix: a sample is plenty for an average
    if n <= k:
        return None
    student, teacher = student[:n], teacher[:n]

    def knn(x: torch.Tensor) -> torch.Tensor:
        xn = torch.nn.functional.normalize(x.float(), dim=1)
        sim = xn @ xn.T
        sim.fill_diagonal_(-float("inf"))
        return sim.topk(k, dim=1).indices

    a, b = knn(student), knn(teacher)
    hits = (a.unsqueeze(2) == b.unsqueeze(1)).any(2).float().sum(1)
    return float((hits / k).mean())
