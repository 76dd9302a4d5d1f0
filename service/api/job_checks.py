"""A job request's pre-flight, shared by POST /v1/jobs and POST /v1/searches (whose trials are
jobs): the spec normalised and its student and method picked where left out, then checked against
the teacher and data stored at upload, before anything is queued."""

from __future__ import annotations

import re

from sqlalchemy import select

from kdserve.service import auto, budgets
from kdserve.service.api.deps import Context, get_owned
from kdserve.service.auth import Principal
from kdserve.service.errors import ApiError
from kdserve.service.schemas import JobCreate, StudentAuto, StudentSpec
from kdserve.service.settings import Settings
from kdserve.service.spec import architectures as spec_archs
from kdserve.service.spec import methods as spec_methods
from kdserve.service.spec.errors import SpecError
from kdserve.service.spec.jobs import (DataFacts, TeacherFacts, auto_epochs, check_pairing, check_student,
                                       student_input, validate_params)
from kdserve.service.store.blobs import epoch_weights_key
from kdserve.service.store.datasets import unknown_classes
from kdserve.service.store.db import Dataset, Job, Teacher
from kdserve.service.vocab import TEXT_DATASET_FORMATS

def refused(exc: SpecError) -> ApiError:
    """A job-spec rule's refusal (kdserve.service.spec) as the API's 422."""
    return ApiError(422, "invalid_request", exc.message, exc.param)


def normalize(body: JobCreate) -> None:
    """The part of pre-flight that needs only the spec: known method and architecture, their params
    validated (kdserve.service.spec, the classes the worker validates them with again) and
    completed with defaults. The request's digest (Idempotency-Key) is taken after it and before
    anything is looked up, so a replay is recognised even when the job's teacher or dataset has
    been deleted since. A student or method left out is picked later (resolve_auto), from the
    teacher and the data."""
    body.student.reason = body.method.reason = body.method.candidates = None  # the service's to set
    if body.student.architecture is None and body.student.params:
        raise ApiError(422, "invalid_request", "student.params needs student.architecture (or leave both out and the "
                       "service picks the student)", "student.params")
    if body.student.architecture is not None and body.student.auto is not None:
        raise ApiError(422, "invalid_request", "give student.architecture or student.auto, not both", "student.auto")
    if body.method.name is None and body.method.params:
        raise ApiError(422, "invalid_request", "method.params needs method.name (or leave both out and the service "
                       "picks the method)", "method.params")
    try:
        if body.method.name is not None:
            body.method.params = validate_params(method_of(body).params, body.method.params, "method.params")
        if body.student.architecture is not None:
            body.student.params = validate_params(arch_of(body).params, body.student.params, "student.params")
        if body.teacher_refinement:
            refinement = spec_methods.REFINEMENTS[body.teacher_refinement.method]
            body.teacher_refinement.params = validate_params(refinement.params, body.teacher_refinement.params,
                                                             "teacher_refinement.params")
    except SpecError as exc:
        raise refused(exc)
    check_metadata(body.metadata)


def _known(catalog: dict, name: str | None, what: str, param: str):
    """The catalog entry of a method or architecture name, or the 422 that lists the known ones."""
    entry = catalog.get(name)
    if entry is None:
        raise ApiError(422, "invalid_request", f"unknown {what} {name!r}; choose one of {list(catalog)}", param)
    return entry


def stored_spec(body: JobCreate) -> dict:
    """The spec as the job stores and shows it: `student.auto`/`reason` and `method.reason`/
    `candidates` only where the service picked them (a student and method named by the request look
    as sent)."""
    spec = body.model_dump(mode="json")
    for part in ("student", "method"):
        spec[part] = {k: v for k, v in spec[part].items() if v is not None or k not in ("auto", "reason", "candidates")}
    return spec


def method_of(body: JobCreate) -> spec_methods.MethodSpec:
    return _known(spec_methods.METHODS, body.method.name, "method", "method.name")


def arch_of(body: JobCreate) -> spec_archs.ArchSpec:
    return _known(spec_archs.ARCHITECTURES, body.student.architecture, "architecture", "student.architecture")


def resolve_auto(s, body: JobCreate, who: Principal, spec: dict) -> list[str]:
    """Pick the student and the method a job left out (kdserve.service.auto), into `body` and the
    stored `spec`; what was picked and why, for the queued event."""
    if body.student.architecture is not None and body.method.name is not None:
        return []
    dataset = get_owned(s, Dataset, body.dataset_id, who, "dataset", "dataset_id")
    teacher = get_owned(s, Teacher, body.teacher_id, who, "teacher", "teacher_id") if body.teacher_id else None
    details = (teacher.details or {}) if teacher is not None else {}
    embedding_teacher = details.get("task") == "embedding"
    said = []
    if body.method.name is None:
        text_teacher = teacher is not None and teacher.format == "hf"
        body.method.name, body.method.reason, body.method.candidates = auto.pick_method(
            teacher is not None, embedding_teacher, text_teacher)
        body.method.params = validate_params(method_of(body).params, {}, "method.params")
        said.append(f"method {body.method.reason}")
    if body.student.architecture is None:
        wish = body.student.auto or StudentAuto()
        budget, why = auto.budget_of(wish.max_params, wish.ratio, teacher.num_parameters if teacher else None)
        shape, width, text = student_input_facts(teacher, dataset)
        try:
            soft = wish.max_params is None and wish.ratio is None and teacher is not None
            picked = auto.pick_student(shape, width, budget, why, text, soft_budget=soft)
        except auto.AutoError as exc:
            raise ApiError(422, "invalid_request", exc.message, exc.param)
        body.student = StudentSpec(architecture=picked.architecture, params=picked.params,
                                   auto=StudentAuto(max_params=picked.max_params, ratio=wish.ratio),
                                   reason=picked.reason)
        said.append(f"student {picked.reason}")
    resolved = stored_spec(body)
    spec["student"], spec["method"] = resolved["student"], resolved["method"]
    return said


def student_input_facts(teacher: Teacher | None, dataset: Dataset) -> tuple[list[int], int, spec_archs.TextTeacher | None]:
    """What picking a student needs (auto.pick_student): the input's shape, the output width (the
    teacher's classes or embedding size), and a text teacher's facts."""
    details = (teacher.details or {}) if teacher is not None else {}
    text = spec_archs.TextTeacher.from_details(details) if dataset.format in TEXT_DATASET_FORMATS and \
        teacher is not None and teacher.format == "hf" else None
    width = int(details.get("hidden_size") or 0) if details.get("task") == "embedding" else \
        (teacher.num_classes if teacher is not None else (dataset.num_classes or 2))
    return list(dataset.feature_shape or []), width, text


def check_test_set(dataset: Dataset, test: Dataset) -> None:
    """A test set has the training rows' shape and kind, and no class the training data lacks."""
    if test.feature_shape != dataset.feature_shape or (test.format in TEXT_DATASET_FORMATS) != (
            dataset.format in TEXT_DATASET_FORMATS):
        raise ApiError(422, "invalid_request", f"test rows are {test.format} of shape {test.feature_shape}, training "
                       f"rows {dataset.format} of shape {dataset.feature_shape}", "test_dataset_id")
    names = (dataset.details or {}).get("class_names")
    unknown = unknown_classes((test.details or {}).get("class_names"), names)
    if unknown:
        raise ApiError(422, "invalid_request", f"the test set's classes {unknown[:10]} are not among the training "
                       f"data's {names or 'class ids'}", "test_dataset_id")


def preflight(ctx: Context, body: JobCreate, who: Principal, s) -> None:
    """Everything a job needs, checked against its teacher and data before it is queued (after
    normalize())."""
    method, arch = method_of(body), arch_of(body)
    dataset = get_owned(s, Dataset, body.dataset_id, who, "dataset", "dataset_id")
    val = get_owned(s, Dataset, body.validation_dataset_id, who, "dataset", "validation_dataset_id") \
        if body.validation_dataset_id else None
    if val is not None and val.feature_shape != dataset.feature_shape:
        raise ApiError(422, "invalid_request", f"validation rows have shape {val.feature_shape}, training rows "
                       f"{dataset.feature_shape}", "validation_dataset_id")
    if body.test_dataset_id:
        check_test_set(dataset, get_owned(s, Dataset, body.test_dataset_id, who, "dataset", "test_dataset_id"))
    if method.needs_labels and not dataset.labeled:
        raise ApiError(422, "invalid_request", f"method {method.name!r} needs labels and dataset {dataset.id} has none",
                       "dataset_id")
    if (method.needs_teacher or body.teacher_refinement) and not body.teacher_id:
        raise ApiError(422, "invalid_request", f"method {method.name!r} needs a teacher: set teacher_id", "teacher_id")
    if not body.teacher_id and not dataset.labeled:
        raise ApiError(422, "invalid_request", "without a teacher the dataset must be labelled", "dataset_id")
    if "teacher_features" in method.requires and not body.teacher_features:
        raise ApiError(422, "invalid_request", f"method {method.name!r} needs teacher features: set teacher_features "
                       "to the name of one of the teacher's outputs", "teacher_features")
    if body.baseline and not dataset.labeled:
        raise ApiError(422, "invalid_request", f"baseline: true trains with labels (ce) and dataset {dataset.id} has "
                       "none", "baseline")
    if body.teacher_refinement:
        if not dataset.labeled:
            raise ApiError(422, "invalid_request", "teacher refinement needs a labelled dataset", "dataset_id")
    teacher = get_owned(s, Teacher, body.teacher_id, who, "teacher", "teacher_id") if body.teacher_id else None
    check_spec(body, method, arch, dataset, val, teacher)
    if teacher is not None:
        names = [o["name"] for o in teacher.outputs or []]
        if body.teacher_features and body.teacher_features not in names:
            raise ApiError(422, "invalid_request", f"the teacher has no output {body.teacher_features!r}; its outputs "
                           f"are {names}", "teacher_features")
        if body.teacher_refinement and teacher.format != "torchscript":
            raise ApiError(422, "invalid_request", "only a TorchScript teacher can be refined (an ONNX teacher is "
                           "a black box)", "teacher_refinement")
        if teacher.format != "hf" and teacher.input_shape != dataset.feature_shape:
            raise ApiError(422, "invalid_request", f"dataset rows have shape {dataset.feature_shape} but the teacher "
                           f"expects input of shape {teacher.input_shape}", "dataset_id")
        embedding_teacher = (teacher.details or {}).get("task") == "embedding"
        if body.baseline and embedding_teacher:
            raise ApiError(422, "invalid_request", "baseline: true compares class accuracy, and an embedding "
                           "teacher's student has no classes", "baseline")
        for ds in filter(None, (dataset, val)):
            if not embedding_teacher and ds.num_classes is not None and ds.num_classes > teacher.num_classes:
                raise ApiError(422, "label_out_of_range", f"dataset {ds.id} has label {ds.num_classes - 1} but the "
                               f"teacher has only {teacher.num_classes} classes", "dataset_id")
    check_budget(ctx.settings, body, dataset, val, teacher)
    if body.from_checkpoint is not None:
        check_from_checkpoint(ctx, s, body, who)


def check_from_checkpoint(ctx: Context, s, body: JobCreate, who: Principal) -> None:
    """Kept weights fit only the student and method that trained them."""
    ref = body.from_checkpoint
    source = get_owned(s, Job, ref.job_id, who, "job", "from_checkpoint.job_id")
    for part, keys in (("student", ("architecture", "params")), ("method", ("name", "params"))):
        given = getattr(body, part).model_dump(mode="json")
        if any(source.spec[part].get(k) != given[k] for k in keys):
            raise ApiError(422, "invalid_request", f"from_checkpoint: job {source.id} trained another {part} "
                           f"({source.spec[part]})", part)
    if not ctx.blobs.exists(epoch_weights_key(source.id, ref.epoch)):
        raise ApiError(404, "not_found", f"job {source.id} kept no weights for epoch {ref.epoch} (GET "
                       f"/v1/jobs/{source.id}/checkpoints lists those it kept)", "from_checkpoint.epoch")


METADATA_KEY = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
METADATA_VALUE_MAX = 1024
# metadata.name names the published model: it is a path segment of /v2/models/{name} and the
# file name in the download's Content-Disposition header, so it keeps to a URL- and header-safe set
# (and to the models table's column).
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def check_metadata(metadata: dict[str, str]) -> None:
    """Free text kept with the job and shown back: keys are short identifiers, values printable
    text of bounded length (no control or invisible formatting characters), `name` a model name."""
    for key, value in metadata.items():
        if not METADATA_KEY.match(key):
            raise ApiError(422, "invalid_request", f"metadata key {key[:64]!r} must be 1-64 letters, digits, '_', '.' "
                           "or '-'", "metadata")
        if len(value) > METADATA_VALUE_MAX or not value.isprintable():
            raise ApiError(422, "invalid_request", f"metadata.{key} must be at most {METADATA_VALUE_MAX} printable "
                           "characters (no control characters)", f"metadata.{key}")
    name = metadata.get("name")
    if name is not None and not MODEL_NAME.match(name):
        raise ApiError(422, "invalid_request", "metadata.name names the model: 1-128 letters, digits, '_', '.' or "
                       "'-', starting with a letter or digit", "metadata.name")


def check_budget(settings: Settings, body: JobCreate, dataset: Dataset, val: Dataset | None,
                 teacher: Teacher | None) -> None:
    """The job's estimated size (service/budgets.py) against the workers' budget: classes,
    parameters (and the single-file ONNX limit the export must fit in), memory."""
    width = teacher.num_classes if teacher is not None else (dataset.num_classes or 0)
    if width > settings.job_max_classes:
        raise ApiError(422, "invalid_request", f"the student would have {width} outputs; the limit is "
                       f"{settings.job_max_classes} (KDSERVE_JOB_MAX_CLASSES)", "teacher_id" if teacher else "dataset_id")
    text = dataset.format in TEXT_DATASET_FORMATS
    shapes = budgets.Shapes(
        input_shape=dataset.feature_shape, width=width, rows=dataset.num_rows + (val.num_rows if val else 0),
        batch_size=body.training.batch_size, max_length=body.text.max_length if text else 0,
        teacher_parameters=teacher.num_parameters if teacher else 0, teacher_details=(teacher.details or {}) if teacher else {})
    est = budgets.estimate(body.student.architecture, body.student.params, shapes)
    if est is None:
        return
    onnx_file = f"the weights one ONNX file can hold: {budgets.ONNX_SINGLE_FILE_BYTES / 1024**3:.1f} GiB of float32"
    for limit, why in ((settings.job_max_parameters, "KDSERVE_JOB_MAX_PARAMETERS"),
                       (budgets.ONNX_SINGLE_FILE_BYTES // budgets.FLOAT, onnx_file)):
        if est.parameters > limit:
            raise ApiError(422, "invalid_request", f"the student would have about {est.parameters:,} parameters; the "
                           f"limit is {limit:,} ({why})", "student.params")
    if est.memory_bytes > settings.job_max_memory_bytes:
        part = max(est.memory, key=est.memory.get)
        parts = ", ".join(f"{k.replace('_', ' ')} {v / 1024**3:.2f}" for k, v in est.memory.items())
        raise ApiError(422, "invalid_request", f"the job would need about {est.memory_bytes / 1024**3:.1f} GiB of worker "
                       f"memory ({parts} GiB); the limit is {settings.job_max_memory_bytes / 1024**3:.1f} GiB "
                       f"(KDSERVE_JOB_MAX_MEMORY_BYTES): lower {budgets.PARAM_OF_PART[part]}",
                       budgets.PARAM_OF_PART[part])


def check_spec(body: JobCreate, method: spec_methods.MethodSpec, arch: spec_archs.ArchSpec, dataset: Dataset,
               val: Dataset | None, teacher: Teacher | None) -> None:
    """The spec's rules (kdserve.service.spec.jobs) on what was stored at upload: text or numeric
    agreement, the tokenizer and head of a text teacher, and the student's own rules for this
    input, the same the worker's builders run again."""
    data = DataFacts(dataset.id, dataset.format, dataset.feature_shape)
    val_data = DataFacts(val.id, val.format, val.feature_shape) if val is not None else None
    facts = TeacherFacts(teacher.id, teacher.format, teacher.details) if teacher is not None else None
    try:
        check_pairing(method, arch, data, val_data, facts, body.text.max_length)
        check_student(arch, body.student.params, student_input(data, facts, body.text.max_length))
    except SpecError as exc:
        raise refused(exc)


def resolve_epochs(s, body: JobCreate) -> int:
    """`epochs: "auto"` for this job's training rows (the dataset less its validation split)."""
    rows = s.scalar(select(Dataset.num_rows).where(Dataset.id == body.dataset_id))
    if not body.validation_dataset_id:
        rows -= min(max(1, round(rows * body.validation_split)), rows - 1)
    return auto_epochs(rows, body.training.batch_size)
