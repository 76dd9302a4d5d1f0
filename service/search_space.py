"""A search's space and its trials' job specs (torch-free: the API checks every student × method of
the space at POST time with the same specs the worker's trials run).

A trial is the optimizer's choice — a method, a student (an index into `space.students`), a peak
learning rate and, for methods that have one, a temperature — made into an ordinary job spec:
the search's teacher, data and split, the trial's seed, every precision of `space.precisions`.
"""

from __future__ import annotations

from typing import Any

from kdserve.service.schemas import (ExportSpec, JobCreate, MethodSpec, SearchCreate, StudentSpec, TrainingSpec)
from kdserve.service.spec.jobs import validate_params
from kdserve.service.spec.methods import METHODS

PRUNED = "pruned"  # the error code of a trial job its search's pruner stopped
CLASSIFIER_METHODS = ("kd", "dist", "dkd")
EMBEDDING_METHODS = ("embedding_cosine",)
LR_RANGE = {"default": (1e-3, 3e-2), "transformer": (1e-4, 3e-3), "layer_dropped": (3e-5, 1e-3)}


def trial_status(status: str, error: dict | None) -> str:
    """A trial's status: its job's, with `pruned` for a job its search's pruner stopped."""
    return "pruned" if status == "cancelled" and (error or {}).get("code") == PRUNED else status


def has_temperature(method: str) -> bool:
    return "temperature" in METHODS[method].params.model_fields


def trial_job(search_id: str, spec: SearchCreate, number: int, choice: dict[str, Any],
              max_duration_s: int | None = None) -> JobCreate:
    """The job of trial `number`. `choice`: method, student (index), learning_rate, temperature."""
    student = spec.space.students[choice["student"]]
    method = choice["method"]
    given = {"temperature": choice["temperature"]} if choice.get("temperature") is not None else {}
    return JobCreate(
        teacher_id=spec.teacher_id, dataset_id=spec.dataset_id, validation_dataset_id=spec.validation_dataset_id,
        validation_split=spec.validation_split,
        student=StudentSpec(architecture=student.architecture, params=dict(student.params)),
        method=MethodSpec(name=method, params=validate_params(METHODS[method].params, given, "method.params")),
        training=TrainingSpec(epochs=spec.space.epochs, batch_size=spec.space.batch_size,
                              learning_rate=choice["learning_rate"], seed=spec.seed, max_duration_s=max_duration_s),
        export=ExportSpec(quantize=[p for p in spec.space.precisions if p != "fp32"]),
        metadata={"name": f"{search_id}-trial-{number}", "search_id": search_id, "trial": str(number)})


def representative(spec: SearchCreate, student: int, method: str) -> dict[str, Any]:
    """A choice for pre-flight: the middle of the ranges."""
    lo, hi = spec.space.learning_rate
    t_lo, t_hi = spec.space.temperature
    return {"student": student, "method": method, "learning_rate": (lo * hi) ** 0.5,
            "temperature": (t_lo + t_hi) / 2 if has_temperature(method) else None}
