"""Another tenant's GET latency while large JSON bodies are being parsed (security review, issue 13).

    python -m bench.api_limits                   # this checkout
    python -m bench.api_limits --repo DIR        # the service from another checkout (e.g. `git archive`
                                                 # of the commit before, unpacked), for "before"

Starts `kdserve up` (testkit/service.py). Tenant b polls GET /v1/jobs every 20 ms for the whole
run; tenant a sends, one after another, ROUNDS bodies of each size to /v2 infer and /v1 predict
of a model that does not exist, so the answer comes once the body is parsed (404, or 413 when a
cap refuses it). The table: each body's answer and time, and tenant b's latency meanwhile against
an idle baseline. Prints markdown.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from bench.common import machine, table
from testkit import service as harness

MiB = 1024**2
ROUNDS = 3
WIDTH = 340  # floats per row: 4096 rows (the default row cap) of these make about 16 MiB


def body(route: str, mib: float) -> bytes:
    """About `mib` MiB of JSON: rows of WIDTH floats with nine decimals."""
    row = np.round(np.random.default_rng(0).uniform(0, 1, (1, WIDTH)), 9).tolist()
    rows = int(mib * MiB / (len(json.dumps(row)) + 2))
    data = np.round(np.random.default_rng(0).uniform(0, 1, (rows, WIDTH)), 9).tolist()
    if route.startswith("/v2"):
        tensor = {"name": "input", "shape": [rows, WIDTH], "datatype": "FP32", "data": data}
        return json.dumps({"inputs": [tensor]}).encode()
    return json.dumps({"inputs": data}).encode()


def poll(base_url: str, key: str, stop: threading.Event, out: list[tuple[float, float]]) -> None:
    """(start time, latency) of GET /v1/jobs every 20 ms until stop."""
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
        while not stop.is_set():
            t0 = time.perf_counter()
            assert c.get("/v1/jobs").status_code == 200
            out.append((t0, time.perf_counter() - t0))
            time.sleep(0.02)


def stats(latencies: list[float]) -> list[float]:
    ms = np.array(latencies) * 1000
    return [float(np.median(ms)), float(np.percentile(ms, 99)), float(ms.max())]


def run(sizes: list[float]) -> str:
    rows = []
    with harness.Service(Path(tempfile.mkdtemp(prefix="kd-bench-limits-"))) as svc:
        other = svc.create_key("b")
        polled: list[tuple[float, float]] = []
        stop = threading.Event()
        poller = threading.Thread(target=poll, args=(svc.base_url, other, stop, polled))
        poller.start()
        time.sleep(3)
        rows.append(["(idle)", "", "", "", *stats([lat for _, lat in polled])])
        with svc.client(timeout=300) as a:
            for route in ("/v2/models/mdl_none/infer", "/v1/models/mdl_none/predict"):
                for mib in sizes:
                    raw = body(route, mib)
                    seen, answers, t_start = len(polled), [], time.perf_counter()
                    for _ in range(ROUNDS):
                        t0 = time.perf_counter()
                        r = a.post(route, content=raw, headers={"Content-Type": "application/json"})
                        answers.append((r.status_code, time.perf_counter() - t0))
                    during = [lat for t0, lat in polled[seen:] if t0 >= t_start]
                    rows.append([route, f"{len(raw) / MiB:.1f}", answers[0][0], max(s for _, s in answers),
                                 *stats(during)])
        stop.set()
        poller.join()
    return table(["route", "body MiB", "answer", f"slowest of {ROUNDS} (s)", "tenant b GET p50 ms", "p99 ms",
                  "max ms"], rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", type=Path, help="run the service from this checkout instead")
    ap.add_argument("--sizes", default="15.5,57", help="body sizes in MiB (15.5: under the default 16 MiB cap)")
    args = ap.parse_args()
    if args.repo:
        harness.REPO = args.repo.resolve()  # Service starts `python -m kdserve.cli up` from REPO
    print(f"{machine()}\n\nservice code: {harness.REPO}\n")
    print(run([float(s) for s in args.sizes.split(",")]))


if __name__ == "__main__":
    main()
