"""Request and response models: the contract of API.md in pydantic."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---- errors -------------------------------------------------------------------------------


class ErrorBody(BaseModel):
    code: str
    message: str
    param: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


# ---- job request --------------------------------------------------------------------------


class StudentSpec(Strict):
    architecture: str = Field(description="a name from GET /v1/architectures")
    params: dict[str, Any] = Field(default_factory=dict)


class MethodSpec(Strict):
    name: str = Field(description="a name from GET /v1/methods")
    params: dict[str, Any] = Field(default_factory=dict)


class TrainingSpec(Strict):
    epochs: int = Field(20, ge=1, le=10_000)
    batch_size: int = Field(64, ge=1, le=65_536)
    learning_rate: float = Field(1e-3, gt=0, le=10)
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    weight_decay: float = Field(0.0, ge=0, le=1)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    max_duration_s: int | None = Field(None, ge=1, description="wall-clock limit of the job")


class ExportSpec(Strict):
    onnx: Literal[True] = Field(True, description="the student is always exported to ONNX")
    opset: int = Field(18, ge=13, le=21, description="ONNX opset; 18 is what the exporter targets natively (older "
                       "opsets go through a version converter that not every op survives)")
    quantize: list[Literal["int8", "fp16"]] = Field(
        default_factory=list, max_length=2,
        description="extra precisions to publish: int8 (dynamic for MLP/transformer students, static QDQ calibrated "
        "on training samples for CNNs) and fp16 (for GPU serving); each is measured on the validation set and "
        "published only within max_accuracy_drop",
    )
    parity_tolerance: float = Field(1e-4, gt=0, description="max abs logit difference ORT vs PyTorch")
    max_accuracy_drop: float = Field(0.01, ge=0, le=1, description="a variant losing more is not published")


class TeacherRefinement(Strict):
    method: Literal["mcmi"] = Field("mcmi", description="fine-tune the teacher with this objective before distilling")
    params: dict[str, Any] = Field(default_factory=dict)


class JobCreate(Strict):
    teacher_id: str | None = None
    teacher_features: str | None = Field(
        None, max_length=255,
        description="name of the teacher output to use as features, for methods that need them (fitnet, lelp); "
        "see the teacher's `outputs`",
    )
    teacher_refinement: TeacherRefinement | None = Field(
        None, description="refine a TorchScript teacher (e.g. MCMI) before distilling; the refined teacher is stored too",
    )
    dataset_id: str
    validation_dataset_id: str | None = None
    validation_split: float = Field(0.1, gt=0, lt=0.9)
    student: StudentSpec
    method: MethodSpec
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    export: ExportSpec = Field(default_factory=ExportSpec)
    metadata: dict[str, str] = Field(default_factory=dict, max_length=32)


# ---- responses ----------------------------------------------------------------------------


class TeacherOut(BaseModel):
    id: str
    object: Literal["teacher"] = "teacher"
    name: str
    format: str
    sha256: str
    size_bytes: int
    input_shape: list[int]
    input_dtype: str
    num_classes: int
    num_parameters: int
    outputs: list[dict[str, Any]] = Field(default_factory=list, description="every output: name, per-sample shape, "
                                          "and whether it is the logits")
    created_at: int


class DatasetOut(BaseModel):
    id: str
    object: Literal["dataset"] = "dataset"
    name: str
    format: str
    sha256: str
    size_bytes: int
    num_rows: int
    feature_shape: list[int]
    labeled: bool
    num_classes: int | None
    class_counts: dict[str, int] | None
    created_at: int


class JobMetrics(BaseModel):
    teacher_accuracy: float | None = None
    student_accuracy: float | None = None
    agreement: float | None = None
    train_loss: float | None = None
    val_loss: float | None = None


class JobOut(BaseModel):
    id: str
    object: Literal["job"] = "job"
    status: str
    stage: str | None
    progress: float
    epoch: int
    epochs: int
    teacher_id: str | None
    dataset_id: str
    validation_dataset_id: str | None
    student: dict[str, Any]
    method: dict[str, Any]
    training: dict[str, Any]
    export: dict[str, Any]
    metrics: JobMetrics
    model_id: str | None
    error: ErrorBody | None
    attempts: int
    created_at: int
    started_at: int | None
    finished_at: int | None
    estimated_finish: int | None
    metadata: dict[str, str]


class EventOut(BaseModel):
    id: int
    object: Literal["job.event"] = "job.event"
    created_at: int
    level: str
    type: str
    message: str
    data: dict[str, Any] | None


class TensorSpec(BaseModel):
    name: str
    shape: list[int]
    datatype: str


class Artifact(BaseModel):
    format: str
    precision: str
    size_bytes: int
    sha256: str
    max_abs_diff: float | None
    argmax_agreement: float | None
    accuracy: float | None
    latency_ms_batch1: float | None


class ModelOut(BaseModel):
    id: str
    object: Literal["model"] = "model"
    name: str
    job_id: str
    teacher_id: str | None
    dataset_id: str
    method: dict[str, Any]
    student: dict[str, Any]
    num_parameters: int
    teacher_num_parameters: int | None
    refined_teacher_id: str | None = Field(None, description="the MCMI-refined teacher this student learned from")
    compression_ratio: float | None
    metrics: dict[str, float | None]
    input: TensorSpec
    output: TensorSpec
    artifacts: list[Artifact]
    created_at: int


class ListOut(BaseModel):
    object: Literal["list"] = "list"
    data: list[Any]
    has_more: bool


class PredictIn(Strict):
    inputs: list[Any] = Field(min_length=1, description="a batch of samples, each of the model's input shape")


class PredictOut(BaseModel):
    logits: list[list[float]]
    predictions: list[int]
