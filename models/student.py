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
