"""Probe an uploaded teacher: check its bytes, then load it and run one synthetic batch in the
teacher jail (service/sandbox/jail.py), and answer one dict. A hostile or crashing file can only take its
jailed child down. No torch here, so the slim API image can import it too.

Who calls it: the API itself when torch is installed next to it (KDSERVE_PROBE=local), or the
worker's probe task (worker/tasks.py) when the API's image has no torch (KDSERVE_PROBE=worker).
Either way the answer is the same dict: `{"ok": true, "format": …, "input_shape": …, …}` or
`{"ok": false, "code": …, "message": …, "param": …}`, which the API turns into 201 or 4xx/503.
"""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path
from typing import Any, Sequence

from kdserve.service.sandbox.jail import JailConfig, JailedProcess, JailError
from kdserve.service.sandbox.model_files import prepare
from kdserve.service.sandbox.sniff import ModelFileError, sniff

TIMED_OUT = "the teacher did not load and run within the probe time limit"
CRASHED = "the teacher crashed its loader; the file is refused"


def refused(code: str, message: str, param: str | None = None) -> dict[str, Any]:
    return {"ok": False, "code": code, "message": message, "param": param}


def check_before_running(path: Path, fmt: str | None, folder: Path) -> tuple[str, Path]:
    """Everything that can be refused from the bytes alone, before the jail starts: pickles and
    TorchScript operators (sniff), and for ONNX its external data and operator domains, where the
    `onnx` package is installed (the jail checks again either way). Returns the format and what
    the jail is shown (kdserve.service.sandbox.model_files.prepare: the file, or `folder` filled)."""
    detected = sniff(path).format
    if fmt and fmt != detected:
        raise ModelFileError("unsupported_format", f"format says {fmt!r} but the file is {detected}", "format")
    model = prepare(path, detected, folder)
    if detected == "onnx" and importlib.util.find_spec("onnx") is not None:
        from kdserve.service.sandbox.onnx_check import load_checked

        load_checked(model)
    return detected, model


def run_probe(path: Path | str, fmt: str | None, input_shape: Sequence[int] | None, task: str | None, *,
              jail: JailConfig) -> dict[str, Any]:
    """The probe's answer for this file (never raises for a bad file: the answer says why)."""
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="kdserve-probe-", dir=jail.scratch) as tmp:
        try:
            detected, model = check_before_running(path, fmt, Path(tmp) / "model")
            with JailedProcess(model, mode=jail.mode, budget=jail.budget, python=jail.python, scratch=Path(tmp)) as child:
                reply = child.request({"op": "load", "model": child.paths["model"], "format": detected,
                                       "input_shape": list(input_shape) if input_shape is not None else None,
                                       "task": task, "device": "cpu", "out": child.paths["out"], "files": False},
                                      timeout=jail.load_timeout_s)
            return reply.header
        except ModelFileError as exc:
            return refused(exc.code, exc.message, exc.param)
        except JailError as exc:
            if exc.code == "sandbox_unavailable":
                return refused("sandbox_unavailable", exc.message, None)
            if exc.code == "timeout":
                return refused("unsupported_format", TIMED_OUT, "file")
            return refused("unsupported_format", f"{CRASHED} ({exc.message})", "file")
