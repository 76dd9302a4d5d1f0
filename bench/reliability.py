"""Reliability figures: the API under polling load while jobs train, and a schemathesis run.

    python -m bench.reliability        → bench/results/reliability.md

(1) Load: a separate process sends job-status polls and list calls at ≥ 200 requests/s for 60 s
    (open loop: requests are started on schedule, whether or not earlier ones have answered) to an
    API whose two workers are training a job each; every answer is checked (200 and a JSON body).
(2) Fuzzing: schemathesis against /openapi.json, every /v1 and /v2 operation, checks
    not_a_server_error, response_schema_conformance and status_code_conformance.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


from bench.common import machine, table
from kdserve.service.settings import get_settings
from testkit import digits as dg
from testkit.service import wait_job, wait_until
from testkit.stack import Stack


async def _load(base_url: str, key: str, job_ids: list[str], rate: float, seconds: float) -> dict:
    """Open loop: request i is due at i / rate s, whatever the answers do; it waits for one of
    CONNECTIONS keep-alive connections and its latency counts from when it was due (queueing
    included). The client writes pre-built HTTP/1.1 requests on raw asyncio streams: a Python HTTP
    client library would spend more CPU than the server on these small answers, on the same cores."""
    host, port = base_url.removeprefix("http://").split(":")
    latencies: dict[str, list[float]] = {"status": [], "list": []}
    errors: list[str] = []
    free: asyncio.Queue = asyncio.Queue()
    for _ in range(CONNECTIONS):
        free.put_nowait(await asyncio.open_connection(host, int(port)))

    def request(url: str) -> bytes:
        return (f"GET {url} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n\r\n").encode()

    async def exchange(conn, raw: bytes) -> tuple[int, bytes]:
        reader, writer = conn
        writer.write(raw)
        status = int((await reader.readline()).split()[1])
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        return status, await reader.readexactly(length)

    async def one(i: int, due: float) -> None:
        kind = "list" if i % 4 == 3 else "status"
        url = "/v1/jobs?limit=20" if kind == "list" else f"/v1/jobs/{job_ids[i % len(job_ids)]}"
        conn = await free.get()
        try:
            status, body = await asyncio.wait_for(exchange(conn, request(url)), TIMEOUT_S)
            json.loads(body)
            if status != 200:
                errors.append(f"{status} {url}")
            free.put_nowait(conn)
        except (OSError, ValueError, IndexError, asyncio.TimeoutError, asyncio.IncompleteReadError) as exc:
            errors.append(f"{type(exc).__name__} {url}")
            conn[1].close()  # a broken exchange leaves the connection in an unknown state: replace it
            free.put_nowait(await asyncio.open_connection(host, int(port)))
        latencies[kind].append(time.perf_counter() - due)

    tasks, start, i = [], time.perf_counter(), 0
    while (now := time.perf_counter() - start) < seconds:
        while i < int(now * rate):
            tasks.append(asyncio.create_task(one(i, start + i / rate)))
            i += 1
        await asyncio.sleep(0.002)
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    while not free.empty():
        free.get_nowait()[1].close()
    answered = len(latencies["status"]) + len(latencies["list"]) - len(errors)
    return {"sent": i, "answered": answered, "elapsed": elapsed, "errors": errors, "latencies": latencies}


CONNECTIONS, TIMEOUT_S = 32, 10.0
MIN_RPS = 200


def load_process(base_url, key, job_ids, rate, seconds, queue) -> None:
    queue.put(asyncio.run(_load(base_url, key, job_ids, rate, seconds)))


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return 1000 * values[min(len(values) - 1, int(q * len(values)))]


def fuzz(base_url: str, key: str, examples: int, report: Path) -> tuple[str, int, dict]:
    """`st run` as CI runs it, with more examples; its JSON run report gives the figures."""
    st = shutil.which("st", path=str(Path(sys.executable).parent)) or "st"
    out = subprocess.run([st, "run", base_url + "/openapi.json", "-H", f"Authorization: Bearer {key}",
                          "--checks", "not_a_server_error,response_schema_conformance,status_code_conformance",
                          "--max-examples", str(examples), "--seed", "7", "--include-path-regex", "^/v[12]",
                          "--request-timeout", "60", "--no-color", "--report", "json",
                          "--report-json-path", str(report)], capture_output=True, text=True, timeout=3000)
    summary = json.loads(report.read_text()) if report.exists() else {}
    return out.stdout, out.returncode, summary


def misses(result: dict, rate: float, still_running: list[str], fuzz_rc: int, summary: dict) -> list[str]:
    """The issue's targets this run did not meet (empty: all met)."""
    achieved = result["answered"] / result["elapsed"]
    cases = summary.get("test_cases") or {}
    found = []
    if achieved < MIN_RPS:
        found.append(f"{achieved:.0f} requests/s achieved, the target is {MIN_RPS} (asked for {rate:.0f})")
    if result["errors"]:
        found.append(f"{len(result['errors'])} errors under load")
    if any(s != "running" for s in still_running):
        found.append(f"the jobs did not train through the whole load run: {still_running}")
    if fuzz_rc != 0 or not cases.get("generated") or cases.get("with_failures") or summary.get("errors"):
        found.append(f"schemathesis: exit code {fuzz_rc}, {cases.get('with_failures', '?')} failing cases, "
                     f"{len(summary.get('errors') or [])} errors")
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description="Polling load while two jobs train, then schemathesis; writes the "
                                 "figures to --out and exits with status 1 when a target of issue 5 is missed.")
    ap.add_argument("--out", default="bench/results/reliability.md", help="the report (Markdown)")
    ap.add_argument("--rate", type=float, default=220, help="requests/s the load process starts (target: 200)")
    ap.add_argument("--seconds", type=float, default=60, help="length of the load run")
    ap.add_argument("--examples", type=int, default=50, help="schemathesis examples per operation")
    args = ap.parse_args()
    d = dg.load()
    # two workers sharing the cores, as `kdserve up --workers 2` sets them up (and niced: KDSERVE_WORKER_NICE)
    threads = str(max(1, (os.cpu_count() or 1) // 2))
    with tempfile.TemporaryDirectory() as tmp, Stack(Path(tmp) / "stack", KDSERVE_WORKER_THREADS=threads) as stack:
        teacher = dg.save_onnx(dg.train_teacher(d, epochs=5), Path(tmp) / "t.onnx")
        data = dg.save_npz(d.x_train, d.y_train, Path(tmp) / "d.npz")
        stack.start_worker()
        stack.start_worker()
        with stack.client() as c:
            with open(teacher, "rb") as f:
                tid = c.post("/v1/teachers", files={"file": ("t.onnx", f)}).json()["id"]
            with open(data, "rb") as f:
                did = c.post("/v1/datasets", files={"file": ("d.npz", f)}).json()["id"]
            body = {"teacher_id": tid, "dataset_id": did, "student": {"architecture": "mlp"}, "method": {"name": "kd"},
                    "training": {"epochs": 10000, "max_duration_s": int(args.seconds) + 240}}
            jobs = [c.post("/v1/jobs", json=body).json()["id"] for _ in range(2)]
            # training, not just claimed: each job has finished an epoch before the load starts
            wait_until(lambda: all(c.get(f"/v1/jobs/{j}").json()["epoch"] >= 1 for j in jobs), 180, "training")
            epochs_before = [c.get(f"/v1/jobs/{j}").json()["epoch"] for j in jobs]
            queue = mp.Queue()
            proc = mp.Process(target=load_process, args=(stack.base_url, stack.api_key, jobs, args.rate,
                                                         args.seconds, queue))
            proc.start()
            result = queue.get()
            proc.join()
            still_running = [c.get(f"/v1/jobs/{j}").json()["status"] for j in jobs]
            epochs = [c.get(f"/v1/jobs/{j}").json()["epoch"] for j in jobs]
            for j in jobs:
                c.post(f"/v1/jobs/{j}/cancel")
            cancelled = [wait_job(c, j, timeout=60)["status"] for j in jobs]
        fuzz_out, fuzz_rc, summary = fuzz(stack.base_url, stack.api_key, args.examples, Path(tmp) / "st.json")
    lat = result["latencies"]
    all_lat = lat["status"] + lat["list"]
    rows = [[k, len(v), pct(v, 0.5), pct(v, 0.99), 1000 * max(v)] for k, v in
            (("GET /v1/jobs/{id}", lat["status"]), ("GET /v1/jobs?limit=20", lat["list"]), ("all", all_lat))]
    cases, ops = summary.get("test_cases") or {}, summary.get("operations") or {}
    failures = [f"{f['code']} {f['title']} ×{f['count']} ({', '.join(map(str, f['operations'][:3]))})"
                for f in summary.get("failures") or []]
    missed = misses(result, args.rate, still_running, fuzz_rc, summary)
    if any(after <= before for before, after in zip(epochs_before, epochs)):
        missed.append(f"the jobs did not advance during the load run: epochs {epochs_before} → {epochs}")
    out = [
        "# Reliability: the API under load while jobs train, and fuzzing", "",
        f"Machine: {machine()}; load average {os.getloadavg()[0]:.1f} at the end, on {os.cpu_count()} cores. "
        "Reproduce: `python -m bench.reliability`.", "",
        "Targets (issue 5): ≥ 200 requests/s for 60 s with 0 errors while two jobs train; schemathesis finds "
        "nothing. " + ("**All met.**" if not missed else "**Missed:** " + "; ".join(missed) + "."), "",
        "## (1) Polling load while two jobs train", "",
        f"A separate process sent {result['sent']} requests, open loop at {args.rate:.0f}/s over {CONNECTIONS} "
        f"keep-alive connections, and had {result['answered']} answered without error in {result['elapsed']:.1f} s "
        f"(**{result['answered'] / result['elapsed']:.0f} requests/s**; latency counts from when a request was due, "
        "so waiting for a free connection is included): three "
        "job-status polls for each list call, against `uvicorn` (one process) while two Celery workers each trained "
        f"a job on the same machine ({threads} torch thread(s) each and niceness {get_settings().worker_nice}, as "
        "`kdserve up --workers 2` runs them: training yields the CPU to the API; "
        f"jobs {still_running} during the run, from epochs {epochs_before} to {epochs}; "
        f"then cancelled: {cancelled}).",
        "",
        f"Errors: **{len(result['errors'])}**" + (f" ({result['errors'][:5]})" if result["errors"] else "") + ".", "",
        table(["request", "count", "p50 (ms)", "p99 (ms)", "max (ms)"], rows), "",
        "## (2) Schemathesis", "",
        f"`st run` with {args.examples} examples per operation (seed 7), all phases (coverage, fuzzing, stateful), "
        f"checks not_a_server_error, response_schema_conformance, status_code_conformance: "
        f"{ops.get('tested', '?')} of {ops.get('selected', '?')} selected operations tested, "
        f"**{cases.get('generated', '?')} cases run**, {cases.get('with_failures', '?')} with failures "
        f"({cases.get('unique_failures', '?')} unique), {len(summary.get('errors') or [])} errors "
        f"(exit code {fuzz_rc}). CI runs the same with 15 examples per operation (api_tests/api/test_fuzz.py).", "",
    ]
    if failures:
        out += ["Failures in this run (not fixed yet):", *[f"- {f}" for f in failures], ""]
    out += [
        "What fuzzing and the hostile-input tests found, and what was fixed:",
        "- The OpenAPI document described FastAPI's default `{\"detail\": [...]}` 422 while every error is "
        "`{\"error\": {...}}`, and left 401/404/409/413/415/429/503 undocumented: schema conformance failed on "
        "every operation. Fixed in service/openapi.py (the v2 routes document `{\"error\": \"...\"}`).",
        "- A JSON integer of 5000 digits made the JSON decoder give up and FastAPI answer 400 with its own wording: "
        "now 422 `invalid_request` like every other malformed body.",
        "- `NaN`/`Infinity` (which Python's JSON parser accepts) in method or student params passed the JSON-schema "
        "pre-flight: now refused with 422 naming the parameter.",
        "- An upload refused early (Content-Length over the cap, wrong content type) left an empty temp file in the "
        "blob store: the temp file is now created only when the file part starts arriving.",
        "",
    ]
    Path(args.out).write_text("\n".join(out))
    print("\n".join(out))
    print(fuzz_out[-3000:])
    if missed:
        sys.exit(1)


if __name__ == "__main__":
    main()
