"""Probe an uploaded teacher in a child process: `python -m models.teachers FILE` loads it and runs
one synthetic batch, and prints one JSON line. A hostile or crashing file can only take the child
down. Standard library only (no torch here), so the slim API image can import it too.

Who calls it: the API itself when torch is installed next to it (KDSERVE_PROBE=local), or the
worker's probe task (worker/tasks.py) when the API's image has no torch (KDSERVE_PROBE=worker).
Either way the answer is the same dict: `{"ok": true, "format": …, "input_shape": …, …}` or
`{"ok": false, "code": …, "message": …, "param": …}`, which the API turns into 201 or 422.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any, Sequence

TIMED_OUT = "the teacher did not load and run within the probe time limit"
CRASHED = "the teacher crashed its loader; the file is refused"


def refused(code: str, message: str, param: str | None = None) -> dict[str, Any]:
    return {"ok": False, "code": code, "message": message, "param": param}


def run_probe(path: Path | str, fmt: str | None, input_shape: Sequence[int] | None, task: str | None, *,
              python: str, timeout_s: float) -> dict[str, Any]:
    """The probe's answer for this file (never raises for a bad file: the answer says why)."""
    cmd = [python, "-m", "models.teachers", str(path)]
    if fmt:
        cmd += ["--format", fmt]
    if input_shape is not None:
        cmd += ["--input-shape", json.dumps(list(input_shape))]
    if task is not None:
        cmd += ["--task", task]
    # HF_HUB_OFFLINE: a Hugging Face folder is loaded from its own files, nothing is fetched.
    # CUDA_VISIBLE_DEVICES="": a probe on a GPU worker never takes GPU memory from a running job.
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return refused("unsupported_format", TIMED_OUT, "file")
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        return refused("unsupported_format", CRASHED, "file")
    try:
        return json.loads(lines[-1])
    except json.JSONDecodeError:
        return refused("unsupported_format", CRASHED, "file")
