"""The student contract every architecture follows (kdserve.models.zoo builds them, kdserve.models.text
has the text encoders): a `body` that maps a sample to a feature vector and a linear `head` that
maps features to logits. Methods that need more than logits (auxiliary heads, feature hints)
attach to `body`'s output, so every architecture supports them."""

from __future__ import annotations

import torch
from torch import nn


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


class InputScaling(nn.Flatten):
    """The first layer of a student on feature vectors: flatten, then (x − shift) · scale per
    feature. Identity until `set()` (shift 0, scale 1); the worker sets it from the training split
    when the features are on very different scales (training.standardize_inputs), and the exported
    ONNX graph carries it, so the student takes the raw features its teacher took."""

    def __init__(self, width: int):
        super().__init__()
        self.register_buffer("shift", torch.zeros(width))
        self.register_buffer("scale", torch.ones(width))
        self.active = False  # unset: a plain flatten (no work per batch, no ops in the exported graph)

    def set(self, shift: torch.Tensor, scale: torch.Tensor) -> None:
        self.shift.copy_(shift)
        self.scale.copy_(scale)
        self.active = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = super().forward(x)
        return (h - self.shift) * self.scale if self.active else h

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # weights kept before students had this layer (a plain Flatten: no buffers) load as identity
        for name, fill in (("shift", self.shift.new_zeros), ("scale", self.shift.new_ones)):
            state_dict.setdefault(prefix + name, fill(self.shift.shape))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def input_scaling(student: nn.Module) -> InputScaling | None:
    """The student's InputScaling layer, when it has one (students on feature vectors)."""
    body = getattr(student, "body", None)
    first = body[0] if isinstance(body, nn.Sequential) and len(body) else None
    return first if isinstance(first, InputScaling) else None
