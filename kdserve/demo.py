"""What `kdserve demo` needs besides the API: a teacher to distil and data to distil it on.

scikit-learn bundles the UCI digits (1797 8×8 images, 10 classes), so the demo needs no network:
it trains a 2-hidden-layer MLP teacher here (a few seconds on a CPU), saves it as TorchScript and
the data as CSV (the label column in the middle of the header, as real exports often have it),
and keeps a fifth of the digits back to check the downloaded student in onnxruntime.

This module imports torch: only the `demo` command imports it, inside the command, so the rest of
the CLI, the SDK and the API stay torch-free.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

LABEL_COLUMN = "digit"


@dataclass
class DemoFiles:
    teacher: Path         # TorchScript
    dataset: Path         # CSV with a `digit` label column
    x_test: np.ndarray    # held out: never uploaded
    y_test: np.ndarray
    teacher_test_accuracy: float


def prepare(workdir: Path, seed: int = 0, epochs: int = 40) -> DemoFiles:
    workdir.mkdir(parents=True, exist_ok=True)
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    order = np.random.default_rng(seed).permutation(len(x))
    test, train = order[: len(x) // 5], order[len(x) // 5:]

    torch.manual_seed(seed)
    teacher = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    optimizer = torch.optim.Adam(teacher.parameters(), lr=1e-3)
    xt, yt = torch.from_numpy(x[train]), torch.from_numpy(y[train].astype(np.int64))
    for _ in range(epochs):
        for idx in torch.randperm(len(xt)).split(64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(teacher(xt[idx]), yt[idx]).backward()
            optimizer.step()
    teacher.eval()
    with torch.no_grad():
        accuracy = float((teacher(torch.from_numpy(x[test])).argmax(1).numpy() == y[test]).mean())

    teacher_path = workdir / "digits-teacher.pt"
    torch.jit.trace(teacher, torch.zeros(1, 64)).save(str(teacher_path))
    dataset_path = workdir / "digits.csv"
    with open(dataset_path, "w", newline="") as f:
        writer = csv.writer(f)
        header = [f"px{i}" for i in range(64)]
        header.insert(32, LABEL_COLUMN)
        writer.writerow(header)
        for row, label in zip(x[train], y[train]):
            cells = [f"{v:.6g}" for v in row]
            cells.insert(32, str(int(label)))
            writer.writerow(cells)
    return DemoFiles(teacher_path, dataset_path, x[test], y[test].astype(np.int64), accuracy)


def onnx_accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    """Accuracy of a downloaded ONNX student in onnxruntime on the held-out digits."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: x})[0]
    return float((logits.argmax(1) == y).mean())
