"""ONNX export of a trained student and the parity check that gates it.

Follows Optimum's exporter: export, then run the file in onnxruntime on real inputs and compare
with the PyTorch reference output by output.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
import warnings
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

INPUT_NAME, OUTPUT_NAME = "input", "logits"


def export_onnx(model: torch.nn.Module, input_shape: list[int], path: Path, opset: int = 17) -> None:
    """Write `model` (in eval mode, on the CPU) as one ONNX file with a dynamic batch dimension."""
    model = model.eval().cpu()
    example = (torch.zeros([2, *input_shape]),)
    with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        torch.onnx.export(
            model, example, str(path),
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1 << 20)},),
            opset_version=opset, dynamo=True, external_data=False, optimize=True,
        )


@dataclass
class Parity:
    max_abs_diff: float
    max_rel_diff: float
    argmax_agreement: float
    onnx_logits: np.ndarray


def ort_session(path: Path, device: str = "cpu"):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    providers = ["CPUExecutionProvider"]
    if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    return ort.InferenceSession(str(path), opts, providers=providers)


def run_onnx(session, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    outs = [session.run([OUTPUT_NAME], {INPUT_NAME: x[i : i + batch_size]})[0] for i in range(0, len(x), batch_size)]
    return np.concatenate(outs)


def check_parity(onnx_path: Path, reference_logits: np.ndarray, x: np.ndarray) -> Parity:
    """Compare onnxruntime's logits on x with the PyTorch reference logits for the same x."""
    got = run_onnx(ort_session(onnx_path), x.astype(np.float32))
    diff = np.abs(got - reference_logits)
    rel = diff / np.maximum(np.abs(reference_logits), 1e-6)
    agree = float(np.mean(got.argmax(1) == reference_logits.argmax(1))) if len(x) else 1.0
    return Parity(float(diff.max(initial=0.0)), float(rel.max(initial=0.0)), agree, got)


def latency_ms(onnx_path: Path, input_shape: list[int], batch: int = 1, repeats: int = 200) -> float:
    """Median wall time of one onnxruntime call at this batch size, in milliseconds."""
    session = ort_session(onnx_path)
    x = np.random.default_rng(0).standard_normal([batch, *input_shape]).astype(np.float32)
    for _ in range(10):
        session.run([OUTPUT_NAME], {INPUT_NAME: x})
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        session.run([OUTPUT_NAME], {INPUT_NAME: x})
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
