"""Load an uploaded teacher into one interface, whatever its format.

    teacher = load_teacher(path, "onnx", input_shape=[64])
    logits = teacher(x)              # x: float32 tensor [B, *input_shape] -> [B, num_classes]

TorchScript runs in torch (on the worker's device); ONNX runs in onnxruntime as a black box that
only has to produce logits. Nothing here unpickles: `models.sniff` refuses pickles first.

`python -m models.teachers PATH [--format F] [--input-shape JSON]` probes a file (sniff, load, run
one synthetic batch) and prints one JSON line; the API runs it in a child process so that a
hostile or crashing file can never take the API down, and the API process never imports torch.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from models.sniff import ModelFileError, sniff

SUPPORTED = ("torchscript", "onnx")


class Teacher:
    format: str
    input_shape: list[int]
    input_dtype: str = "float32"
    num_classes: int
    num_parameters: int

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise TypeError


def _pick_logits(out: Any) -> torch.Tensor:
    """Teachers may return a tensor, a tuple (logits first) or a dict with a `logits` entry."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        if "logits" in out:
            return out["logits"]
        return next(iter(out.values()))
    if isinstance(out, (tuple, list)) and out:
        return out[0]
    raise ModelFileError("teacher_output_mismatch", f"the teacher returned {type(out).__name__}, not a tensor")


class TorchScriptTeacher(Teacher):
    format = "torchscript"

    def __init__(self, path: Path, input_shape: Sequence[int] | None, device: str = "cpu"):
        try:
            self.module = torch.jit.load(str(path), map_location=device).eval()
        except Exception as exc:
            raise ModelFileError("unsupported_format", f"TorchScript archive does not load: {_first_line(exc)}")
        self.device = device
        self.num_parameters = int(sum(p.numel() for p in self.module.parameters()))
        self.input_shape = list(input_shape) if input_shape else self._guess_input_shape()
        self.num_classes = 0

    def _guess_input_shape(self) -> list[int]:
        first = next(iter(self.module.parameters()), None)
        if first is not None and first.dim() == 2:  # a Linear layer first: [out, in]
            return [int(first.shape[1])]
        raise ModelFileError(
            "invalid_request", "cannot tell the input shape of this TorchScript model; pass input_shape", "input_shape"
        )

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return _pick_logits(self.module(x.to(self.device, non_blocking=True))).float()


class OnnxTeacher(Teacher):
    format = "onnx"

    def __init__(self, path: Path, input_shape: Sequence[int] | None, device: str = "cpu"):
        import onnx
        import onnxruntime as ort

        try:
            proto = onnx.load(str(path), load_external_data=False)
            onnx.checker.check_model(proto)
        except Exception as exc:
            raise ModelFileError("unsupported_format", f"not a valid ONNX model: {_first_line(exc)}")
        self.num_parameters = int(sum(int(np.prod(t.dims)) for t in proto.graph.initializer))
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.startswith("cuda") else ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(proto.SerializeToString(), providers=providers)
        except Exception as exc:
            raise ModelFileError("unsupported_format", f"onnxruntime cannot run this model: {_first_line(exc)}")
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ModelFileError("unsupported_format", f"an ONNX teacher needs exactly one input, this one has {len(inputs)}")
        self.input_name = inputs[0].name
        if inputs[0].type not in ("tensor(float)", "tensor(double)"):
            raise ModelFileError("unsupported_format", f"ONNX input must be a float tensor, not {inputs[0].type}")
        self.np_dtype = np.float64 if inputs[0].type == "tensor(double)" else np.float32
        declared = [d if isinstance(d, int) and d > 0 else None for d in inputs[0].shape[1:]]
        if input_shape:
            self.input_shape = list(input_shape)
            if len(declared) != len(self.input_shape) or any(
                d is not None and d != s for d, s in zip(declared, self.input_shape)
            ):
                raise ModelFileError(
                    "teacher_output_mismatch",
                    f"input_shape {self.input_shape} does not match the model's declared input {inputs[0].shape}",
                    "input_shape",
                )
        elif all(d is not None for d in declared):
            self.input_shape = [int(d) for d in declared]
        else:
            raise ModelFileError("invalid_request", f"the model's input {inputs[0].shape} has free dimensions; pass input_shape", "input_shape")
        outputs = self.session.get_outputs()
        names = [o.name for o in outputs]
        self.output_name = "logits" if "logits" in names else names[0]
        self.num_classes = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        arr = x.detach().cpu().numpy().astype(self.np_dtype, copy=False)
        (out,) = self.session.run([self.output_name], {self.input_name: arr})
        return torch.from_numpy(np.asarray(out)).float()


def load_teacher(path: Path, fmt: str | None = None, input_shape: Sequence[int] | None = None,
                 device: str = "cpu") -> Teacher:
    """Sniff, load and run one synthetic batch; sets num_classes. Raises ModelFileError."""
    detected = sniff(Path(path)).format
    if fmt and fmt != detected:
        raise ModelFileError("unsupported_format", f"format says {fmt!r} but the file is {detected}", "format")
    if detected not in SUPPORTED:
        raise ModelFileError("unsupported_format", f"teacher format {detected!r} is not supported yet", "format")
    teacher: Teacher = (TorchScriptTeacher if detected == "torchscript" else OnnxTeacher)(Path(path), input_shape, device)
    batch = torch.zeros([2, *teacher.input_shape])
    try:
        out = teacher(batch)
    except ModelFileError:
        raise
    except Exception as exc:
        raise ModelFileError(
            "teacher_output_mismatch",
            f"the teacher fails on input of shape {list(batch.shape)}: {_first_line(exc)}",
            "input_shape",
        )
    if out.dim() != 2 or out.shape[0] != 2 or out.shape[1] < 1:
        raise ModelFileError(
            "teacher_output_mismatch", f"the teacher must return [batch, num_classes] logits, got shape {list(out.shape)}"
        )
    if not torch.isfinite(out).all():
        raise ModelFileError("teacher_output_mismatch", "the teacher returns NaN or inf on a zero batch")
    teacher.num_classes = int(out.shape[1])
    return teacher


@torch.no_grad()
def teacher_logits(teacher: Teacher, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """The teacher's logits for every row of x, computed once, on the CPU."""
    return torch.cat([teacher(x[i : i + batch_size]).cpu() for i in range(0, len(x), batch_size)])


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def _probe_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m models.teachers", description="probe an uploaded teacher")
    ap.add_argument("path")
    ap.add_argument("--format", default=None)
    ap.add_argument("--input-shape", default=None, help="JSON list, per-sample shape")
    args = ap.parse_args(argv)
    try:
        shape = json.loads(args.input_shape) if args.input_shape else None
        t = load_teacher(Path(args.path), args.format, shape)
        result = {"ok": True, "format": t.format, "input_shape": t.input_shape, "input_dtype": t.input_dtype,
                  "num_classes": t.num_classes, "num_parameters": t.num_parameters}
    except ModelFileError as exc:
        result = {"ok": False, "code": exc.code, "message": exc.message, "param": exc.param}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    torch.set_num_threads(1)
    sys.exit(_probe_main(sys.argv[1:]))
