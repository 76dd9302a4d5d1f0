"""Security figures: every attack class of the security review, tried with one ordinary tenant key
against a running `kdserve up`, while another tenant polls its job's status.

    python -m bench.security        → bench/results/security.md

For each class: the variants sent, what the service answered, and the other tenant's poll latency
(p50/p99/max) while the attack ran. An attack that takes less than MIN_WINDOW_S is repeated until
it has run that long, so every row's percentiles come from a few hundred polls. The victim polls
in a closed loop from its own process (one request at a time, POLL_GAP_S apart), so its numbers
are what one client of another tenant would see.
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import httpx
import numpy as np
import torch

from bench.common import machine, table
from testkit import digits as dg
from testkit import hostile
from testkit.service import Service, wait_job

MiB = 1024**2
MIN_WINDOW_S = 6.0
POLL_GAP_S = 0.02
RESULTS = Path(__file__).parent / "results" / "security.md"


@dataclass
class Attack:
    name: str        # the attack class, as the review named it
    tried: str       # what was sent
    run: Callable[["Context"], list[str]]  # sends one round of variants; returns an outcome per variant


@dataclass
class Context:
    svc: Service
    client: httpx.Client  # the attacker's, tenant A
    key: str
    files: dict[str, Path]
    tmp: Path
    job_spec: dict = field(default_factory=dict)  # a valid job of the attacker's own teacher and data
    job_id: str = ""          # its finished job
    model_id: str = ""        # and the model it published


# ---- the victim -----------------------------------------------------------------------------------


def _poll(base_url: str, key: str, job_id: str, stop: mp.Event, out: mp.Queue) -> None:
    samples = []
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as c:
        while not stop.is_set():
            t = time.time()
            try:
                ok = c.get(f"/v1/jobs/{job_id}").status_code == 200
            except httpx.HTTPError:
                ok = False
            samples.append((t, (time.time() - t) * 1000, ok))
            time.sleep(POLL_GAP_S)
    out.put(samples)


def window_stats(samples: list[tuple[float, float, bool]], t0: float, t1: float) -> dict:
    inside = [(ms, ok) for t, ms, ok in samples if t0 <= t <= t1]
    ms = np.array([m for m, _ in inside] or [float("nan")])
    return {"polls": len(inside), "errors": sum(not ok for _, ok in inside), "p50": float(np.percentile(ms, 50)),
            "p99": float(np.percentile(ms, 99)), "max": float(ms.max())}


# ---- the attacks: teachers ------------------------------------------------------------------------


def _upload(ctx: Context, name: str, content: bytes, **extra) -> str:
    r = ctx.client.post("/v1/teachers", files={"file": (name, io.BytesIO(content)), **extra})
    return f"{r.status_code} {r.json().get('error', {}).get('code', 'created') if r.headers.get('content-type', '').startswith('application/json') else ''}"


def teachers_reading_files(ctx: Context) -> list[str]:
    targets = [ctx.svc.data_dir / "api_key", ctx.svc.data_dir / "kdserve.db", Path("/etc/passwd"), Path("/proc/self/environ")]
    return [_upload(ctx, "t.pt", hostile.archive(hostile.ReadsAFile(str(p.resolve())))) for p in targets]


def teachers_writing_files(ctx: Context) -> list[str]:
    targets = [ctx.svc.data_dir / "argparse.py", ctx.tmp / "planted.py"]
    outcomes = [_upload(ctx, "t.pt", hostile.archive(hostile.WritesAFile(str(p.resolve())))) for p in targets]
    outcomes.append(_upload(ctx, "t.pt", hostile.archive(hostile.Saves())))
    planted = [p for p in targets if p.exists()]
    return outcomes + ([f"PLANTED {planted}"] if planted else [])


def teachers_with_custom_code(ctx: Context) -> list[str]:
    plain = hostile.archive(hostile.Plain())
    return [_upload(ctx, "t.pt", hostile.rewrite_code(plain, "torch.relu(", new)) for new in hostile.CUSTOM_CODE]


def onnx_external_data(ctx: Context) -> list[str]:
    key = str((ctx.svc.data_dir / "api_key").resolve())
    return [_upload(ctx, "t.onnx", hostile.onnx_reading(loc, where))
            for loc in ("api_key", "../../api_key", key, "/etc/passwd") for where in ("initializer", "constant", "subgraph")]


def onnx_custom_domains(ctx: Context) -> list[str]:
    return [_upload(ctx, "t.onnx", hostile.onnx_custom_domain(d)) for d in ("com.evil", "ai.onnx.contrib", "org.pytorch.aten")]


# ---- the attacks: datasets ------------------------------------------------------------------------


def _dataset(ctx: Context, name: str, content: bytes, **form) -> str:
    r = ctx.client.post("/v1/datasets", files={"file": (name, io.BytesIO(content))}, data=form)
    body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
    if r.status_code == 201:
        ctx.client.delete(f"/v1/datasets/{body['id']}")
    return f"{r.status_code} {body.get('error', {}).get('code', 'created')}"


def npz_bombs(ctx: Context) -> list[str]:
    """The review's bomb (0.26 MB of deflated zeros declaring 256 MiB of float64) and a header
    declaring 32 GiB over a 1 MiB member."""
    if not hasattr(npz_bombs, "cache"):
        bombs = []
        for rows, zeros in ((1 << 19, 256 << 20), (1 << 26, 1 << 20)):
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf, zf.open("x.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False, "shape": (rows, 64)})
                for _ in range(zeros >> 20):
                    f.write(b"\0" * (1 << 20))
            bombs.append(buf.getvalue())
        npz_bombs.cache = bombs
    return [_dataset(ctx, "bomb.npz", bomb) for bomb in npz_bombs.cache]


def csv_and_jsonl_traps(ctx: Context) -> list[str]:
    big_field = "1," * 63 + "9" * (200 * 1024) + "\n"
    return [_dataset(ctx, "l.jsonl", b'{"text":"a","label":134217728}\n'),
            _dataset(ctx, "l.csv", b"a,label\n1," + str(2**62).encode() + b"\n", label_column="label"),
            _dataset(ctx, "l.csv", b"a,label\n1,1e300\n", label_column="label"),
            _dataset(ctx, "f.csv", ("f" + ",f".join(map(str, range(63))) + "\n" + big_field).encode()),
            _dataset(ctx, "x.npz", _npy(np.zeros((4, 2), np.float32)))]


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


# ---- the attacks: requests -------------------------------------------------------------------------


def bodies_without_a_key(ctx: Context) -> list[str]:
    """57 MiB of JSON offered without a key, declared and chunked, to the three JSON routes."""
    outcomes = []
    for route in ("/v1/jobs", f"/v1/models/{ctx.model_id}/predict", f"/v2/models/{ctx.model_id}/infer"):
        for chunked in (False, True):
            status, sent, _ = hostile.send(ctx.svc, route, {}, 57 * MiB, chunked)
            outcomes.append(f"{status} after {sent // MiB} MiB sent" if sent >= 8 * MiB else f"{status} (under 8 MiB read)")
    return outcomes


def oversized_bodies(ctx: Context) -> list[str]:
    """With a key: 57 MiB to the same routes (the cap is 16 MiB), declared and chunked."""
    headers = {"Authorization": f"Bearer {ctx.key}"}
    outcomes = []
    for route in ("/v1/jobs", f"/v1/models/{ctx.model_id}/predict", f"/v2/models/{ctx.model_id}/infer"):
        for chunked in (False, True):
            status, sent, _ = hostile.send(ctx.svc, route, headers, 57 * MiB, chunked)
            outcomes.append(f"{status} (under 32 MiB read)" if sent < 32 * MiB else f"{status} after {sent // MiB} MiB")
    return outcomes


def too_many_rows(ctx: Context) -> list[str]:
    rows = np.zeros((5000, 64), np.float32)
    infer = {"inputs": [{"name": "input", "shape": [5000, 64], "datatype": "FP32", "data": rows.ravel().tolist()}]}
    return [_status(ctx.client.post(f"/v1/models/{ctx.model_id}/predict", json={"inputs": rows.tolist()})),
            _status(ctx.client.post(f"/v2/models/{ctx.model_id}/infer", json=infer))]


def zip_member_floods(ctx: Context) -> list[str]:
    if not hasattr(zip_member_floods, "path"):
        zip_member_floods.path = hostile.many_members_zip(ctx.tmp / "many.npz", 300_000)
    outcomes = []
    for route in ("/v1/datasets", "/v1/teachers"):
        with open(zip_member_floods.path, "rb") as f:
            outcomes.append(_status(ctx.client.post(route, files={"file": ("many.npz", f)})))
    return outcomes


def multipart_field_floods(ctx: Context) -> list[str]:
    boundary = "kdsec"
    fields = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="f{i}"\r\n\r\n'.encode() + b"v" * 60_000
                      + b"\r\n" for i in range(2000))
    body = fields + f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="d.csv"\r\n\r\nx\n1\r\n' \
        f"--{boundary}--\r\n".encode()
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    return [_status(ctx.client.post(route, content=body, headers=headers)) for route in ("/v1/datasets", "/v1/teachers")]


def slow_probe_floods(ctx: Context) -> list[str]:
    """40 uploads at once, from four tenants, of a teacher that takes seconds to probe."""
    if not hasattr(slow_probe_floods, "keys"):
        slow_probe_floods.keys = [ctx.svc.create_key(f"attacker{i}") for i in range(4)]
        slow_probe_floods.content = hostile.archive(SlowTeacher())

    def upload(i: int) -> str:
        with ctx.svc.client(slow_probe_floods.keys[i % 4], timeout=600) as c:
            return _status(c.post("/v1/teachers", files={"file": ("slow.pt", slow_probe_floods.content)},
                                  data={"input_shape": "[64]"}))

    with ThreadPoolExecutor(40) as pool:
        return list(pool.map(upload, range(40)))


def former_500s(ctx: Context) -> list[str]:
    """Inputs that answered 500 before the review's fixes."""
    m = ctx.model_id
    shape = {"inputs": [{"name": "input", "shape": [0, 10**20], "datatype": "FP32", "data": []}]}
    head = json.dumps({"inputs": [{"name": "input", "shape": [2**40, 0, 2**40], "datatype": "FP32",
                                   "parameters": {"binary_data_size": 0}}]}).encode()
    c = ctx.client
    return [_status(c.post(f"/v2/models/{m}/infer", json=shape)),
            _status(c.post(f"/v2/models/{m}/infer", content=head, headers={"Inference-Header-Content-Length": str(len(head))})),
            _status(c.get(f"/v1/jobs/{ctx.job_id}/events", headers={"Last-Event-ID": "²".encode(), "Accept": "text/event-stream"})),
            _status(c.get(f"/v1/jobs/{ctx.job_id}/events", params={"after": "9" * 5000})),
            _status(c.get("/v1/jobs", params={"after": "job_" + "9" * 5000})),
            _status(c.get(f"/v1/models/{m}/download", headers={"Range": "bytes=" + "9" * 5000 + "-"})),
            _status(c.post("/v1/jobs", json={**ctx.job_spec, "metadata": {"name": "модель ☃"}}))]


def idempotency_races(ctx: Context) -> list[str]:
    """Ten requests at once with one Idempotency-Key: one job, the same answer ten times."""
    key = f"race-{time.monotonic_ns()}"
    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(lambda _: ctx.client.post("/v1/jobs", json=ctx.job_spec, headers={"Idempotency-Key": key}),
                                range(10)))
    ids = {r.json().get("id") for r in answers if r.status_code in (200, 202)}
    for job_id in ids:
        ctx.client.post(f"/v1/jobs/{job_id}/cancel")
    return [f"{r.status_code}" for r in answers] + [f"{len(ids)} job(s) created"]


def stream_floods(ctx: Context) -> list[str]:
    """40 Server-Sent Event streams of a running job held open at once by one tenant (the job is
    cancelled afterwards; it trains on the worker meanwhile)."""
    running = ctx.client.post("/v1/jobs", json={**ctx.job_spec, "training": {"epochs": 2000}}).json()["id"]
    try:
        return _hold_streams(ctx, running)
    finally:
        ctx.client.post(f"/v1/jobs/{running}/cancel")


def _hold_streams(ctx: Context, job_id: str) -> list[str]:
    statuses: list[str] = []
    with httpx.Client(base_url=ctx.svc.base_url, headers={"Authorization": f"Bearer {ctx.key}",
                                                          "Accept": "text/event-stream"}, timeout=30) as c:
        streams = [c.stream("GET", f"/v1/jobs/{job_id}/events") for _ in range(40)]
        opened = []
        try:
            for s in streams:
                r = s.__enter__()
                opened.append(s)
                statuses.append(str(r.status_code))
        finally:
            for s in opened:
                s.__exit__(None, None, None)
    return statuses


def revoked_keys(ctx: Context) -> list[str]:
    """A key revoked while in use: how long it still works."""
    key = ctx.svc.create_key("attacker")
    with ctx.svc.client(key) as c:
        c.get("/v1/jobs")
        key_id = next(k["id"] for k in json.loads(subprocess.run(
            [sys.executable, "-m", "kdserve.cli", "keys", "list", "--json"], env=ctx.svc.env, capture_output=True,
            text=True, check=True).stdout) if key.startswith(k["prefix"]) and k["revoked_at"] is None)
        subprocess.run([sys.executable, "-m", "kdserve.cli", "keys", "revoke", key_id], env=ctx.svc.env, check=True,
                       capture_output=True)
        t0 = time.monotonic()
        while c.get("/v1/jobs").status_code == 200 and time.monotonic() - t0 < 30:
            time.sleep(0.01)
        return [f"401 within {time.monotonic() - t0:.2f} s"]


class SlowTeacher(torch.nn.Module):
    """Legitimate but slow to probe: a few seconds of matrix products on its test batch."""

    def forward(self, x):
        h = torch.ones(512, 512)
        for _ in range(400):
            h = torch.tanh(h @ h / 512)
        return x[:, :10] + h[0, :10]


def _status(r: httpx.Response) -> str:
    body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
    error = body.get("error")
    code = error.get("code") if isinstance(error, dict) else ("" if error is None else "(v2 error)")
    return f"{r.status_code} {code or ''}".strip()


ATTACKS = [
    Attack("TorchScript reads host files", "`torch.from_file` of api_key, kdserve.db, /etc/passwd, /proc/self/environ",
           teachers_reading_files),
    Attack("TorchScript writes host files", "`from_file(shared=True)` into the data dir and /tmp; `torch.save`",
           teachers_writing_files),
    Attack("TorchScript custom code", "`ops.myns.*`, `torch.classes.*`, `getattr(torch, …)` edited into an archive",
           teachers_with_custom_code),
    Attack("ONNX external data", "4 locations (api_key, ../../api_key, its absolute path, /etc/passwd) × initializer, "
           "Constant attribute, If branch", onnx_external_data),
    Attack("ONNX custom operator domains", "3 non-standard domains", onnx_custom_domains),
    Attack("npz bombs", "0.26 MB of deflated zeros declaring 256 MiB of float64; a header declaring 32 GiB",
           npz_bombs),
    Attack("CSV / JSONL traps", "JSONL label 2**27, CSV labels 2**62 and 1e300, a 200 KiB CSV field, .npy as npz",
           csv_and_jsonl_traps),
    Attack("huge bodies without a key", "57 MiB of JSON to /v1/jobs, predict and /v2 infer, declared and chunked",
           bodies_without_a_key),
    Attack("oversized bodies with a key", "57 MiB to the same routes, declared and chunked (cap 16 MiB)",
           oversized_bodies),
    Attack("too many rows", "5000 rows to predict and /v2 infer (cap 4096)", too_many_rows),
    Attack("zip member floods", "a 24 MiB zip of 300,000 empty members, as a dataset and as a teacher",
           zip_member_floods),
    Attack("multipart field floods", "2000 fields of 60 KB, to both upload routes", multipart_field_floods),
    Attack("slow-probe floods", "40 simultaneous uploads, from 4 tenants, of a teacher that takes seconds to probe",
           slow_probe_floods),
    Attack("inputs that answered 500", "v2 shape [0, 1e20] (JSON) and [2**40, 0, 2**40] (binary), Last-Event-ID ², "
           "5000-digit cursors and Range, a non-Latin-1 model name", former_500s),
    Attack("Idempotency-Key races", "10 concurrent POST /v1/jobs with one key", idempotency_races),
    Attack("event-stream floods", "40 SSE streams held open by one tenant", stream_floods),
    Attack("revoked key still in use", "a key revoked between two requests, polled every 10 ms", revoked_keys),
]


# ---- the run --------------------------------------------------------------------------------------


def run_attack(ctx: Context, attack: Attack) -> tuple[int, collections.Counter, float, float]:
    t0 = time.time()
    outcomes: collections.Counter = collections.Counter()
    rounds = 0
    while rounds == 0 or time.time() - t0 < MIN_WINDOW_S:
        outcomes.update(attack.run(ctx))
        rounds += 1
    return rounds, outcomes, t0, time.time()


def victim_job(svc: Service, key: str, files: dict[str, Path]) -> str:
    with svc.client(key) as c:
        with open(files["torchscript"], "rb") as f:
            teacher = c.post("/v1/teachers", files={"file": ("t.pt", f)}).json()
        with open(files["npz"], "rb") as f:
            dataset = c.post("/v1/datasets", files={"file": ("d.npz", f)}).json()
        job = c.post("/v1/jobs", json={"teacher_id": teacher["id"], "dataset_id": dataset["id"],
                                       "student": {"architecture": "mlp"}, "method": {"name": "kd"},
                                       "training": {"epochs": 2}}).json()
        return wait_job(c, job["id"])["id"]


def attacker_context(svc: Service, client: httpx.Client, key: str, files: dict[str, Path], tmp: Path) -> Context:
    """The attacker's own resources: a teacher, data, a finished job and its model (what the
    attacks on serving, events and downloads aim at)."""
    with open(files["torchscript"], "rb") as f:
        teacher = client.post("/v1/teachers", files={"file": ("t.pt", f)}).json()
    with open(files["npz"], "rb") as f:
        dataset = client.post("/v1/datasets", files={"file": ("d.npz", f)}).json()
    spec = {"teacher_id": teacher["id"], "dataset_id": dataset["id"], "student": {"architecture": "mlp"},
            "method": {"name": "kd"}, "training": {"epochs": 2}}
    done = wait_job(client, client.post("/v1/jobs", json=spec).json()["id"])
    return Context(svc, client, key, files, tmp, spec, done["id"], done["model_id"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated attack names (substring match)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="kdsec-"))
    d = dg.load()
    model = dg.train_teacher(d, epochs=5)
    files = {"torchscript": dg.save_torchscript(model, tmp / "t.pt"),
             "npz": dg.save_npz(d.x_train, d.y_train, tmp / "d.npz")}
    attacks = [a for a in ATTACKS if not args.only or any(s in a.name for s in args.only.split(","))]
    rows = []
    with Service(tmp / "svc", extra_env={"KDSERVE_MAX_DATASET_BYTES": str(1 << 30)}) as svc:
        victim_key, attacker_key = svc.create_key("victim"), svc.create_key("attacker")
        job_id = victim_job(svc, victim_key, files)
        stop, out = mp.Event(), mp.Queue()
        poller = mp.Process(target=_poll, args=(svc.base_url, victim_key, job_id, stop, out))
        poller.start()
        time.sleep(1.0)
        t0 = time.time()
        time.sleep(MIN_WINDOW_S)
        windows = [("(no attack: baseline)", "—", 0, collections.Counter(), t0, time.time())]
        with svc.client(attacker_key, timeout=600) as attacker:
            ctx = attacker_context(svc, attacker, attacker_key, files, tmp)
            for attack in attacks:
                rounds, outcomes, a0, a1 = run_attack(ctx, attack)
                windows.append((attack.name, attack.tried, rounds, outcomes, a0, a1))
                print(f"{attack.name}: {dict(outcomes)} in {a1 - a0:.1f} s", flush=True)
        stop.set()
        samples = out.get(timeout=60)
        poller.join()
    for name, tried, rounds, outcomes, a0, a1 in windows:
        s = window_stats(samples, a0, a1)
        variants = sum(outcomes.values()) // max(rounds, 1)
        outcome = ", ".join(f"{n}× {o}" for o, n in outcomes.most_common()) or "—"
        rows.append([name, tried, variants, rounds, outcome, s["polls"], s["errors"], round(s["p50"], 1),
                     round(s["p99"], 1), round(s["max"], 1)])
    write(rows)


def write(rows: list[list]) -> None:
    header = ["attack class", "what was tried", "variants", "rounds", "answers (all rounds)", "victim polls",
              "victim errors", "victim p50 (ms)", "victim p99 (ms)", "victim max (ms)"]
    text = f"""# Security: the review's attacks against a running service

Machine: {machine()}. Reproduce: `python -m bench.security`.

One `kdserve up` (API + one worker, SQLite, local blobs). Tenant *attacker* sends each class of
attack with an ordinary key; tenant *victim* polls `GET /v1/jobs/{{id}}` of its own finished job in a
closed loop from another process the whole time. Each class ran for at least {MIN_WINDOW_S:.0f} s
(its variants repeated in rounds); the victim columns are the polls that started inside that window.
Every attack is also a test in api_tests/ that asserts its outcome and that nothing is left behind.

{table(header, rows)}
"""
    RESULTS.write_text(text)
    print(text)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
