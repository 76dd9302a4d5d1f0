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
    model_config = ConfigDict(extra="forbid")


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
    build: Callable[[Any, list[int], int], Student]

    def catalog_entry(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "params": self.params.model_json_schema()}


ARCHITECTURES: dict[str, ArchInfo] = {}


def register_architecture(name: str, *, params: type[ArchParams], description: str):
    def decorate(fn: Callable[[Any, list[int], int], Student]):
        ARCHITECTURES[name] = ArchInfo(name, description, params, fn)
        return fn

    return decorate


class ArchitectureError(ValueError):
    """The architecture cannot be built for this input (e.g. a CNN on a non-image shape)."""


def create_student(name: str, params: dict[str, Any] | None, input_shape: Sequence[int], num_classes: int) -> Student:
    info = ARCHITECTURES[name]
    return info.build(info.params.model_validate(params or {}), list(input_shape), num_classes)


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
