"""Student architectures as a job spec names them: each one's params schema and the rules a job
must satisfy to build it, torch-free. The API checks a job with `ArchSpec.check` at POST time; the
worker's builders (kdserve.models.zoo) run the same check on the facts of the loaded data and
teacher before they build anything, so a rule lives here once.

    spec = ARCHITECTURES["mlp"]
    params = spec.params.model_validate({"hidden_sizes": [128]})
    spec.check(params, StudentInput(input_shape=[64]))        # raises ArchitectureError
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field

from kdserve.service.spec.errors import SpecError

# Model types whose checkpoints use BERT's parameter layout (what layer_dropped copies).
BERT_LAYOUT_TYPES = ("bert",)
TEXT_ARCHITECTURES_HINT = "transformer (from scratch) or layer_dropped (a copy of a BERT teacher)"


class ArchitectureError(SpecError):
    """The architecture cannot be built for this input (e.g. a CNN on a non-image shape)."""


class ArchParams(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


@dataclass(frozen=True)
class TextTeacher:
    """What a text student's rules need to know of its teacher (the API has it from the teacher's
    stored `details`, the worker from the loaded teacher)."""

    model_type: str | None
    num_layers: int
    hidden_size: int
    vocab_size: int         # ids the tokenizer can produce
    model_vocab_size: int   # rows of the teacher's token-embedding table
    max_positions: int
    task: str | None = None

    @classmethod
    def from_details(cls, d: dict[str, Any]) -> "TextTeacher":
        vocab = int(d.get("vocab_size") or 0)
        return cls(model_type=d.get("model_type"), num_layers=int(d.get("num_layers") or 0),
                   hidden_size=int(d.get("hidden_size") or 0), vocab_size=vocab,
                   model_vocab_size=int(d.get("model_vocab_size") or vocab), max_positions=int(d.get("max_positions") or 512),
                   task=d.get("task"))


@dataclass(frozen=True)
class StudentInput:
    """What a student is built for: the per-sample input shape (numeric students), or the text
    teacher whose tokenizer it shares and the tokens per text (text students)."""

    input_shape: list[int] | None = None
    text: TextTeacher | None = None
    max_length: int = 0


@dataclass(frozen=True)
class ArchSpec:
    name: str
    description: str
    params: type[ArchParams]
    check_fn: Callable[[Any, StudentInput], None]
    inputs: str = "tensor"  # "tensor": one float tensor; "text": input_ids + attention_mask from a teacher's tokenizer
    needs_teacher_weights: bool = False

    def catalog_entry(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "params": self.params.model_json_schema(),
                "inputs": self.inputs, "needs_teacher_weights": self.needs_teacher_weights}

    def check(self, params: ArchParams, inp: StudentInput) -> None:
        """Raise ArchitectureError (with the job spec's `param`) when the student cannot be built."""
        if self.inputs == "text" and inp.text is None:
            raise ArchitectureError(f"{self.name} is a text student: it needs a text teacher (format hf) and a text "
                                    "dataset", "student.architecture")
        if self.inputs != "text" and inp.text is not None:
            raise ArchitectureError(f"{self.name} takes numeric features, not text; use a text student "
                                    f"({TEXT_ARCHITECTURES_HINT})", "student.architecture")
        self.check_fn(params, inp)


ARCHITECTURES: dict[str, ArchSpec] = {}


def define_architecture(name: str, *, params: type[ArchParams], description: str, check: Callable[[Any, StudentInput], None],
                        inputs: str = "tensor", needs_teacher_weights: bool = False) -> ArchSpec:
    if name in ARCHITECTURES:
        raise ValueError(f"architecture {name!r} defined twice")
    ARCHITECTURES[name] = ArchSpec(name, description, params, check, inputs, needs_teacher_weights)
    return ARCHITECTURES[name]


def _param(name: str) -> str:
    return f"student.params.{name}"


# ---- mlp ------------------------------------------------------------------------------------


class MLPParams(ArchParams):
    hidden_sizes: list[int] = Field([128], min_length=1, max_length=16, description="width of each hidden layer")
    activation: Literal["relu", "gelu", "silu", "tanh"] = "relu"
    dropout: float = Field(0.0, ge=0, lt=1)
    batch_norm: bool = Field(False, description="BatchNorm1d after each hidden Linear")


def check_mlp(p: MLPParams, inp: StudentInput) -> None:
    if any(h < 1 or h > 65_536 for h in p.hidden_sizes):
        raise ArchitectureError("hidden_sizes must be between 1 and 65536", _param("hidden_sizes"))


define_architecture("mlp", params=MLPParams, check=check_mlp,
                    description="Multi-layer perceptron on the flattened input.")


# ---- cnn ------------------------------------------------------------------------------------


class CNNParams(ArchParams):
    channels: list[int] = Field([16, 32], min_length=1, max_length=8, description="output channels of each conv block")
    kernel_size: int = Field(3, ge=1, le=11)
    image_shape: list[int] | None = Field(
        None, min_length=2, max_length=3,
        description="[C, H, W] or [H, W] to view a flat feature vector as an image; "
        "default: the input shape itself, or a square single-channel image for a flat input of n² features",
    )
    dropout: float = Field(0.0, ge=0, lt=1)


def image_shape_for(input_shape: list[int], explicit: list[int] | None) -> list[int]:
    """[C, H, W] of the image a numeric input is viewed as."""
    shape = explicit or input_shape
    if len(shape) == 1:
        side = math.isqrt(shape[0])
        if side * side != shape[0]:
            raise ArchitectureError(f"a flat input of {shape[0]} features is not a square image; set image_shape",
                                    _param("image_shape"))
        shape = [1, side, side]
    elif len(shape) == 2:
        shape = [1, *shape]
    if len(shape) != 3 or math.prod(shape) != math.prod(input_shape):
        raise ArchitectureError(f"image_shape {shape} does not hold the input shape {input_shape}", _param("image_shape"))
    return shape


def check_cnn(p: CNNParams, inp: StudentInput) -> None:
    image_shape_for(list(inp.input_shape or []), p.image_shape)
    if any(out < 1 or out > 4096 for out in p.channels):
        raise ArchitectureError("channels must be between 1 and 4096", _param("channels"))


define_architecture(
    "cnn", params=CNNParams, check=check_cnn,
    description="Conv-BN-ReLU blocks (2×2 max-pool while the image is ≥ 4 px), global average pool, linear head.",
)


# ---- patch_transformer ----------------------------------------------------------------------


class PatchTransformerParams(ArchParams):
    patch_size: int = Field(
        8, ge=1, le=1024,
        description="features per token for a flat input (consecutive, zero-padded to a multiple); "
        "side of the square patch for an image input ([H, W] or [C, H, W]) or when image_shape is set",
    )
    image_shape: list[int] | None = Field(
        None, min_length=2, max_length=3,
        description="[C, H, W] or [H, W] to cut a flat feature vector into square image patches instead of chunks",
    )
    dim: int = Field(64, ge=8, le=4096, description="token width (d_model); a multiple of heads")
    depth: int = Field(2, ge=1, le=24, description="number of encoder layers")
    heads: int = Field(4, ge=1, le=64)
    mlp_ratio: float = Field(2.0, gt=0, le=8, description="feed-forward width = mlp_ratio × dim")
    dropout: float = Field(0.0, ge=0, lt=1)


def patch_grid(p: PatchTransformerParams, input_shape: list[int]) -> list[int] | None:
    """[C, H, W] of the image cut into patch_size² squares, or None for a flat input cut into chunks."""
    if len(input_shape) == 1 and p.image_shape is None:
        return None
    c, h, w = image_shape_for(input_shape, p.image_shape)
    if h % p.patch_size or w % p.patch_size:
        raise ArchitectureError(f"an image of {h}×{w} cannot be cut into {p.patch_size}×{p.patch_size} patches; choose "
                                "a patch_size that divides both sides", _param("patch_size"))
    return [c, h, w]


def check_patch_transformer(p: PatchTransformerParams, inp: StudentInput) -> None:
    if p.dim % p.heads:
        raise ArchitectureError(f"dim {p.dim} is not a multiple of heads {p.heads}", _param("dim"))
    patch_grid(p, list(inp.input_shape or []))


define_architecture(
    "patch_transformer", params=PatchTransformerParams, check=check_patch_transformer,
    description="Transformer encoder on patches of a numeric input (ViT-style): a flat input is cut into chunks of "
    "patch_size features, an image into patch_size² squares; tokens + learned positions → pre-norm encoder layers "
    "→ mean pool → linear head.",
)


# ---- text students ----------------------------------------------------------------------------


class TransformerParams(ArchParams):
    layers: int = Field(4, ge=1, le=48, description="encoder layers")
    hidden: int = Field(256, ge=8, le=4096, description="width of the residual stream; a multiple of heads")
    heads: int = Field(4, ge=1, le=64, description="attention heads")
    intermediate: int | None = Field(None, ge=8, le=16384, description="feed-forward width (default 4 × hidden)")
    max_positions: int | None = Field(None, ge=2, le=8192,
                                      description="position embeddings (default: the teacher's, at most 512)")
    vocab_size: int | None = Field(
        None, ge=2, le=1_000_000,
        description="rows of the token embedding (default: the teacher tokenizer's size; it may be larger, e.g. "
        "padded to a multiple of 64, but never smaller: the tokenizer would emit ids past the table)",
    )
    pooling: Literal["mean", "cls"] = Field("mean", description="sentence vector: mean of the tokens, or the first "
                                            "token (through a dense + tanh pooler for classification)")
    dropout: float = Field(0.1, ge=0, lt=1)


def check_transformer(p: TransformerParams, inp: StudentInput) -> None:
    teacher = inp.text
    if p.vocab_size is not None and p.vocab_size < teacher.vocab_size:
        raise ArchitectureError(f"vocabulary mismatch: vocab_size {p.vocab_size} is smaller than the teacher "
                                f"tokenizer's {teacher.vocab_size} tokens; ids ≥ {p.vocab_size} would index outside "
                                "the student's embedding table. Leave vocab_size out to use the tokenizer's",
                                _param("vocab_size"))
    if p.hidden % p.heads:
        raise ArchitectureError(f"hidden {p.hidden} is not a multiple of heads {p.heads}", _param("hidden"))
    if p.max_positions is not None and p.max_positions < inp.max_length:
        raise ArchitectureError(f"max_positions {p.max_positions} is less than text.max_length {inp.max_length}",
                                _param("max_positions"))


define_architecture(
    "transformer", params=TransformerParams, check=check_transformer, inputs="text",
    description="A small BERT-style encoder trained from scratch on text: the teacher's tokenizer and vocabulary, "
    "post-LayerNorm layers, mean (or first-token) pooling, a linear head (class logits, or a learned projection to "
    "the teacher's embedding width, L2-normalised when the teacher's embeddings are). ONNX inputs: input_ids and "
    "attention_mask, dynamic batch and sequence.",
)


class LayerDroppedParams(ArchParams):
    layers: list[int] | None = Field(
        None, min_length=1, max_length=64,
        description="0-based indices of the teacher layers to keep, in increasing order (e.g. [1, 3, 5])",
    )
    every: int | None = Field(
        None, ge=1, le=64,
        description="keep every k-th layer: k−1, 2k−1, … (the top layer is kept when k divides the depth); "
        "default 2 when layers is not given",
    )
    hidden_size: int | None = Field(
        None, ge=8, le=8192,
        description="a narrower residual stream than the teacher's: the teacher's weights are projected onto the "
        "top principal directions of its hidden states on the training texts, attention and feed-forward widths "
        "stay; an embedding student's head is the learned projection back to the teacher's width",
    )
    embedding_rank: int | None = Field(
        None, ge=1, le=8192,
        description="factorise the token-embedding table (most of a small BERT's parameters: 11.7 M of MiniLM's "
        "22.6 M) as [vocab, r] @ [r, hidden], ALBERT-style, initialised with the best rank-r approximation of the "
        "teacher's table, each token weighted by its frequency in the training texts (mixed with a uniform share); "
        "must be below the hidden size. Exported as Gather + MatMul. Default: the full table",
    )
    embedding_full_rows: int | None = Field(
        None, ge=1, le=1_000_000,
        description="with embedding_rank: the K tokens the training texts use most keep a full-width row besides "
        "their rank-r one, initialised so that they start exactly as in the teacher (a domain's texts use a few "
        "thousand of a tokenizer's tens of thousands of tokens); the other tokens keep the low-rank row. Costs "
        "K × hidden parameters",
    )
    dropout: float = Field(0.1, ge=0, lt=1)
    freeze_embeddings: bool = Field(
        True, description="keep the token-embedding table as copied (projected) from the teacher: tokens absent from "
        "the training texts stay where the teacher put them, and the largest matrix needs no optimizer state (with "
        "embedding_rank the [vocab, r] table and the full rows are frozen, the [r, hidden] map still trains)",
    )


def every_kth(num_layers: int, k: int) -> list[int]:
    """Layers k−1, 2k−1, …: the last of each group of k, so the top layer is kept when k divides
    the depth (it writes the space the teacher's output lives in)."""
    return list(range(k - 1, num_layers, k))


def layer_dropped_keep(p: LayerDroppedParams, num_layers: int) -> list[int]:
    """The teacher layers a layer_dropped student keeps."""
    if p.layers is not None and p.every is not None:
        raise ArchitectureError("give layers or every, not both", _param("layers"))
    if p.layers is not None:
        if sorted(set(p.layers)) != p.layers:
            raise ArchitectureError(f"layers {p.layers} must be distinct and increasing", _param("layers"))
        if p.layers[0] < 0 or p.layers[-1] >= num_layers:
            raise ArchitectureError(f"layers {p.layers} are out of range: the teacher has layers 0..{num_layers - 1}",
                                    _param("layers"))
        return list(p.layers)
    keep = every_kth(num_layers, p.every or 2)
    if not keep:
        raise ArchitectureError(f"every={p.every} keeps no layer of a {num_layers}-layer teacher", _param("every"))
    return keep


def check_layer_dropped(p: LayerDroppedParams, inp: StudentInput) -> None:
    t = inp.text
    if t.model_type not in BERT_LAYOUT_TYPES:
        raise ArchitectureError(f"layer_dropped copies a BERT-family teacher (model_type {list(BERT_LAYOUT_TYPES)}); "
                                f"this teacher is {t.model_type!r}: use the transformer student", "student.architecture")
    layer_dropped_keep(p, t.num_layers)
    if p.hidden_size is not None and p.hidden_size > t.hidden_size:
        raise ArchitectureError(f"hidden_size {p.hidden_size} is wider than the teacher's {t.hidden_size}",
                                _param("hidden_size"))
    limit = min(p.hidden_size or t.hidden_size, t.model_vocab_size)
    if p.embedding_rank is not None and p.embedding_rank >= limit:
        raise ArchitectureError(f"embedding_rank {p.embedding_rank} must be below {limit}, the smaller of the hidden "
                                "size and the vocabulary: a factorisation of full rank saves nothing",
                                _param("embedding_rank"))
    if p.embedding_full_rows is not None and p.embedding_rank is None:
        raise ArchitectureError("embedding_full_rows adds full rows to a factorised table: set embedding_rank too",
                                _param("embedding_full_rows"))
    if p.embedding_full_rows is not None and p.embedding_full_rows >= t.model_vocab_size:
        raise ArchitectureError(f"embedding_full_rows {p.embedding_full_rows} must be below the vocabulary's "
                                f"{t.model_vocab_size} tokens: the full table keeps every row", _param("embedding_full_rows"))


define_architecture(
    "layer_dropped", params=LayerDroppedParams, check=check_layer_dropped, inputs="text", needs_teacher_weights=True,
    description="A copy of a BERT-family teacher (model_type bert: BERT, MiniLM, BGE, E5, …) keeping every k-th "
    "layer or a chosen list, initialised from the teacher's weights (DistilBERT-style), optionally with a narrower "
    "hidden size initialised by projecting the teacher onto its principal directions, and a low-rank (factorised) "
    "token-embedding table. Same head as the teacher.",
)
