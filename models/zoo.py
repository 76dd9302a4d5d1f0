"""Student architectures: the torch builders, bound by name to their specs (timm-style).

    student = create_student("mlp", {"hidden_sizes": [128]}, input_shape=[64], num_classes=10)

Each architecture's params class and the rules that it can be built for an input live torch-free in
kdserve.service.spec.architectures (the API checks a job with them at POST time); a builder here is
called only after the same check has passed on the loaded data and teacher.

Every student is a `Student` (kdserve.models.student): a `body` that maps a sample to a feature
vector and a linear `head` that maps features to logits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn

from kdserve.models import text
from kdserve.models.student import InputScaling, Student
from kdserve.service.spec.binding import Bound
from kdserve.service.spec.architectures import ARCHITECTURES as ARCH_SPECS
from kdserve.service.spec.architectures import (ArchitectureError, CNNParams, LayerDroppedParams, MLPParams,
                                                PatchTransformerParams, StudentInput, TextTeacher, TransformerParams,
                                                image_shape_for, layer_dropped_keep, patch_grid)

__all__ = ["ARCHITECTURES", "ArchInfo", "ArchitectureError", "Student", "count_parameters", "create_student",
           "register_architecture"]


@dataclass(frozen=True)
class ArchInfo(Bound):
    """An architecture's spec (params, rules: `info.needs_teacher_weights`...) and its builder."""

    build: Callable[..., Student]


ARCHITECTURES: dict[str, ArchInfo] = {}


def register_architecture(name: str):
    """Bind a builder to the architecture `name` of kdserve.service.spec.architectures. A "tensor"
    builder is `fn(params, input_shape, num_classes)`; a "text" builder is `fn(params, source)` with
    a kdserve.models.text.TextSource (the teacher's tokenizer facts, output width and, when needed,
    its weights)."""
    spec = ARCH_SPECS[name]

    def decorate(fn: Callable[..., Student]):
        ARCHITECTURES[name] = ArchInfo(spec, fn)
        return fn

    return decorate


def text_teacher(source: text.TextSource) -> TextTeacher:
    """The facts the spec's text rules read, from a loaded text teacher."""
    cfg = source.config or {}
    return TextTeacher(model_type=source.model_type, num_layers=int(cfg.get("num_hidden_layers") or 0),
                       hidden_size=int(cfg.get("hidden_size") or 0), vocab_size=source.vocab_size,
                       model_vocab_size=int(cfg.get("vocab_size") or source.vocab_size),
                       max_positions=source.max_positions, task=source.task)


def create_student(name: str, params: dict[str, Any] | None, input_shape: Sequence[int], num_classes: int,
                   source: Any = None, max_length: int = 0) -> Student:
    """Build a student. Text architectures take `source` (kdserve.models.text.TextSource) instead of the
    input shape; its output_dim is the head's width. Raises ArchitectureError when the spec's rules
    refuse the student for this input."""
    info = ARCHITECTURES[name]
    p = info.params.model_validate(params or {})
    if source is not None:
        info.spec.check(p, StudentInput(text=text_teacher(source), max_length=max_length))
        return info.build(p, source)
    info.spec.check(p, StudentInput(input_shape=list(input_shape)))
    return info.build(p, list(input_shape), num_classes)


def count_parameters(module: nn.Module) -> int:
    return int(sum(p.numel() for p in module.parameters()))


_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


@register_architecture("mlp")
def mlp(p: MLPParams, input_shape: list[int], num_classes: int) -> Student:
    width = math.prod(input_shape)
    layers: list[nn.Module] = [InputScaling(width)]  # flattens; scales features when the worker sets it
    for h in p.hidden_sizes:
        layers.append(nn.Linear(width, h))
        if p.batch_norm:
            layers.append(nn.BatchNorm1d(h))
        layers.append(_ACTIVATIONS[p.activation]())
        if p.dropout:
            layers.append(nn.Dropout(p.dropout))
        width = h
    return Student(nn.Sequential(*layers), width, num_classes)


@register_architecture("cnn")
def cnn(p: CNNParams, input_shape: list[int], num_classes: int) -> Student:
    c, h, w = image_shape_for(input_shape, p.image_shape)
    layers: list[nn.Module] = [nn.Unflatten(1, (c, h, w))] if len(input_shape) != 3 else []
    for out in p.channels:
        layers += [nn.Conv2d(c, out, p.kernel_size, padding=p.kernel_size // 2), nn.BatchNorm2d(out), nn.ReLU()]
        if min(h, w) >= 4:
            layers.append(nn.MaxPool2d(2))
            h, w = h // 2, w // 2
        c = out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    if p.dropout:
        layers.append(nn.Dropout(p.dropout))
    return Student(nn.Sequential(*layers), c, num_classes)


class PatchTokens(nn.Module):
    """A sample → [tokens, dim]: cut into patches, one shared Linear per patch, plus a learned
    position per token.

    Cutting is a reshape (no convolution), so the whole student stays MatMul-heavy and dynamic int8
    quantization covers it. Every reshape keeps the batch dimension as -1: that is what lets the
    ONNX export keep a dynamic batch."""

    def __init__(self, input_shape: list[int], p: PatchTransformerParams):
        super().__init__()
        image = patch_grid(p, input_shape)
        self.flat = image is None
        if self.flat:
            features = input_shape[0]
            self.pad = (-features) % p.patch_size
            num_tokens, token_width = (features + self.pad) // p.patch_size, p.patch_size
            self.grid: tuple[int, ...] = (num_tokens, token_width)
        else:
            c, h, w = image
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


@register_architecture("patch_transformer")
def patch_transformer(p: PatchTransformerParams, input_shape: list[int], num_classes: int) -> Student:
    # One body entry per encoder layer (not one nn.TransformerEncoder), so a feature hint can attach
    # to any layer's output like it does for the other architectures' blocks.
    layers = [nn.TransformerEncoderLayer(p.dim, p.heads, dim_feedforward=max(1, int(p.dim * p.mlp_ratio)),
                                         dropout=p.dropout, activation="gelu", batch_first=True, norm_first=True)
              for _ in range(p.depth)]
    body = nn.Sequential(PatchTokens(input_shape, p), *layers, TokenMeanPool(p.dim))
    return Student(body, p.dim, num_classes)



# ---- text students (models/text.py has the encoder) -------------------------------------------


@register_architecture("transformer")
def transformer(p: TransformerParams, source: text.TextSource) -> Student:
    return text.build_transformer(source, layers=p.layers, hidden=p.hidden, heads=p.heads,
                                  intermediate=p.intermediate or 4 * p.hidden,
                                  max_positions=p.max_positions or min(source.max_positions, 512),
                                  vocab_size=p.vocab_size or source.vocab_size, pooling=p.pooling, dropout=p.dropout)


@register_architecture("layer_dropped")
def layer_dropped(p: LayerDroppedParams, source: text.TextSource) -> Student:
    if source.state_dict is None:
        raise ArchitectureError("layer_dropped copies the teacher's weights, and none were loaded", "student.architecture")
    hidden = int(source.config["hidden_size"])
    student = text.build_layer_dropped(source, keep=layer_dropped_keep(p, int(source.config["num_hidden_layers"])),
                                       hidden_size=p.hidden_size if p.hidden_size != hidden else None, dropout=p.dropout,
                                       embedding_rank=p.embedding_rank, full_rows=p.embedding_full_rows or 0)
    for name, table in student.embeddings.word.named_parameters():  # every token table; a low-rank map trains
        if not name.startswith("up."):
            table.requires_grad_(not p.freeze_embeddings)
    return student
