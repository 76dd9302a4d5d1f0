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
    """One interface over every format.

    `output_names` lists the model's outputs; `logits_name` is the one that holds the class
    logits (an output called "logits", else the first). The others (hidden states, embeddings)
    can serve as feature hints for methods such as FitNets or LELP."""

    format: str
    input_shape: list[int]
    input_dtype: str = "float32"
    num_classes: int = 0
    num_parameters: int
    output_names: list[str]
    logits_name: str

    def run(self, x: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:  # pragma: no cover
        raise TypeError

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x, [self.logits_name])[self.logits_name]


def named_outputs(out: Any) -> dict[str, torch.Tensor]:
    """A tensor is `logits`; a tuple's tensors are "0", "1", …; a dict keeps its keys."""
    if isinstance(out, torch.Tensor):
        return {"logits": out}
    if isinstance(out, dict):
        named = {str(k): v for k, v in out.items() if isinstance(v, torch.Tensor)}
    elif isinstance(out, (tuple, list)):
        named = {str(i): v for i, v in enumerate(out) if isinstance(v, torch.Tensor)}
    else:
        named = {}
    if not named:
        raise ModelFileError("teacher_output_mismatch", f"the teacher returned {type(out).__name__} without tensors")
    return named


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
        self.output_names, self.logits_name = [], ""

    def _guess_input_shape(self) -> list[int]:
        first = next(iter(self.module.parameters()), None)
        if first is not None and first.dim() == 2:  # a Linear layer first: [out, in]
            return [int(first.shape[1])]
        raise ModelFileError(
            "invalid_request", "cannot tell the input shape of this TorchScript model; pass input_shape", "input_shape"
        )

    def discover_outputs(self, out: dict[str, torch.Tensor]) -> None:
        self.output_names = list(out)
        self.logits_name = "logits" if "logits" in out else self.output_names[0]

    def run(self, x: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            out = named_outputs(self.module(x.to(self.device, non_blocking=True)))
        if not self.output_names:
            self.discover_outputs(out)
        return {n: out[n].float() for n in names}


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
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.logits_name = "logits" if "logits" in self.output_names else self.output_names[0]

    def run(self, x: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
        arr = x.detach().cpu().numpy().astype(self.np_dtype, copy=False)
        outs = self.session.run(list(names), {self.input_name: arr})
        return {n: torch.from_numpy(np.asarray(o)).float() for n, o in zip(names, outs)}


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
        if isinstance(teacher, TorchScriptTeacher):
            with torch.no_grad():
                teacher.discover_outputs(named_outputs(teacher.module(batch.to(teacher.device))))
        outputs = teacher.run(batch, teacher.output_names)
    except ModelFileError:
        raise
    except Exception as exc:
        raise ModelFileError(
            "teacher_output_mismatch",
            f"the teacher fails on input of shape {list(batch.shape)}: {_first_line(exc)}",
            "input_shape",
        )
    out = outputs[teacher.logits_name]
    teacher.output_shapes = {n: list(o.shape[1:]) for n, o in outputs.items()}
    if out.dim() != 2 or out.shape[0] != 2 or out.shape[1] < 1:
        raise ModelFileError(
            "teacher_output_mismatch", f"the teacher must return [batch, num_classes] logits, got shape {list(out.shape)}"
        )
    if not torch.isfinite(out).all():
        raise ModelFileError("teacher_output_mismatch", "the teacher returns NaN or inf on a zero batch")
    teacher.num_classes = int(out.shape[1])
    return teacher


@torch.no_grad()
def teacher_outputs(teacher: Teacher, x: torch.Tensor, feature: str | None = None,
                    batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The teacher's logits (and the named feature output) for every row of x, in one pass, on the CPU."""
    names = [teacher.logits_name] + ([feature] if feature else [])
    parts = [teacher.run(x[i : i + batch_size], names) for i in range(0, len(x), batch_size)]
    logits = torch.cat([p[teacher.logits_name].cpu() for p in parts])
    return logits, (torch.cat([p[feature].cpu() for p in parts]) if feature else None)


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
                  "num_classes": t.num_classes, "num_parameters": t.num_parameters,
                  "outputs": [{"name": n, "shape": t.output_shapes[n], "logits": n == t.logits_name}
                              for n in t.output_names]}
    except ModelFileError as exc:
        result = {"ok": False, "code": exc.code, "message": exc.message, "param": exc.param}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    torch.set_num_threads(1)
    sys.exit(_probe_main(sys.argv[1:]))
