"""Real data without a network: scikit-learn's bundled digits (1797 8×8 images, 10 classes), a
teacher trained on it here, and the files a user would upload (TorchScript, ONNX, npz, CSV)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn


@dataclass
class Digits:
    x_train: np.ndarray  # float32 [N, 64], scaled to [0, 1]
    y_train: np.ndarray
    x_test: np.ndarray   # held out: never uploaded
    y_test: np.ndarray


def load(test_fraction: float = 0.2, seed: int = 0) -> Digits:
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(len(x) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return Digits(x[train], y[train].astype(np.int64), x[test], y[test].astype(np.int64))


def train_teacher(d: Digits, hidden: tuple[int, ...] = (256, 256), epochs: int = 40, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    width = d.x_train.shape[1]
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    model = nn.Sequential(*layers, nn.Linear(width, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.from_numpy(d.x_train), torch.from_numpy(d.y_train)
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.asarray(logits).argmax(1) == y))


def save_torchscript(model: nn.Module, path: Path) -> Path:
    torch.jit.trace(model, torch.zeros(1, 64)).save(str(path))
    return path


def save_onnx(model: nn.Module, path: Path, width: int = 64) -> Path:
    torch.onnx.export(model, (torch.zeros(2, width),), str(path), input_names=["input"], output_names=["logits"],
                      dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True, external_data=False)
    return path


def save_npz(x: np.ndarray, y: np.ndarray | None, path: Path) -> Path:
    with open(path, "wb") as f:
        np.savez(f, x=x, **({"y": y} if y is not None else {}))
    return path


def save_csv(x: np.ndarray, y: np.ndarray | None, path: Path, label_position: int = 5) -> Path:
    """Features as columns f0..f63 with the label column placed in the middle of the header."""
    header = [f"f{i}" for i in range(x.shape[1])]
    if y is not None:
        header.insert(label_position, "digit")
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for i, row in enumerate(x):
            cells = [f"{v:.6g}" for v in row]
            if y is not None:
                cells.insert(label_position, str(int(y[i])))
            w.writerow(cells)
    return path

