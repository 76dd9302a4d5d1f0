"""What hostile dataset uploads cost the API: peak RSS and time of one upload each.

    python -m bench.datasets        → a markdown table on stdout

Three inputs from the security review (issue 13), each built here:
  - npz bomb: a 0.26 MB compressed npz whose x is 256 MiB of float64 zeros;
  - a 10 MB CSV: 64 numeric columns and a label;
  - a 34-byte JSONL line whose label is 2**27.
Each goes to a fresh `kdserve up` (defaults, and the npz bomb again with KDSERVE_MAX_DATASET_BYTES
= 64 MiB) so the API process's VmHWM (peak RSS, /proc/<pid>/status) starts from its idle value;
the table gives the API's peak before and after the upload, the answer and the request's wall
time, and the parse child's own peak (VmHWM) and time from running `python -m kdserve.service.ingest_child`
on the same file with the same settings, as the API does.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import machine, table
from kdserve.service import ingest_child
from kdserve.service.settings import Settings
from testkit.service import Service, child_processes

MiB = 1024**2


def npz_bomb() -> bytes:
    """256 MiB of float64 zeros in a deflated npz: about a quarter of a megabyte on the wire."""
    buf = io.BytesIO()
    np.savez_compressed(buf, x=np.zeros((256 * MiB // 8 // 64, 64)), y=np.zeros(256 * MiB // 8 // 64, np.int64))
    return buf.getvalue()


def csv_10mb() -> bytes:
    rng = np.random.default_rng(0)
    rows = 10 * MiB // 64 // 8
    x = rng.random((rows, 64)).round(5)
    lines = ["f" + ",f".join(str(i) for i in range(64)) + ",label"]
    lines += [",".join(f"{v:.5f}" for v in row) + f",{i % 10}" for i, row in enumerate(x)]
    return ("\n".join(lines) + "\n").encode()


def jsonl_big_label() -> bytes:
    return b'{"text": "hi", "label": 134217728}\n'


def vm_hwm_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))


def api_pid(svc: Service) -> int:
    return next(pid for pid, cmd in child_processes(svc.proc.pid) if "uvicorn" in cmd)


def child_run(filename: str, content: bytes, env: dict[str, str] | None) -> dict:
    """The parse child alone, started as the API starts it: its answer, time and peak RSS."""
    settings = Settings(**{k.removeprefix("KDSERVE_").lower(): v for k, v in (env or {}).items()})
    columns = {"label_column": "label", "text_column": "text", "text_pair_column": "text_pair"}
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / filename
        src.write_bytes(content)
        request = ingest_child.child_request(src, Path(d) / "out.npz", settings, fmt=None, filename=filename,
                                             columns=columns)
        out = subprocess.run(ingest_child.CHILD_COMMAND, input=json.dumps(request).encode(), capture_output=True,
                             check=True, env=ingest_child.child_env())
    return json.loads(out.stdout)


def measure(name: str, filename: str, content: bytes, env: dict[str, str] | None = None) -> list:
    with tempfile.TemporaryDirectory() as d, Service(Path(d), extra_env=env) as svc, svc.client(timeout=600) as c:
        pid = api_pid(svc)
        before = vm_hwm_kib(pid)
        start = time.perf_counter()
        r = c.post("/v1/datasets", files={"file": (filename, io.BytesIO(content))})
        seconds = time.perf_counter() - start
        after = vm_hwm_kib(pid)
    child = child_run(filename, content, env)
    answer = f"{r.status_code} {r.json()['error']['code'] if r.status_code >= 400 else ''}".strip()
    return [name, f"{len(content) / MiB:.2f}", f"{before / 1024:.0f}", f"{after / 1024:.0f}", answer,
            round(seconds, 2), child["peak_rss_mib"], child["seconds"]]


def main() -> None:
    cases = [("npz bomb (256 MiB float64)", "bomb.npz", npz_bomb(), None),
             ("npz bomb, KDSERVE_MAX_DATASET_BYTES=64 MiB", "bomb.npz", npz_bomb(),
              {"KDSERVE_MAX_DATASET_BYTES": str(64 * MiB)}),
             ("CSV 10 MB (64 columns)", "d.csv", csv_10mb(), None),
             ("JSONL label 2**27", "d.jsonl", jsonl_big_label(), None)]
    rows = [measure(*case) for case in cases]
    print(f"Machine: {machine()}\n")
    print(table(["upload", "MiB sent", "API peak RSS before (MiB)", "API peak RSS after (MiB)", "answer",
                 "seconds", "parse child peak RSS (MiB)", "parse child seconds"], rows))


if __name__ == "__main__":
    main()
