"""The rules of a job spec that need more than one params class: params validated and completed with
defaults, and the agreement of a job's method, student, data and teacher (text or numeric, the
tokenizer, the head). The API runs them at POST time on what it stored at upload; the worker's
builders run the architecture checks again on the loaded files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import to_jsonable_python

from kdserve.service.spec.architectures import (TEXT_ARCHITECTURES_HINT, ArchSpec, StudentInput, TextTeacher)
from kdserve.service.spec.errors import SpecError
from kdserve.service.spec.methods import MethodSpec
from kdserve.service.vocab import TEXT_DATASET_FORMATS


def _non_finite(value, path: str) -> str | None:
    """The path of the first NaN or infinite number in a JSON value (JSON itself has none, but
    Python's parser accepts NaN and Infinity)."""
    if isinstance(value, float) and not math.isfinite(value):
        return path
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    return next((p for k, v in items if (p := _non_finite(v, f"{path}.{k}"))), None)


def defaults(model: type[BaseModel]) -> dict[str, Any]:
    """Every optional field's default, as JSON values."""
    return {name: to_jsonable_python(f.get_default(call_default_factory=True))
            for name, f in model.model_fields.items() if not f.is_required()}


def validate_params(model: type[BaseModel], params: dict[str, Any], prefix: str) -> dict[str, Any]:
    """Validate `params` (JSON values) against a params class, with JSON's types (strict: no "4"
    for 4). Returns the params completed with the defaults, as given otherwise (what the job
    stores). Raises SpecError whose param is `prefix.<field>`."""
    bad = _non_finite(params, prefix)
    if bad:
        raise SpecError(f"{bad} must be a finite number", bad)
    known = list(model.model_fields)
    extra = sorted(set(params) - set(known))
    if extra:
        raise SpecError(f"unknown parameter(s) {extra}; known: {sorted(known)}", f"{prefix}.{extra[0]}")
    try:
        model.model_validate(params, strict=True)
    except ValidationError as exc:
        err = min(exc.errors(), key=lambda e: [str(p) for p in e["loc"]])
        where = ".".join(str(p) for p in err["loc"])
        raise SpecError(f"{where or 'params'}: {err['msg']}", f"{prefix}.{where}" if where else prefix) from None
    return {**defaults(model), **params}


# `epochs: "auto"`: a budget of optimizer steps, whatever the dataset's size (small datasets get
# more passes, large ones fewer), within EPOCHS_RANGE.
AUTO_STEPS = 3000
AUTO_EPOCHS_RANGE = (10, 200)


def auto_epochs(train_rows: int, batch_size: int) -> int:
    """The epochs of `epochs: "auto"` for this many training rows."""
    steps_per_epoch = max(1, math.ceil(train_rows / batch_size))
    return min(AUTO_EPOCHS_RANGE[1], max(AUTO_EPOCHS_RANGE[0], math.ceil(AUTO_STEPS / steps_per_epoch)))


@dataclass(frozen=True)
class DataFacts:
    """A dataset as the rules see it."""

    id: str
    format: str
    feature_shape: list[int] | None = None

    @property
    def text(self) -> bool:
        return self.format in TEXT_DATASET_FORMATS


@dataclass(frozen=True)
class TeacherFacts:
    """A teacher as the rules see it: its format, and for a text teacher (format hf) its stored details."""

    id: str
    format: str
    details: dict[str, Any] | None = None

    @property
    def text(self) -> bool:
        return self.format == "hf"


def student_input(data: DataFacts, teacher: TeacherFacts | None, max_length: int) -> StudentInput:
    if data.text and teacher is not None and teacher.text:
        return StudentInput(text=TextTeacher.from_details(teacher.details or {}), max_length=max_length)
    return StudentInput(input_shape=list(data.feature_shape or []))


def check_pairing(method: MethodSpec, arch: ArchSpec, data: DataFacts, val: DataFacts | None,
                  teacher: TeacherFacts | None, max_length: int) -> None:
    """Text jobs: the dataset, teacher, student and method must agree on text, on the tokenizer and
    on the head. A text dataset is tokenised with the teacher's tokenizer at job start, and the
    student shares that vocabulary: a mismatch here would otherwise surface as an index error
    deep in training (the most common failure of distillation between transformers)."""
    if val is not None and val.text != data.text:
        raise SpecError(f"validation dataset {val.id} and dataset {data.id} must both be text or both numeric",
                        "validation_dataset_id")
    if not data.text:
        if teacher is not None and teacher.text:
            raise SpecError(f"teacher {teacher.id} is a text model (format hf); its dataset must be text (jsonl), and "
                            f"dataset {data.id} is {data.format}", "dataset_id")
        if arch.inputs == "text":
            raise SpecError(f"{arch.name!r} is a text student and dataset {data.id} is numeric ({data.format}); use mlp, "
                            "cnn or patch_transformer", "student.architecture")
        return
    if teacher is None:
        raise SpecError(f"dataset {data.id} is text: it is tokenised with the teacher's tokenizer, so set teacher_id to "
                        "a text teacher (format hf)", "teacher_id")
    if not teacher.text:
        raise SpecError(f"dataset {data.id} is text but teacher {teacher.id} ({teacher.format}) has no tokenizer; use a "
                        "Hugging Face teacher (format hf) whose tokenizer the student will share", "teacher_id")
    if arch.inputs != "text":
        raise SpecError(f"student architecture {arch.name!r} takes numeric features; for text use "
                        f"{TEXT_ARCHITECTURES_HINT}", "student.architecture")
    check_text_teacher(method, TextTeacher.from_details(teacher.details or {}), teacher.id, max_length)


def check_text_teacher(method: MethodSpec, t: TextTeacher, teacher_id: str, max_length: int) -> None:
    """The method and the tokens per text against a text teacher."""
    if max_length > t.max_positions:
        raise SpecError(f"text.max_length {max_length} is more than the teacher's {t.max_positions} positions",
                        "text.max_length")
    if method.compares == "logits" and t.task == "embedding":
        raise SpecError(f"method {method.name!r} compares class logits through a softmax, and teacher {teacher_id} is "
                        "a sentence-embedding model (no classes); use embedding_cosine, embedding_mse or "
                        "embedding_relational", "method.name")
    if method.needs_labels and t.task == "embedding":
        raise SpecError(f"method {method.name!r} trains on class labels; an embedding student has no class head",
                        "method.name")


def check_student(arch: ArchSpec, params: dict[str, Any], inp: StudentInput) -> None:
    """The architecture's own rules (kdserve.service.spec.architectures) on validated params."""
    arch.check(arch.params.model_validate(params), inp)
