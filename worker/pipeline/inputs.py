"""The validating, refining_teacher and caching_teacher stages: the teacher (in its jail), the
data (split, text tokenised), the student to train, an optional MCMI refinement of the teacher, and
the teacher's outputs on every sample (text teachers' kept in the blob store for later jobs)."""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from kdserve.models import export as onnx_export
from kdserve.models.teachers import teacher_outputs, text_teacher_outputs
from kdserve.models.text import TextSource
from kdserve.models.student import input_scaling
from kdserve.models.zoo import ARCHITECTURES, ArchitectureError, create_student
from kdserve.service.store.datasets import TextParsed, load_canonical, relabel, unknown_classes
from kdserve.service.sandbox.jail import JailError
from kdserve.service.sandbox.sniff import ModelFileError
from kdserve.service.serving import textio
from kdserve.service.settings import get_settings
from kdserve.service.store.db import Dataset, Teacher as TeacherRow, new_id
from kdserve.worker import trainer
from kdserve.worker.data import Split, Tokens, split_dataset, whole
from kdserve.worker.jailed_teacher import JailedTeacher
from kdserve.worker.losses import build_loss
from kdserve.worker.losses.mcmi import MCMIParams
from kdserve.worker.pipeline.common import JobFailed
from kdserve.worker.pipeline.progress import RunContext


@dataclass
class Prepared:
    """What the validating stage hands on: teacher, data and the untrained student."""

    teacher_row: TeacherRow | None
    teacher: JailedTeacher | None
    train: Split
    val: Split
    num_classes: int  # the student's output width: classes, or an embedding teacher's dimension
    input_shape: list[int]
    max_length: int | None  # text: tokens per row
    loss_fn: object
    student: torch.nn.Module
    refined_teacher_id: str | None = None

    @property
    def text(self) -> bool:
        return self.teacher is not None and self.teacher.format == "hf"

    @property
    def embedding(self) -> bool:
        return self.text and self.teacher.task == "embedding"


def validate(ctx: RunContext, device: torch.device) -> Prepared:
    spec = ctx.spec
    teacher_row, teacher = load_teacher(ctx, device) if spec.teacher_id else (None, None)
    train, val, max_length = load_data(ctx, teacher)
    text = teacher is not None and teacher.format == "hf"
    embedding = text and teacher.task == "embedding"
    labels_max = int(max(train.y.max(), val.y.max()))
    if embedding:
        num_classes = teacher.output_dim  # the student's output width: the embedding's
    else:
        num_classes = teacher.num_classes if teacher else labels_max + 1
    input_shape = list(train.x.shape[1:])
    if teacher and not text and teacher.input_shape != input_shape:
        raise JobFailed("teacher_output_mismatch",
                        f"dataset rows have shape {input_shape}, the teacher expects {teacher.input_shape}")
    if not embedding and labels_max >= num_classes:
        raise JobFailed("label_out_of_range", f"a label is ≥ the teacher's {num_classes} classes")
    if spec.teacher_features and spec.teacher_features not in teacher.output_names:
        raise JobFailed("invalid_request", f"the teacher has no output {spec.teacher_features!r}")
    loss_fn = build_loss(spec.method.name, spec.method.params)
    student = new_student(ctx, teacher, train, input_shape, max_length, loss_fn.output_width(num_classes))
    early_warnings(ctx, val, teacher_row)
    return Prepared(teacher_row, teacher, train, val, num_classes, input_shape, max_length, loss_fn, student)


def new_student(ctx: RunContext, teacher: JailedTeacher | None, train: Split, input_shape: list[int],
                max_length: int | None, width: int) -> torch.nn.Module:
    """The job's untrained student with `width` outputs; its initial weights are part of the seeded run."""
    spec = ctx.spec
    torch.manual_seed(spec.training.seed)
    try:
        source = text_source(ctx, teacher, train, width) if teacher is not None and teacher.format == "hf" else None
        student = create_student(spec.student.architecture, spec.student.params, input_shape, width, source=source,
                                 max_length=max_length)
    except ArchitectureError as exc:
        raise JobFailed("invalid_request", str(exc))
    scale_inputs(ctx, student, train)
    return student


SCALE_SPREAD = 10.0  # "auto" standardises when a feature's std or |mean| is over this × the median std


def scale_inputs(ctx: RunContext, student: torch.nn.Module, train: Split) -> None:
    """training.standardize_inputs for a student with an InputScaling layer (MLP): the training
    split's per-feature mean and standard deviation, set inside the student (zero-variance
    features keep scale 1), when asked or ("auto") when the features are on very different scales
    — raw tabular data (wine's proline is ~1000 beside values ~0.1–10) trains badly otherwise."""
    layer = input_scaling(student)
    if layer is None:
        return
    x = train.x.reshape(len(train.x), -1).double()
    mean, std = x.mean(0), x.std(0, unbiased=False)
    varying = std > 1e-6 * float(std.max().clamp_min(1e-30))
    median = float(std[varying].median()) if varying.any() else 1.0
    spread = {"max_std_over_median_std": round(float(std.max()) / median, 2),
              "max_abs_mean_over_median_std": round(float(mean.abs().max()) / median, 2)}
    wanted = ctx.spec.training.standardize_inputs
    apply = wanted is True or (wanted == "auto" and max(spread.values()) > SCALE_SPREAD)
    if apply:
        layer.set(mean.float(), torch.where(varying, 1.0 / std.clamp_min(1e-30), torch.ones_like(std)).float())
    if ctx.input_scaling is None:  # said once (the baseline arm builds a second student the same way)
        why = ("asked (training.standardize_inputs: true)" if wanted is True else "not asked" if wanted is False else
               f"auto: features on very different scales (spread over {SCALE_SPREAD:g}×)" if apply else
               f"auto: features on similar scales (spread within {SCALE_SPREAD:g}×)")
        ctx.input_scaling = {"standardized": apply, "reason": why, **spread}
        if apply:
            ctx.progress.event(f"inputs standardised inside the student ({why}): the exported model takes the raw "
                               "features", data={"input_scaling": ctx.input_scaling})
        elif max(spread.values()) > SCALE_SPREAD:
            ctx.warn("feature_scales", f"the features are on very different scales (a standard deviation or mean "
                     f"{max(spread.values()):.0f}× the median standard deviation) and training.standardize_inputs is "
                     "false: the student may train poorly; leave it \"auto\" or scale the data", spread)


SMALL_VALIDATION = 50  # rows: below it, scores chosen on the validation split are noisy


def early_warnings(ctx: RunContext, val: Split, teacher_row: TeacherRow | None) -> None:
    """What the data and the teacher say before training: a validation split too small to choose
    epochs and learning rates by; a teacher that gives probabilities (distilling from log p
    works, but p's tail is lost where a softmax saturated) or runs one row at a time."""
    adapted = ((teacher_row.details or {}).get("adaptations") or {}) if teacher_row is not None else {}
    if "probabilities" in adapted:
        ctx.warn("teacher_probabilities", "the teacher outputs probabilities, not logits: " + adapted["probabilities"]
                 + "; classes a softmax rounded to 0 carry no signal (export the model without its final softmax)")
    if "run one row at a time" in adapted.get("batch", ""):
        ctx.warn("teacher_row_by_row", adapted["batch"])
    labelled = int((val.y >= 0).sum())
    spec = ctx.spec
    source = (f"validation_dataset_id {spec.validation_dataset_id}" if spec.validation_dataset_id else
              f"a {spec.validation_split:.0%} split of dataset {spec.dataset_id} (seed {spec.training.seed})")
    ctx.validation = {"rows": len(val), "labelled": labelled, "source": source}
    if teacher_row is not None and not spec.validation_dataset_id:
        ctx.validation["note"] = ("the teacher's scores are measured on rows of the uploaded dataset: if the teacher "
                                  "was trained on that data, its accuracy here is optimistic; name a "
                                  "validation_dataset_id of rows it never saw for a fair comparison")
    if len(val) < SMALL_VALIDATION:
        ctx.warn("small_validation", f"the validation split has {len(val)} rows ({labelled} labelled): the epoch and "
                 "learning rate chosen on it, and the scores on the card, are noisy; upload more rows or a "
                 "validation_dataset_id", {"validation_rows": len(val), "labelled": labelled})


# ---- the teacher --------------------------------------------------------------------------------


def load_teacher(ctx: RunContext, device: torch.device) -> tuple[TeacherRow, JailedTeacher]:
    with ctx.db.session() as s:
        row = s.query(TeacherRow).filter_by(id=ctx.spec.teacher_id).one_or_none()
    if row is None:
        raise JobFailed("not_found", f"teacher {ctx.spec.teacher_id} no longer exists")
    try:
        teacher = jailed(ctx, ctx.blobs.local_path(row.blob_key), row.format, row.input_shape, device)
    except ModelFileError as exc:
        raise JobFailed(exc.code, exc.message)
    return row, teacher


def jailed(ctx: RunContext, path: Path, fmt: str, input_shape, device: torch.device) -> JailedTeacher:
    """The teacher loaded in the jail, with this worker's threads; ended with the run."""
    jail = get_settings().teacher_jail(probe=False, threads=torch.get_num_threads(), scratch=ctx.blobs.scratch_dir)
    teacher = JailedTeacher(path, fmt, input_shape, str(device), jail=jail)
    ctx.teachers.append(teacher)
    return teacher


def refine_teacher(ctx: RunContext, prep: Prepared, device: torch.device) -> Prepared:
    """MCMI fine-tuning of a TorchScript teacher, in its jail; the refined teacher is stored as
    a new teacher and loaded (in a jail of its own) in place of the original."""
    row, teacher, train = prep.teacher_row, prep.teacher, prep.train
    if teacher.format != "torchscript":
        raise JobFailed("invalid_request", "only a TorchScript teacher can be refined")
    params = MCMIParams.model_validate(ctx.spec.teacher_refinement.params)
    labelled = train.y >= 0
    refined_id = new_id("tch")
    blob_key = f"teachers/{refined_id}/teacher.pt"
    with tempfile.TemporaryDirectory(dir=ctx.blobs.scratch_dir) as tmp:
        try:
            path = teacher.refine(train.x[labelled], train.y[labelled], params.model_dump(), ctx.spec.training.seed,
                                  Path(tmp) / "teacher.pt", lambda e: ctx.progress.on_refine_epoch(e, params.epochs),
                                  ctx.lease.should_stop)
        except JailError as exc:
            if exc.code == "cancelled":  # the run was asked to stop: say why, as the trainer does
                raise trainer.Stopped(ctx.lease.stop_reason or "cancelled")
            raise
        teacher.close()  # the refined teacher takes its place
        refined = jailed(ctx, path, "torchscript", row.input_shape, device)
        ctx.blobs.put_file(blob_key, path)
        refined_row = TeacherRow(
            id=refined_id, tenant=ctx.job.tenant, name=f"{row.name} (MCMI-refined, job {ctx.job.id})",
            format="torchscript", sha256=onnx_export.sha256_file(path), size_bytes=path.stat().st_size,
            input_shape=row.input_shape, input_dtype=row.input_dtype, num_classes=refined.num_classes,
            num_parameters=refined.num_parameters, outputs=row.outputs, blob_key=blob_key)
    with ctx.db.session() as s:
        s.add(refined_row)
    ctx.progress.event(f"refined teacher stored as {refined_id}", data={"refined_teacher_id": refined_id})
    prep.teacher_row, prep.teacher, prep.refined_teacher_id = refined_row, refined, refined_id
    return prep


def cache_teacher(ctx: RunContext, prep: Prepared) -> None:
    """The teacher's outputs (and features) on every training and validation sample, on the splits."""
    t0 = time.perf_counter()
    # kept in the blob store for text teachers (expensive to run) and for a search's trials (many
    # jobs on the same teacher, data and split): later jobs skip the teacher's forward pass
    keep = prep.text or ctx.job.search_id is not None
    cached = load_cached_outputs(ctx, prep.max_length) if keep else None
    for i, split in enumerate((prep.train, prep.val)):
        if cached is not None:
            split.teacher_logits, split.teacher_features = cached[i]
        else:
            run_teacher(ctx, prep, split)
    seconds = time.perf_counter() - t0
    if keep and cached is None:
        save_cached_outputs(ctx, prep.max_length, prep.train, prep.val)
    ctx.progress.event(f"teacher outputs {'reused' if cached else 'cached'} for "
                       f"{len(prep.train) + len(prep.val)} samples in {seconds:.2f} s",
                       data={"teacher_forward_seconds": round(seconds, 4), "reused": cached is not None})
    if prep.train.teacher_logits.shape[1] != prep.num_classes:
        raise JobFailed("teacher_output_mismatch", "the teacher's output width changed between calls")
    ctx.teacher_latency = time_teacher(prep)


def run_teacher(ctx: RunContext, prep: Prepared, split: Split) -> None:
    """The teacher's outputs (and the named feature) on every row of the split, set on it."""
    if prep.text:
        split.teacher_logits, split.teacher_features = text_teacher_outputs(
            prep.teacher, split.x, split.mask, split.types, ctx.spec.teacher_features)
    else:
        split.teacher_logits, split.teacher_features = teacher_outputs(prep.teacher, split.x, ctx.spec.teacher_features)


def test_split(ctx: RunContext, prep: Prepared) -> Split:
    """training's test_dataset_id as a split, with the teacher's outputs; labels given as class
    names numbered as the training data numbers them (a test set may meet fewer classes)."""
    test = whole(_prepare(ctx, ctx.spec.test_dataset_id, prep.teacher)[0])
    names = (dataset_row(ctx, ctx.spec.dataset_id).details or {}).get("class_names")
    test_names = (dataset_row(ctx, ctx.spec.test_dataset_id).details or {}).get("class_names")
    if test_names:
        unknown = unknown_classes(test_names, names)
        if unknown:
            raise JobFailed("invalid_request", f"the test set's classes {unknown[:10]} are not the training data's")
        test.y = torch.from_numpy(relabel(test.y.numpy(), test_names, names))
    if prep.teacher is not None:
        run_teacher(ctx, prep, test)
    return test


def time_teacher(prep: Prepared) -> dict:
    """The teacher's median latency at batch 1 and 64 (the first training rows; text: cut to the
    longest of them), in its own runtime (TorchScript or transformers in torch, ONNX in
    onnxruntime) inside its jail with the worker's threads, the pipe not counted: what the card's
    speed-up compares the student's onnxruntime latency with."""
    def first(n: int):
        train = prep.train
        idx = torch.arange(n) % len(train)  # a split under 64 rows repeats its rows
        if not prep.text:
            return train.x[idx]
        width = max(int(train.mask[idx].sum(1).max()), 1)
        return tuple(t[idx, :width] for t in (train.x, train.mask, train.types))

    timed = {f"latency_ms_batch{b}": round(prep.teacher.latency_ms(first(b)), 5) for b in (1, 64)}
    return {**timed, "runtime": "onnxruntime" if prep.teacher.format == "onnx" else "torch",
            "device": prep.teacher.device}


# ---- the data -----------------------------------------------------------------------------------


def dataset_row(ctx: RunContext, dataset_id: str) -> Dataset:
    with ctx.db.session() as s:
        row = s.query(Dataset).filter_by(id=dataset_id).one_or_none()
    if row is None:
        raise JobFailed("not_found", f"dataset {dataset_id} no longer exists")
    return row


def load_data(ctx: RunContext, teacher: JailedTeacher | None) -> tuple[Split, Split, int | None]:
    """The training and validation splits, and (text) the tokens per row they were cut to."""
    spec = ctx.spec
    data, max_length = _prepare(ctx, spec.dataset_id, teacher)
    if spec.validation_dataset_id:
        return whole(data), whole(_prepare(ctx, spec.validation_dataset_id, teacher)[0]), max_length
    try:
        return (*split_dataset(data, spec.validation_split, spec.training.seed), max_length)
    except ValueError as exc:
        raise JobFailed("invalid_request", str(exc))


def _prepare(ctx: RunContext, dataset_id: str, teacher: JailedTeacher | None):
    """Tabular data as it is; text tokenised with the teacher's tokenizer at the job's max_length."""
    data = load_canonical(ctx.blobs.local_path(dataset_row(ctx, dataset_id).blob_key))
    is_text = isinstance(data, TextParsed)
    if is_text != (teacher is not None and teacher.format == "hf"):
        raise JobFailed("invalid_request", "a text dataset needs a text teacher (format hf) and a text teacher "
                        "needs a text dataset (jsonl)")
    if not is_text:
        return data, None
    max_length = min(ctx.spec.text.max_length, teacher.max_positions)
    try:
        enc = textio.encode(teacher.tokenizer, data.texts, max_length, data.pairs)
    except textio.TokenizerError as exc:
        raise JobFailed("invalid_request", str(exc))
    return Tokens(enc.input_ids, enc.attention_mask, enc.token_type_ids, data.y), max_length


def teacher_cache_key(ctx: RunContext, max_length: int | None) -> str:
    """Jobs comparing students on the same data ask the teacher the same question: its outputs are
    kept in the blob store, keyed by everything that decides them (teacher, data, split,
    tokenisation, feature), so later jobs skip the teacher."""
    spec = ctx.spec
    ident = {"teacher": spec.teacher_id, "dataset": spec.dataset_id, "validation": spec.validation_dataset_id,
             "split": spec.validation_split, "seed": spec.training.seed, "max_length": max_length,
             "feature": spec.teacher_features, "version": 1}
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]
    return f"cache/teacher_outputs/{spec.teacher_id}/{digest}.pt"


def load_cached_outputs(ctx: RunContext, max_length: int | None):
    key = teacher_cache_key(ctx, max_length)
    if not ctx.blobs.exists(key):
        return None
    state = torch.load(io.BytesIO(ctx.blobs.get_bytes(key)), map_location="cpu", weights_only=True)
    return [(state[f"{n}_logits"], state.get(f"{n}_features")) for n in ("train", "val")]


def save_cached_outputs(ctx: RunContext, max_length: int | None, train: Split, val: Split) -> None:
    state = {}
    for n, split in (("train", train), ("val", val)):
        state[f"{n}_logits"] = split.teacher_logits
        if split.teacher_features is not None:
            state[f"{n}_features"] = split.teacher_features
    buf = io.BytesIO()
    torch.save(state, buf)
    ctx.blobs.put_bytes(teacher_cache_key(ctx, max_length), buf.getvalue())


def text_source(ctx: RunContext, teacher: JailedTeacher, train: Split, width: int) -> TextSource:
    """What a text student is built from; the teacher's weights only for architectures that copy
    them, a few hundred training texts to fit a narrow student's projection, and how often each
    token occurs in all of them (a factorised table's fit and its full rows)."""
    info = ARCHITECTURES.get(ctx.spec.student.architecture)
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
