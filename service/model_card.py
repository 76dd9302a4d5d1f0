"""A published model's card: what the worker writes on the Model row and the API, serving and SDK
read, as one pydantic model. Torch-free: the API server imports it.

The worker builds a `ModelCard` and stores `card.to_json()`; readers call `ModelCard.of(row.card)`
and use attributes. Stored JSON keeps the field names (and, for every field the worker set, the
keys) it has always had, so cards published before this module load unchanged, and GET
/v1/models/{id} serves the same JSON.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


# (Served models carry no docstrings: pydantic would publish them as OpenAPI descriptions.)


class TensorSpec(BaseModel):  # one input or output of the ONNX file, as /v2 metadata lists it (-1: dynamic)
    name: str
    shape: list[int]
    datatype: str


class OutputDiffOut(BaseModel):
    name: str
    max_abs_diff: float | None
    max_rel_diff: float | None


class Artifact(BaseModel):
    format: str
    precision: str
    size_bytes: int
    sha256: str
    max_abs_diff: float | None
    argmax_agreement: float | None
    accuracy: float | None
    latency_ms_batch1: float | None
    # Added with the int8/fp16 variants; absent on cards published before them.
    max_rel_diff: float | None = Field(None, description="max |onnx − pytorch| / |pytorch| over the validation set "
                                       "(|pytorch| floored at 1e-3 of the output's largest magnitude)")
    outputs: list[OutputDiffOut] | None = Field(None, description="max abs and relative diff per model output")
    accuracy_delta: float | None = Field(None, description="accuracy minus the fp32 artifact's accuracy (fraction)")
    latency_ms_batch64: float | None = Field(None, description="median onnxruntime CPU latency at batch 64")
    cuda_latency_ms_batch1: float | None = Field(None, description="set only when a session really ran on CUDA")
    cuda_latency_ms_batch64: float | None = None
    quantization: str | None = Field(None, description="how this precision was made (e.g. dynamic int8, static QDQ)")
    providers: list[str] | None = Field(None, description="onnxruntime execution providers the latencies were measured on")
    opset: int | None = Field(None, description="ONNX opset the file was written with")
    mean_cosine: float | None = Field(None, description="embedding students: mean cosine of this file's outputs to "
                                      "the PyTorch student's (fp32) on the validation set")
    sequence_length: int | None = Field(None, description="text students: tokens per row the latencies were measured at "
                                        "(the validation set's median)")


class Bundle(BaseModel):
    format: str = Field(description="zip: the ONNX file as model.onnx plus tokenizer/ (text students)")
    precision: str
    size_bytes: int
    sha256: str


class StoredArtifact(Artifact):
    """An artifact as the card stores it: with the blob key the API serves it from (never sent)."""

    blob_key: str


class StoredBundle(Bundle):
    blob_key: str


class TextInfo(BaseModel):
    """A text student's tokenisation and output (also written as kdserve_text.json in its bundle)."""

    model_config = ConfigDict(extra="allow")

    task: str
    max_length: int
    inputs: list[str] | None = None
    output: str | None = None
    normalized: bool | None = None
    pooling: str | None = None
    text_pairs: bool = False
    vocab_size: int | None = None
    tokenizer_files: list[str] | None = None


class CardFields(BaseModel):
    """The fields the card stores and GET /v1/models/{id} serves as they are (schemas.ModelOut
    inherits them)."""

    teacher_id: str | None
    dataset_id: str
    method: dict[str, Any]
    student: dict[str, Any]
    num_parameters: int
    teacher_num_parameters: int | None
    refined_teacher_id: str | None = Field(None, description="the MCMI-refined teacher this student learned from")
    compression_ratio: float | None
    metrics: dict[str, float | None]
    training: dict[str, Any] | None = Field(None, description="what training did: learning_rate and "
                                            "learning_rate_source (how \"auto\" chose it, lr_search: its rungs), "
                                            "epochs_planned, epochs_run, best_epoch, published_epoch, "
                                            "published_because (why those weights), stopped_early")
    warnings: list[dict[str, Any]] | None = Field(None, description="what you should know about the run ({code, "
                                                  "message}): as the job's warnings")
    input_scaling: dict[str, Any] | None = Field(None, description="MLP students: whether the student standardises "
                                                 "its inputs (training.standardize_inputs), why, and the scale spread "
                                                 "that decided it")
    baseline: dict[str, Any] | None = Field(None, description="jobs with baseline: true: the same student trained "
                                            "with ce alone on the same split (accuracy, agreement) and the distilled "
                                            "student's lead over it (accuracy_delta, agreement_delta)")
    validation: dict[str, Any] | None = Field(None, description="the rows the card's scores are measured on: rows, "
                                              "labelled, source (split of the dataset, or validation_dataset_id) and "
                                              "a note when the teacher may have trained on them")
    teacher_latency: dict[str, Any] | None = Field(None, description="median latency_ms_batch1 / "
                                                   "latency_ms_batch64 in the teacher's own runtime (torch or "
                                                   "onnxruntime, inside its jail, the worker's threads)")
    speedup: dict[str, float] | None = Field(None, description="the teacher's latency over the fp32 student's "
                                             "onnxruntime latency, at batch 1 and 64 (batch1, batch64)")
    versions: dict[str, str] | None = Field(None, description="what made the files: kdserve, torch, onnx, "
                                            "onnxruntime and Python versions")
    test: dict[str, Any] | None = Field(None, description="jobs with test_dataset_id: dataset_id, rows, labelled, "
                                        "student_accuracy, teacher_accuracy, agreement (embeddings: mean_cosine, "
                                        "neighbour_overlap_at_10) on it, scored once at the end")
    class_names: list[str] | None = Field(None, description="the dataset's class names (labels uploaded as strings, "
                                          "numbered in sorted order): output i is class_names[i]")
    input: TensorSpec
    output: TensorSpec


class ModelCard(CardFields):
    artifacts: list[StoredArtifact]
    inputs: list[TensorSpec] | None = None
    bundles: list[StoredBundle] | None = None
    text: TextInfo | None = None

    @classmethod
    def of(cls, stored: dict | ModelCard) -> ModelCard:
        """The card of a Model row (its JSON column)."""
        return stored if isinstance(stored, ModelCard) else cls.model_validate(stored)

    def to_json(self) -> dict[str, Any]:
        """The card as the Model row stores it: the fields that were set, nothing added."""
        return self.model_dump(mode="json", exclude_unset=True)

    def served(self) -> dict[str, Any]:
        """The card's fields of GET /v1/models/{id} (schemas.ModelOut): blob keys left out, and
        `text` with the keys it was stored with."""
        out = self.model_dump(mode="json", exclude={"artifacts", "bundles", "text"})
        out["artifacts"] = [a.model_dump(mode="json", exclude={"blob_key"}) for a in self.artifacts]
        out["bundles"] = [b.model_dump(mode="json", exclude={"blob_key"}) for b in self.bundles or []] or None
        out["text"] = self.text.model_dump(mode="json", exclude_unset=True) if self.text is not None else None
        return out

    # -- what serving asks of a card ---------------------------------------------------------

    @property
    def is_text(self) -> bool:
        return self.text is not None

    @property
    def model_inputs(self) -> list[TensorSpec]:
        """Every input of the ONNX file."""
        return list(self.inputs or [self.input])

    def files(self) -> list[StoredArtifact | StoredBundle]:
        """Every downloadable file: the ONNX artifacts, then the zip bundles."""
        return [*self.artifacts, *(self.bundles or [])]

    def stored_bytes(self) -> int:
        return sum(f.size_bytes for f in self.files())

    def onnx_artifacts(self) -> list[StoredArtifact]:
        return [a for a in self.artifacts if a.format == "onnx"]
