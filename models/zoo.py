"""Student architectures, registered by name with a params schema (timm-style).

    student = create_student("mlp", {"hidden_sizes": [128]}, input_shape=[64], num_classes=10)

Every student is a `Student`: a `body` that maps a sample to a feature vector and a linear `head`
that maps features to logits. Methods that need more than logits (auxiliary heads, feature hints)
attach to `body`'s output, so every architecture supports them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Literal, Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn


class ArchParams(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Student(nn.Module):
    def __init__(self, body: nn.Module, feature_dim: int, num_classes: int):
        super().__init__()
        self.body = body
        self.feature_dim = feature_dim
        self.head = nn.Linear(feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def forward_features(self, x: torch.Tensor, layer: int = -1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(output of body[layer], penultimate features, logits) in one pass; layer -1 is the last."""
        h, hint = x, None
        for i, module in enumerate(self.body):
            h = module(h)
            if i == layer:
                hint = h
        return (h if hint is None else hint), h, self.head(h)


@dataclass(frozen=True)
class ArchInfo:
    name: str
    description: str
    params: type[ArchParams]
    build: Callable[..., Student]
    inputs: str = "tensor"  # "tensor": one float tensor; "text": input_ids + attention_mask from a teacher's tokenizer
    needs_teacher_weights: bool = False

    def catalog_entry(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "params": self.params.model_json_schema(),
                "inputs": self.inputs, "needs_teacher_weights": self.needs_teacher_weights}


ARCHITECTURES: dict[str, ArchInfo] = {}


def register_architecture(name: str, *, params: type[ArchParams], description: str, inputs: str = "tensor",
                          needs_teacher_weights: bool = False):
    """Register a student builder. A "tensor" builder is `fn(params, input_shape, num_classes)`; a
    "text" builder is `fn(params, source)` with a kdserve.models.text.TextSource (the teacher's tokenizer
    facts, output width and, when needed, its weights)."""

    def decorate(fn: Callable[..., Student]):
        ARCHITECTURES[name] = ArchInfo(name, description, params, fn, inputs, needs_teacher_weights)
        return fn

    return decorate


class ArchitectureError(ValueError):
    """The architecture cannot be built for this input (e.g. a CNN on a non-image shape)."""


def create_student(name: str, params: dict[str, Any] | None, input_shape: Sequence[int], num_classes: int,
                   source: Any = None) -> Student:
    """Build a student. Text architectures take `source` (kdserve.models.text.TextSource) instead of the
    input shape; its output_dim is the head's width."""
    info = ARCHITECTURES[name]
    p = info.params.model_validate(params or {})
    if info.inputs == "text":
        if source is None:
            raise ArchitectureError(f"{name} is a text student: it needs a text teacher (format hf) and a text dataset")
        return info.build(p, source)
    if source is not None:
        raise ArchitectureError(f"{name} takes numeric features, not text; use a text student (transformer, "
                                "layer_dropped)")
    return info.build(p, list(input_shape), num_classes)


def count_parameters(module: nn.Module) -> int:
    return int(sum(p.numel() for p in module.parameters()))


_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


# ---- mlp ------------------------------------------------------------------------------------


class MLPParams(ArchParams):
    hidden_sizes: list[int] = Field([128], min_length=1, max_length=16, description="width of each hidden layer")
    activation: Literal["relu", "gelu", "silu", "tanh"] = "relu"
    dropout: float = Field(0.0, ge=0, lt=1)
    batch_norm: bool = Field(False, description="BatchNorm1d after each hidden Linear")


@register_architecture("mlp", params=MLPParams, description="Multi-layer perceptron on the flattened input.")
def mlp(p: MLPParams, input_shape: list[int], num_classes: int) -> Student:
    if any(h < 1 or h > 65_536 for h in p.hidden_sizes):
        raise ArchitectureError("hidden_sizes must be between 1 and 65536")
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for h in p.hidden_sizes:
        layers.append(nn.Linear(width, h))
        if p.batch_norm:
            layers.append(nn.BatchNorm1d(h))
        layers.append(_ACTIVATIONS[p.activation]())
        if p.dropout:
            layers.append(nn.Dropout(p.dropout))
        width = h
    return Student(nn.Sequential(*layers), width, num_classes)


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
    shape = explicit or input_shape
    if len(shape) == 1:
        side = math.isqrt(shape[0])
        if side * side != shape[0]:
            raise ArchitectureError(f"a flat input of {shape[0]} features is not a square image; set image_shape")
        shape = [1, side, side]
    elif len(shape) == 2:
        shape = [1, *shape]
    if len(shape) != 3 or math.prod(shape) != math.prod(input_shape):
        raise ArchitectureError(f"image_shape {shape} does not hold the input shape {input_shape}")
    return shape


@register_architecture(
    "cnn", params=CNNParams,
    description="Conv-BN-ReLU blocks (2×2 max-pool while the image is ≥ 4 px), global average pool, linear head.",
)
def cnn(p: CNNParams, input_shape: list[int], num_classes: int) -> Student:
    c, h, w = image_shape_for(input_shape, p.image_shape)
    layers: list[nn.Module] = [nn.Unflatten(1, (c, h, w))] if len(input_shape) != 3 else []
    for out in p.channels:
        if out < 1 or out > 4096:
            raise ArchitectureError("channels must be between 1 and 4096")
        layers += [nn.Conv2d(c, out, p.kernel_size, padding=p.kernel_size // 2), nn.BatchNorm2d(out), nn.ReLU()]
        if min(h, w) >= 4:
            layers.append(nn.MaxPool2d(2))
            h, w = h // 2, w // 2
        c = out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    if p.dropout:
        layers.append(nn.Dropout(p.dropout))
    return Student(nn.Sequential(*layers), c, num_classes)


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


class PatchTokens(nn.Module):
    """A sample → [tokens, dim]: cut into patches, one shared Linear per patch, plus a learned
    position per token.

    Cutting is a reshape (no convolution), so the whole student stays MatMul-heavy and dynamic int8
    quantization covers it. Every reshape keeps the batch dimension as -1: that is what lets the
    ONNX export keep a dynamic batch."""

    def __init__(self, input_shape: list[int], p: PatchTransformerParams):
        super().__init__()
        self.flat = len(input_shape) == 1 and p.image_shape is None
        if self.flat:
            features = input_shape[0]
            self.pad = (-features) % p.patch_size
            num_tokens, token_width = (features + self.pad) // p.patch_size, p.patch_size
            self.grid: tuple[int, ...] = (num_tokens, token_width)
        else:
            c, h, w = image_shape_for(input_shape, p.image_shape)
            if h % p.patch_size or w % p.patch_size:
                raise ArchitectureError(f"an image of {h}×{w} cannot be cut into {p.patch_size}×{p.patch_size} "
                                        "patches; choose a patch_size that divides both sides")
            self.pad = 0
            self.grid = (c, h // p.patch_size, p.patch_size, w // p.patch_size, p.patch_size)
            num_tokens, token_width = (h // p.patch_size) * (w // p.patch_size), c * p.patch_size**2
        self.embed = nn.Linear(token_width, p.dim)
        self.position = nn.Parameter(torch.randn(1, num_tokens, p.dim) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.flat:
            x = x.reshape(x.shape[0], -1)
            if self.pad:
                x = nn.functional.pad(x, (0, self.pad))
            x = x.reshape(-1, *self.grid)
        else:
            c, gh, ph, gw, pw = self.grid
            x = x.reshape(-1, c, gh, ph, gw, pw).permute(0, 2, 4, 1, 3, 5)  # [B, gh, gw, C, ph, pw]
            x = x.reshape(-1, gh * gw, c * ph * pw)
        return self.embed(x) + self.position


class TokenMeanPool(nn.Module):
    """[B, tokens, dim] → [B, dim]: final LayerNorm (the encoder is pre-norm), then the mean token."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.norm(h).mean(dim=1)


@register_architecture(
    "patch_transformer", params=PatchTransformerParams,
    description="Transformer encoder on patches of a numeric input (ViT-style): a flat input is cut into chunks of "
    "patch_size features, an image into patch_size² squares; tokens + learned positions → pre-norm encoder layers "
    "→ mean pool → linear head.",
)
def patch_transformer(p: PatchTransformerParams, input_shape: list[int], num_classes: int) -> Student:
    if p.dim % p.heads:
        raise ArchitectureError(f"dim {p.dim} is not a multiple of heads {p.heads}")
    # One body entry per encoder layer (not one nn.TransformerEncoder), so a feature hint can attach
    # to any layer's output like it does for the other architectures' blocks.
    layers = [nn.TransformerEncoderLayer(p.dim, p.heads, dim_feedforward=max(1, int(p.dim * p.mlp_ratio)),
                                         dropout=p.dropout, activation="gelu", batch_first=True, norm_first=True)
              for _ in range(p.depth)]
    body = nn.Sequential(PatchTokens(input_shape, p), *layers, TokenMeanPool(p.dim))
    return Student(body, p.dim, num_classes)



# ---- text students (models/text.py has the encoder) -------------------------------------------


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


@register_architecture(
    "transformer", params=TransformerParams, inputs="text",
    description="A small BERT-style encoder trained from scratch on text: the teacher's tokenizer and vocabulary, "
    "post-LayerNorm layers, mean (or first-token) pooling, a linear head (class logits, or a learned projection to "
    "the teacher's embedding width, L2-normalised when the teacher's embeddings are). ONNX inputs: input_ids and "
    "attention_mask, dynamic batch and sequence.",
)
def transformer(p: TransformerParams, source) -> Student:
    from kdserve.models import text

    if p.hidden % p.heads:
        raise ArchitectureError(f"hidden {p.hidden} is not a multiple of heads {p.heads}")
    vocab = p.vocab_size or source.vocab_size
    if vocab < source.vocab_size:
        raise ArchitectureError(f"vocab_size {vocab} is smaller than the teacher tokenizer's {source.vocab_size} tokens")
    return text.build_transformer(source, layers=p.layers, hidden=p.hidden, heads=p.heads,
                                  intermediate=p.intermediate or 4 * p.hidden,
                                  max_positions=p.max_positions or min(source.max_positions, 512), vocab_size=vocab,
                                  pooling=p.pooling, dropout=p.dropout)


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


def layer_dropped_keep(p: LayerDroppedParams, num_layers: int) -> list[int]:
    """The teacher layers a layer_dropped student keeps (shared with the API's pre-flight check)."""
    if p.layers is not None and p.every is not None:
        raise ArchitectureError("give layers or every, not both")
    if p.layers is not None:
        if sorted(set(p.layers)) != p.layers:
            raise ArchitectureError(f"layers {p.layers} must be distinct and increasing")
        if p.layers[0] < 0 or p.layers[-1] >= num_layers:
            raise ArchitectureError(f"layers {p.layers} are out of range: the teacher has layers 0..{num_layers - 1}")
        return list(p.layers)
    from kdserve.models.text import every_kth

    keep = every_kth(num_layers, p.every or 2)
    if not keep:
        raise ArchitectureError(f"every={p.every} keeps no layer of a {num_layers}-layer teacher")
    return keep


@register_architecture(
    "layer_dropped", params=LayerDroppedParams, inputs="text", needs_teacher_weights=True,
    description="A copy of a BERT-family teacher (model_type bert: BERT, MiniLM, BGE, E5, …) keeping every k-th "
    "layer or a chosen list, initialised from the teacher's weights (DistilBERT-style), optionally with a narrower "
    "hidden size initialised by projecting the teacher onto its principal directions, and a low-rank (factorised) "
    "token-embedding table. Same head as the teacher.",
)
def layer_dropped(p: LayerDroppedParams, source) -> Student:
    from kdserve.models import text

    if source.state_dict is None or source.model_type not in text.BERT_LAYOUT_TYPES:
        raise ArchitectureError(f"layer_dropped copies a BERT-family teacher (model_type {list(text.BERT_LAYOUT_TYPES)}); "
                                f"this teacher is {source.model_type!r}: use the transformer student")
    num_layers = int(source.config["num_hidden_layers"])
    hidden = int(source.config["hidden_size"])
    if p.hidden_size is not None and p.hidden_size > hidden:
        raise ArchitectureError(f"hidden_size {p.hidden_size} is wider than the teacher's {hidden}")
    limit = min(p.hidden_size or hidden, int(source.config["vocab_size"]))
    if p.embedding_rank is not None and p.embedding_rank >= limit:
        raise ArchitectureError(f"embedding_rank {p.embedding_rank} must be below {limit}, the smaller of the hidden "
                                "size and the vocabulary: a factorisation of full rank saves nothing")
    if p.embedding_full_rows is not None and p.embedding_rank is None:
        raise ArchitectureError("embedding_full_rows adds full rows to a factorised table: set embedding_rank too")
    if p.embedding_full_rows is not None and p.embedding_full_rows >= int(source.config["vocab_size"]):
        raise ArchitectureError(f"embedding_full_rows {p.embedding_full_rows} must be below the vocabulary's "
                                f"{source.config['vocab_size']} tokens: the full table keeps every row")
    student = text.build_layer_dropped(source, keep=layer_dropped_keep(p, num_layers),
                                       hidden_size=p.hidden_size if p.hidden_size != hidden else None, dropout=p.dropout,
                                       embedding_rank=p.embedding_rank, full_rows=p.embedding_full_rows or 0)
    for name, table in student.embeddings.word.named_parameters():  # every token table; a low-rank map trains
        if not name.startswith("up."):
            table.requires_grad_(not p.freeze_embeddings)
    return student
