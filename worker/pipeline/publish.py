"""The exporting, verifying, quantizing and publishing stages: one path for every student, its
inputs described by an InputSpec (models/input_spec.py). The student is exported to ONNX, gated
on parity with PyTorch, measured, its requested int8/fp16 variants built and gated, and what
passed is stored with a ModelCard (service/model_card.py). Publishing is keyed by job id, so a
rerun never publishes a second model."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from sqlalchemy.exc import IntegrityError

from kdserve.models import export as onnx_export
from kdserve.models.input_spec import EMBEDDING_OUTPUT, LOGITS, InputSpec, tensor_input, text_input
from kdserve.models.zoo import count_parameters
from kdserve.service.model_card import ModelCard, StoredArtifact, StoredBundle, TextInfo
from kdserve.service.serving.textio import ATTENTION_MASK, INPUT_IDS
from kdserve.service.store.blobs import BlobStore
from kdserve.service.store.db import Model, new_id
from kdserve.worker.pipeline.common import JobFailed
from kdserve.worker.pipeline.inputs import Prepared, dataset_row
from kdserve.worker.pipeline.progress import RunContext

# The job metrics a card carries (those the student's kind has).
CARD_METRICS = ("teacher_accuracy", "student_accuracy", "agreement", "mean_cosine", "neighbour_overlap_at_10")

File = tuple[str, Path, dict]  # precision, the ONNX file, its card artifact fields


@dataclass
class ExportInputs:
    """The student's input spec and what its ONNX files are checked on."""

    spec: InputSpec
    val: dict[str, np.ndarray]  # validation inputs, by input name
    labels: np.ndarray | None
    calib_x: np.ndarray | None  # training samples for static int8 calibration (tensor inputs)
    reference: np.ndarray  # the PyTorch student's outputs on `val`


def export_inputs(prep: Prepared, model: torch.nn.Module, student_logits: torch.Tensor) -> ExportInputs:
    reference = student_logits.numpy()
    if not prep.text:
        spec = tensor_input(prep.input_shape, prep.num_classes)
        return ExportInputs(spec, spec.as_inputs(prep.val.x.numpy()), prep.val.y.numpy(), prep.train.x.numpy(),
                            reference)
    from kdserve.models.text import Embeddings

    teacher, val = prep.teacher, prep.val
    positions = next(m for m in model.modules() if isinstance(m, Embeddings)).position.num_embeddings
    spec = text_input(output=EMBEDDING_OUTPUT if prep.embedding else LOGITS, width=int(reference.shape[1]),
                      task=teacher.task, vocab_size=teacher.vocab_size, max_positions=positions,
                      sequence_length=max(int(val.mask.sum(1).float().median()), 2))
    return ExportInputs(spec, {INPUT_IDS: val.x.numpy(), ATTENTION_MASK: val.mask.numpy()},
                        None if prep.embedding else val.y.numpy(), None, reference)


def export_and_publish(ctx: RunContext, prep: Prepared, model: torch.nn.Module, student_logits: torch.Tensor,
                       metrics: dict) -> str:
    """Export, gate fp32 on parity, build and gate the requested int8/fp16 variants (each measured
    on the validation set, latency at batch 1 and 64), publish what passed; the model's id."""
    inputs = export_inputs(prep, model, student_logits)
    with tempfile.TemporaryDirectory(dir=ctx.blobs.scratch_dir) as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        with ctx.progress.stage("exporting"):
            try:
                onnx_export.export_student(model, inputs.spec, onnx_path, ctx.spec.export.opset)
            except Exception as exc:
                raise JobFailed("export_failed", f"ONNX export failed: {type(exc).__name__}: {exc}")
            inputs = drop_in_names(prep, inputs, onnx_path)
        with ctx.progress.stage("verifying"):
            fp32 = verify(ctx, inputs, onnx_path)
        files = [("fp32", onnx_path, fp32.artifact())]
        if ctx.spec.export.quantize:
            with ctx.progress.stage("quantizing"):
                files += quantize(ctx, inputs, onnx_path, fp32.accuracy)
        with ctx.progress.stage("publishing"):
            return publish(ctx, prep, model, metrics, inputs.spec, files, Path(tmp))


def drop_in_names(prep: Prepared, inputs: ExportInputs, onnx_path: Path) -> ExportInputs:
    """An ONNX teacher's input and logits names on the student's graph: a client written for the
    teacher sends the same tensors to the student."""
    row = prep.teacher_row
    if prep.text or row is None or row.format != "onnx":
        return inputs
    teacher_in = (row.details or {}).get("input_name")
    teacher_out = next((o["name"] for o in row.outputs or [] if o.get("logits")), None)
    if not teacher_in or not teacher_out or teacher_in == teacher_out:
        return inputs
    spec = inputs.spec
    onnx_export.rename_io(onnx_path, {spec.names[0]: teacher_in, spec.output: teacher_out})
    renamed = replace(spec, inputs=(spec.inputs[0].model_copy(update={"name": teacher_in}),), output=teacher_out)
    return replace(inputs, spec=renamed, val={teacher_in: inputs.val[spec.names[0]]})


def _variant_args(ctx: RunContext, inputs: ExportInputs, out_dir: Path) -> dict:
    return dict(spec=inputs.spec, calib_x=inputs.calib_x, val_x=inputs.val, val_y=inputs.labels,
                reference_logits=inputs.reference, max_accuracy_drop=ctx.spec.export.max_accuracy_drop,
                kind=ctx.spec.student.architecture, out_dir=out_dir)


def verify(ctx: RunContext, inputs: ExportInputs, onnx_path: Path) -> onnx_export.VariantResult:
    """The fp32 file runs in onnxruntime within export.parity_tolerance of PyTorch; measured."""
    try:
        parity = onnx_export.check_parity(onnx_path, inputs.reference, inputs.val, inputs.spec)
    except Exception as exc:  # the exported file does not load or run in onnxruntime
        raise JobFailed("export_failed", f"onnxruntime cannot run the exported model (opset "
                        f"{ctx.spec.export.opset}): {type(exc).__name__}: {str(exc)[:300]}")
    # the event's name for the agreement, as each kind has always reported it
    agreement = "argmax_agreement" if inputs.spec.kind == "tensor" else "agreement"
    parity_gate(ctx, {"max_abs_diff": parity.max_abs_diff, "max_rel_diff": parity.max_rel_diff,
                      agreement: parity.agreement})
    fp32 = onnx_export.build_variants(onnx_path, ["fp32"], fp32_accuracy=None,
                                      **_variant_args(ctx, inputs, onnx_path.parent))[0]
    if fp32.path is None:  # measuring failed after parity passed: report it, as a failed export
        raise JobFailed("export_failed", fp32.reason)
    return fp32


def parity_gate(ctx: RunContext, data: dict) -> None:
    """The fp32 gate, the same for every student: publish only within export.parity_tolerance."""
    tolerance = ctx.spec.export.parity_tolerance
    data = {**data, "tolerance": tolerance}
    if not data["max_abs_diff"] <= tolerance:
        ctx.progress.event("ONNX parity check failed", level="error", data=data)
        raise JobFailed("parity_failed", f"onnxruntime and PyTorch differ by up to {data['max_abs_diff']:.3g} on "
                        f"the validation set (tolerance {tolerance:g}); nothing published")
    ctx.progress.event(f"ONNX parity ok: max abs diff {data['max_abs_diff']:.3g}", data=data)


def quantize(ctx: RunContext, inputs: ExportInputs, onnx_path: Path, fp32_accuracy: float | None) -> list[File]:
    """The requested variants, each with an event saying whether it is published and why."""
    files = []
    for v in onnx_export.build_variants(onnx_path, list(ctx.spec.export.quantize), fp32_accuracy=fp32_accuracy,
                                        **_variant_args(ctx, inputs, onnx_path.parent)):
        data = {"precision": v.precision, "published": v.published,
                "accuracy_delta": onnx_export.finite_or_none(v.accuracy_delta), "latency_ms_batch1": v.latency_ms_batch1}
        if v.published:
            ctx.progress.event(v.reason, data=data)
        else:
            ctx.warn("variant_withheld", f"{v.precision} not published: {v.reason}", data)
        if v.published:
            files.append((v.precision, v.path, v.artifact()))
    return files


# ---- publishing ---------------------------------------------------------------------------------


def publish(ctx: RunContext, prep: Prepared, model: torch.nn.Module, metrics: dict, spec: InputSpec,
            files: list[File], tmp: Path) -> str:
    existing = _published(ctx)
    if existing is not None:  # a redelivered job that already published: keep the first model
        return existing
    single_file_artifacts(files)
    model_id = new_id("mdl")
    prefix = f"models/{model_id}"
    text = _text_info(ctx, prep, spec) if prep.text else None
    tokenizer = onnx_export.tokenizer_bundle(prep.teacher.tokenizer_json, prep.teacher.tokenizer_files,
                                             text) if text else None
    for name, content in (tokenizer or {}).items():
        ctx.blobs.put_bytes(f"{prefix}/tokenizer/{name}", content)
    artifacts, bundles = [], []
    for precision, path, artifact in files:
        artifacts.append(StoredArtifact(**artifact, blob_key=f"{prefix}/model.{precision}.onnx"))
        ctx.blobs.put_file(artifacts[-1].blob_key, path)
        if tokenizer is not None:  # per precision, a zip of the .onnx file with the tokenizer files
            bundles.append(_bundle(ctx.blobs, prefix, precision, path, tokenizer, tmp))
    verify_stored(ctx.blobs, prefix, [a.blob_key for a in artifacts])
    extra = {} if text is None else {"inputs": list(spec.inputs), "bundles": bundles,
                                     "text": TextInfo(**text, tokenizer_files=sorted(tokenizer))}
    card = build_card(ctx, prep, model, metrics, spec, artifacts, **extra)
    name = ctx.spec.metadata.get("name") or f"{ctx.spec.student.architecture}-{ctx.spec.method.name}-{ctx.job.id[-6:]}"
    try:
        with ctx.db.session() as s:
            s.add(Model(id=model_id, tenant=ctx.job.tenant, name=name, job_id=ctx.job.id, card=card.to_json()))
    except IntegrityError:  # another delivery of this job published first: keep that one
        ctx.blobs.delete_prefix(prefix)
        return _published(ctx)
    return model_id


def _published(ctx: RunContext) -> str | None:
    with ctx.db.session() as s:
        existing = s.query(Model).filter_by(job_id=ctx.job.id).one_or_none()
        return existing.id if existing is not None else None


def build_card(ctx: RunContext, prep: Prepared, model: torch.nn.Module, metrics: dict, spec: InputSpec,
               artifacts: list[StoredArtifact], **extra) -> ModelCard:
    """The card of this student; `extra`: the fields only some kinds have (text: inputs, bundles, text)."""
    n_params = count_parameters(model)
    t_params = prep.teacher_row.num_parameters if prep.teacher_row else None
    return ModelCard(
        teacher_id=ctx.spec.teacher_id, dataset_id=ctx.spec.dataset_id, method=ctx.spec.method.model_dump(),
        student=ctx.spec.student.model_dump(), num_parameters=n_params, teacher_num_parameters=t_params,
        refined_teacher_id=prep.refined_teacher_id,
        compression_ratio=round(t_params / n_params, 3) if t_params else None,
        metrics={k: metrics[k] for k in CARD_METRICS if k in metrics}, training=ctx.training,
        baseline=ctx.baseline, input_scaling=ctx.input_scaling, warnings=list(ctx.warnings) or None,
        versions=onnx_export.versions(), validation=ctx.validation, test=ctx.test, teacher_latency=ctx.teacher_latency, speedup=speedup(ctx.teacher_latency, artifacts),
        class_names=(dataset_row(ctx, ctx.spec.dataset_id).details or {}).get("class_names"),
        input=spec.inputs[0], output=spec.output_spec(), artifacts=artifacts, **extra)


def speedup(teacher: dict | None, artifacts: list[StoredArtifact]) -> dict[str, float] | None:
    fp32 = next((a for a in artifacts if a.precision == "fp32"), None)
    if not teacher or fp32 is None:
        return None
    pairs = {f"batch{b}": (teacher.get(f"latency_ms_batch{b}"), getattr(fp32, f"latency_ms_batch{b}")) for b in (1, 64)}
    return {k: round(t / s, 2) for k, (t, s) in pairs.items() if t and s} or None


def _text_info(ctx: RunContext, prep: Prepared, spec: InputSpec) -> dict:
    """What a client needs to feed a text student (kdserve_text.json, the card's `text`)."""
    teacher = prep.teacher
    details = dataset_row(ctx, ctx.spec.dataset_id).details or {}
    return {"task": teacher.task, "max_length": prep.max_length, "inputs": spec.names, "output": spec.output,
            "normalized": bool(prep.embedding and teacher.normalize),
            "pooling": teacher.pooling if prep.embedding else "cls",
            "text_pairs": bool(details.get("text_pairs")), "vocab_size": teacher.vocab_size}


def _bundle(blobs: BlobStore, prefix: str, precision: str, path: Path, tokenizer: dict[str, bytes],
            tmp: Path) -> StoredBundle:
    zip_path = tmp / f"model.{precision}.zip"
    onnx_export.write_zip(zip_path, path, tokenizer)
    bundle = StoredBundle(format="zip", precision=precision, blob_key=f"{prefix}/model.{precision}.zip",
                          size_bytes=zip_path.stat().st_size, sha256=onnx_export.sha256_file(zip_path))
    blobs.put_file(bundle.blob_key, zip_path)
    return bundle


def single_file_artifacts(files: list[File]) -> None:
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
