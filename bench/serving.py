"""Serving benchmark: how fast a distilled student answers, in onnxruntime and through the API.

    python -m bench.serving          → bench/results/serving.md   (about 4 minutes on 2 cores)

Students (mlp, cnn, patch_transformer) are distilled from a digits teacher through the real
service (`kdserve up` via testkit/service.Service) and downloaded as a client would. Then, on
this machine, in one run:

(1) Latency at batch 1 and 64: the student in onnxruntime (fp32) vs the same student in PyTorch
    eager vs the teacher in PyTorch eager.
(2) int8 vs fp32 (and fp16) per student: latency and accuracy on held-out digits, made with
    models/export.build_variants from the downloaded fp32 file (what a job's quantizing stage runs).
(3) HTTP: 32 concurrent clients on POST /v2/models/{m}/infer, requests of 1, 8 and 64 samples,
    dynamic batching on and off, vs a minimal FastAPI endpoint running the PyTorch eager student
    on the same request body (uvicorn, one process, like ours).
(4) The same requests against onnxruntime in-process, 32 threads, no HTTP: the ceiling; our HTTP
    throughput as a fraction of it.

Clients only talk to 127.0.0.1, each run is bounded in time (RUN_S) and in clients (CLIENTS).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import torch

from bench.common import machine, table
from testkit import digits as dg
from testkit.service import REPO, Service, free_port, wait_job

TEACHER_HIDDEN = (2048, 2048, 2048)
STUDENTS = {
    "mlp": ({"architecture": "mlp", "params": {"hidden_sizes": [32]}}, 30),
    "cnn": ({"architecture": "cnn", "params": {"channels": [16, 32]}}, 12),
    "patch_transformer": ({"architecture": "patch_transformer", "params": {"dim": 64, "depth": 2, "heads": 4}}, 12),
}
HTTP_STUDENTS = ("mlp", "patch_transformer")  # the cheapest and the most expensive per sample
REQUEST_BATCHES = (1, 8, 64)
CLIENTS = 32
RUN_S, WARMUP_S = 3.0, 0.75  # measured seconds per configuration (in ROUNDS turns for HTTP), warm-up
ROUNDS = 3


# ---- PyTorch side ---------------------------------------------------------------------------


def student_from_onnx(spec: dict, path: Path, input_shape: list[int],
                      num_classes: int) -> tuple[torch.nn.Module, int, int]:
    """The zoo student of this architecture with the ONNX file's weights where the names match
    (all of an MLP's; the exporter folds BatchNorm into convolutions and pre-transposes attention
    weights, so some of the others' stay at their init — same cost, other numbers)."""
    from kdserve.models.zoo import create_student

    model = create_student(spec["architecture"], spec["params"], input_shape, num_classes).eval()
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
    state = model.state_dict()
    matched = 0
    for name, value in state.items():
        if name in weights and tuple(weights[name].shape) == tuple(value.shape):
            state[name] = torch.from_numpy(weights[name].copy())
            matched += 1
    model.load_state_dict(state)
    return model, matched, len(state)


def interleaved_ms(calls: dict[str, object], rounds: int = 4, per_round_s: float = 0.2) -> dict[str, float]:
    """Median ms of each zero-argument call, timed in alternating short windows so that a burst of
    other work on this shared machine slows every contender alike instead of one of them."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    with torch.inference_mode():
        for call in calls.values():
            for _ in range(5):
                call()
        for _ in range(rounds):
            for name, call in calls.items():
                # onnxruntime's and torch's worker threads spin for a while after a call; a pause
                # lets them park so that neither engine's threads compete with the other's
                time.sleep(0.05)
                deadline = time.perf_counter() + per_round_s
                for i in range(1000):
                    if i >= 3 and time.perf_counter() > deadline:
                        break
                    t0 = time.perf_counter()
                    call()
                    times[name].append(time.perf_counter() - t0)
    return {name: float(np.median(t) * 1000) for name, t in times.items()}


def torch_app():
    """The PyTorch endpoint of (3): what a user would write in a few lines — FastAPI, a sync
    handler, torch eager under no_grad — taking the same v2 JSON body. Started by uvicorn in its
    own process with KDBENCH_TORCH_MODELS = {name: {"spec", "path"}}."""
    from fastapi import FastAPI

    specs = json.loads(os.environ["KDBENCH_TORCH_MODELS"])
    models = {name: student_from_onnx(s["spec"], Path(s["path"]), [64], 10)[0] for name, s in specs.items()}
    app = FastAPI()

    @app.post("/v2/models/{name}/infer")
    def infer(name: str, body: dict):
        tensor = body["inputs"][0]
        x = torch.tensor(tensor["data"], dtype=torch.float32).reshape(tensor["shape"])
        with torch.no_grad():
            y = models[name](x)
        return {"model_name": name, "outputs": [{"name": "logits", "shape": list(y.shape), "datatype": "FP32",
                                                 "data": y.flatten().tolist()}]}

    return app


FLOOR_ANSWER = json.dumps({"model_name": "floor", "outputs": [{"name": "logits", "shape": [1, 10], "datatype": "FP32",
                                                                "data": [0.5] * 10}]}).encode()


async def floor_app(scope, receive, send) -> None:
    """(4)'s HTTP floor: uvicorn with nothing behind it. A bare ASGI function that reads the request
    body and answers a fixed 1-row answer: what this load generator gets from an HTTP server on
    this machine when the server does no work per request at all."""
    if scope["type"] == "lifespan":
        while (message := await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(FLOOR_ANSWER))]})
    await send({"type": "http.response.body", "body": FLOOR_ANSWER})


class UvicornServer:
    """An ASGI app of this module in its own uvicorn process: the PyTorch endpoint
    (`torch_app`, a factory, KDBENCH_TORCH_MODELS in `env`) or the HTTP floor (`floor_app`)."""

    def __init__(self, app: str, log: Path, *, factory: bool = False, env: dict[str, str] | None = None):
        self.port, self.log, self.app, self.factory, self.env = free_port(), log, app, factory, env or {}

    def __enter__(self) -> "UvicornServer":
        env = dict(os.environ, **self.env, PYTHONPATH=str(REPO))
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "uvicorn", *(["--factory"] if self.factory else []),
                                          f"bench.serving:{self.app}",
                                          "--host", "127.0.0.1", "--port", str(self.port)],
                                         cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                import httpx

                httpx.get(f"http://127.0.0.1:{self.port}/docs", timeout=1)
                return self
            except Exception:
                time.sleep(0.2)
        raise RuntimeError(f"{self.app} did not start:\n{self.log.read_text()[-2000:]}")

    def __exit__(self, *exc) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)


# ---- load generation ------------------------------------------------------------------------


def v2_body(x: np.ndarray) -> tuple[bytes, str]:
    """A JSON request: (body, extra header lines)."""
    return json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                   "data": x.ravel().tolist()}]}).encode(), "Content-Type: application/json\r\n"


def v2_binary_body(x: np.ndarray) -> tuple[bytes, str]:
    """The same request in the binary tensor data extension, answers asked for in binary too (what
    Triton's and KServe's HTTP clients send)."""
    raw = np.ascontiguousarray(x, "<f4").tobytes()
    header = json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                     "parameters": {"binary_data_size": len(raw)}}],
                         "parameters": {"binary_data_output": True}}).encode()
    return header + raw, (f"Content-Type: application/octet-stream\r\n"
                          f"Inference-Header-Content-Length: {len(header)}\r\n")


def http_requests(path: str, bodies: list[tuple[bytes, str]], api_key: str | None) -> list[bytes]:
    """Whole HTTP/1.1 requests, built once: the client then only writes bytes and reads answers,
    so its own cost (it shares the 2 cores with the server) stays small."""
    auth = f"Authorization: Bearer {api_key}\r\n" if api_key else ""
    return [(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}{headers}"
             f"Content-Length: {len(b)}\r\n\r\n").encode() + b for b, headers in bodies]


async def _one_client(port: int, requests: list[bytes], offset: int, start: float, measure_from: float, end: float,
                      latencies: list[float], failures: list[str]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = offset
    try:
        while (t0 := time.perf_counter()) < end:
            writer.write(requests[i % len(requests)])
            i += 1
            status = int((await reader.readline()).split()[1])
            length = None
            while (line := await reader.readline()) not in (b"\r\n", b""):
                key, _, value = line.partition(b":")
                if key.lower() == b"content-length":
                    length = int(value)
            if length is None:
                raise RuntimeError("response without Content-Length")
            body = await reader.readexactly(length)
            t1 = time.perf_counter()
            if status != 200:
                failures.append(f"{status}: {body[:200]!r}")
            elif t0 >= measure_from and t1 <= end:
                latencies.append(t1 - t0)
    finally:
        writer.close()


def http_load(port: int, requests: list[bytes], clients: int = CLIENTS, seconds: float = RUN_S,
              warmup: float = WARMUP_S, raw: bool = False):
    """`clients` keep-alive connections, each sending its next request as soon as it has the
    previous answer, for warmup + seconds; requests finished inside the measured window count.
    Returns {rps, p50, p99} (ms), or with raw=True the measured latencies in ms."""

    async def run() -> tuple[list[float], list[str]]:
        latencies: list[float] = []
        failures: list[str] = []
        start = time.perf_counter()
        await asyncio.gather(*(_one_client(port, requests, k, start, start + warmup, start + warmup + seconds,
                                           latencies, failures) for k in range(clients)))
        return latencies, failures

    latencies, failures = asyncio.run(run())
    if failures:
        raise RuntimeError(f"{len(failures)} requests failed, e.g. {failures[0]}")
    ms = np.asarray(latencies) * 1000
    if raw:
        return ms
    if not len(ms):
        raise RuntimeError(f"no request finished within the {seconds} s measured")
    return {"rps": len(ms) / seconds, "p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99))}


def inprocess_load(run_one, feeds: list, clients: int = CLIENTS, seconds: float = RUN_S) -> dict:
    """The same request mix without HTTP: `clients` threads calling run_one(feed) back to back."""
    done: list[list[float]] = [[] for _ in range(clients)]
    start = time.perf_counter()
    measure_from, end = start + WARMUP_S, start + WARMUP_S + seconds

    def worker(k: int) -> None:
        i = k
        while (t0 := time.perf_counter()) < end:
            run_one(feeds[i % len(feeds)])
            i += 1
            t1 = time.perf_counter()
            if t0 >= measure_from and t1 <= end:
                done[k].append(t1 - t0)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ms = np.concatenate([np.asarray(d) for d in done]) * 1000
    return {"rps": len(ms) / seconds, "p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99))}


def inprocess_async_load(infer, feeds: list, clients: int = CLIENTS, seconds: float = RUN_S) -> dict:
    """The same request mix through an async API (`await infer(feed)`): `clients` coroutines on one
    event loop, as the API process runs them under HTTP."""

    async def run() -> list[float]:
        done: list[float] = []
        start = time.perf_counter()
        measure_from, end = start + WARMUP_S, start + WARMUP_S + seconds

        async def client(k: int) -> None:
            i = k
            while (t0 := time.perf_counter()) < end:
                await infer(feeds[i % len(feeds)])
                i += 1
                t1 = time.perf_counter()
                if t0 >= measure_from and t1 <= end:
                    done.append(t1 - t0)

        await asyncio.gather(*(client(k) for k in range(clients)))
        return done

    ms = np.asarray(asyncio.run(run())) * 1000
    return {"rps": len(ms) / seconds, "p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99))}


def request_bodies(d: dg.Digits, batch: int, n: int = 16) -> list[np.ndarray]:
    rng = np.random.default_rng(batch)
    return [d.x_test[rng.choice(len(d.x_test), batch, replace=False)] for _ in range(n)]


# ---- the run --------------------------------------------------------------------------------


def publish(svc: Service, tmp: Path, d: dg.Digits, teacher: torch.nn.Module) -> dict:
    """Distil each student through the service; returns {arch: (card, downloaded fp32 path, job)}."""
    dg.save_torchscript(teacher, tmp / "teacher.pt")
    dg.save_npz(d.x_train, d.y_train, tmp / "digits.npz")
    out = {}
    with svc.client() as c:
        with open(tmp / "teacher.pt", "rb") as f:
            t = c.post("/v1/teachers", files={"file": ("teacher.pt", f)}).json()
        with open(tmp / "digits.npz", "rb") as f:
            ds = c.post("/v1/datasets", files={"file": ("digits.npz", f)}).json()
        jobs = {}
        for arch, (spec, epochs) in STUDENTS.items():
            body = {"teacher_id": t["id"], "dataset_id": ds["id"], "student": spec,
                    "method": {"name": "kd", "params": {"temperature": 4.0, "alpha": 0.9}},
                    "training": {"epochs": epochs, "batch_size": 64, "learning_rate": 0.005},
                    "metadata": {"name": f"bench-{arch}"}}
            r = c.post("/v1/jobs", json=body)
            assert r.status_code == 202, r.text
            jobs[arch] = r.json()["id"]
        for arch, job_id in jobs.items():
            job = wait_job(c, job_id, timeout=900)
            assert job["status"] == "succeeded", job
            card = c.get(f"/v1/models/{job['model_id']}").json()
            path = tmp / f"{arch}.fp32.onnx"
            path.write_bytes(c.get(f"/v1/models/{card['id']}/download").content)
            out[arch] = (card, path, job)
    return out


def serve_runs(servers: dict[str, tuple[int, str | None, dict[str, str], object]], d: dg.Digits) -> dict:
    """(3): {server: {(arch, batch): load result}} for servers {name: (port, api key, {arch: path},
    body encoder)}.

    The servers run side by side and are measured in turns, ROUNDS × RUN_S / ROUNDS each, so that
    a burst of other work on this shared machine lands on all of them rather than on one."""
    plan = {}
    for name, (port, key, paths, encode) in servers.items():
        for arch in HTTP_STUDENTS:
            for batch in REQUEST_BATCHES:
                requests = http_requests(paths[arch], [encode(x) for x in request_bodies(d, batch)], key)
                http_load(port, requests[:2], clients=2, seconds=0.3, warmup=0.0, raw=True)  # load the session
                plan[name, arch, batch] = (port, requests)
    parts: dict[tuple, list[tuple[int, np.ndarray]]] = {k: [] for k in plan}
    for _ in range(ROUNDS):
        for (name, arch, batch), (port, requests) in plan.items():
            parts[name, arch, batch].append(http_load(port, requests, seconds=RUN_S / ROUNDS, warmup=0.25,
                                                      raw=True))
    results: dict[str, dict] = {name: {} for name in servers}
    for (name, arch, batch), runs in parts.items():
        ms = np.concatenate([lat for lat in runs])
        results[name][arch, batch] = {"rps": len(ms) / RUN_S, "p50": float(np.percentile(ms, 50)),
                                      "p99": float(np.percentile(ms, 99))}
    return results


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results/serving.md")
    args = ap.parse_args()
    r: dict = {"load_before": os.getloadavg()[0]}  # everything the report needs
    t_start = time.time()
    d = dg.load()
    teacher = dg.train_teacher(d, hidden=TEACHER_HIDDEN, epochs=8)
    r["teacher"] = (sum(p.numel() for p in teacher.parameters()),
                    dg.accuracy(teacher(torch.from_numpy(d.x_test)).detach().numpy(), d.y_test))

    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        with Service(tmp / "svc") as on:
            published = publish(on, tmp, d, teacher)
            r["published"] = published
            # (1), (2) and (4) while the service idles (it uses no CPU then)
            r["load_quiet"] = os.getloadavg()[0]
            r.update(latency_and_variants(published, d, teacher, tmp))
            r.update(in_process(published, d))
            # (3): a second service on the same database and blobs with batching off, and the PyTorch
            # endpoint, side by side with the first
            shared = {"KDSERVE_BLOB_DIR": str(tmp / "svc" / "blobs"), "KDSERVE_BATCHING": "false"}
            specs = {arch: {"spec": STUDENTS[arch][0], "path": str(published[arch][1])} for arch in HTTP_STUDENTS}
            with Service(tmp / "svc-off", database_url=f"sqlite:///{tmp / 'svc' / 'kdserve.db'}",
                         extra_env=shared) as off, \
                    UvicornServer("torch_app", tmp / "torch.log", factory=True,
                                  env={"KDBENCH_TORCH_MODELS": json.dumps(specs)}) as pt, \
                    UvicornServer("floor_app", tmp / "floor.log") as floor:
                v2_paths = {a: f"/v2/models/{published[a][0]['id']}/infer" for a in published}
                torch_paths = {a: f"/v2/models/{a}/infer" for a in HTTP_STUDENTS}
                http = serve_runs({"on": (on.port, on.api_key, v2_paths, v2_body),
                                   "binary": (on.port, on.api_key, v2_paths, v2_binary_body),
                                   "off": (off.port, off.api_key, v2_paths, v2_body),
                                   "torch": (pt.port, None, torch_paths, v2_body),
                                   "floor": (floor.port, None, torch_paths, v2_body)}, d)
        r["http_on"], r["http_off"], r["http_torch"] = http["on"], http["off"], http["torch"]
        r["http_binary"], r["http_floor"] = http["binary"], http["floor"]

    r["total_s"] = time.time() - t_start
    r["load_after"] = os.getloadavg()[0]
    report = render(r)
    Path(args.out).write_text(report)
    print(report)


def latency_and_variants(published: dict, d: dg.Digits, teacher: torch.nn.Module, tmp: Path) -> dict:
    """(1) ORT vs eager latencies and (2) the variants' records, per student."""
    from kdserve.models import export

    latency, variants, notes = {}, {}, []
    for arch, (card, path, _) in published.items():
        spec = STUDENTS[arch][0]
        model, matched, total = student_from_onnx(spec, path, [64], 10)
        if matched == total:
            with torch.no_grad():
                ref = model(torch.from_numpy(d.x_test)).numpy()
            diff = export.check_parity(path, ref, d.x_test).max_abs_diff
            notes.append(f"{arch}: all {total} tensors copied from the file, max |ORT − eager| = {diff:.1e}")
        else:
            notes.append(f"{arch}: {matched} of {total} tensors copied by name")
        # One thread each: on this shared 2-core machine a 2-thread run loses a core to other jobs at
        # random, and its OpenMP barrier then waits for the descheduled thread (batch-64 times swung
        # 10× between runs). One thread against one thread compares the engines, not the neighbours.
        session = export.ort_session(path, threads=1)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        for b in (1, 64):
            x = d.x_test[:b]
            t = torch.from_numpy(x)
            ms = interleaved_ms({"ort": lambda: session.run(["logits"], {"input": x}), "eager": lambda: model(t),
                                 "teacher": lambda: teacher(t)})
            latency[arch, b] = (ms["ort"], ms["eager"], ms["teacher"])
        torch.set_num_threads(threads)
        ref = export.run_onnx(export.ort_session(path), d.x_test)
        variants[arch] = export.build_variants(
            path, ["fp32", "int8", "fp16"], calib_x=d.x_train, val_x=d.x_test, val_y=d.y_test, reference_logits=ref,
            fp32_accuracy=None, max_accuracy_drop=0.01, kind=spec["architecture"], out_dir=tmp / arch)
    return {"latency": latency, "variants": variants, "eager_notes": notes}


def in_process(published: dict, d: dg.Digits) -> dict:
    """(4) the ceiling: onnxruntime in-process, and our runtime (batching) in-process."""
    from kdserve.models import export
    from kdserve.service.serving.runtime import BatchConfig, SessionCache

    limit, ours = {}, {}
    for arch in HTTP_STUDENTS:
        path = published[arch][1]
        session = export.ort_session(path)
        loaded = SessionCache(batching=BatchConfig(max_size=64, max_wait_s=0.001)).get(arch, path)
        for batch in REQUEST_BATCHES:
            feeds = request_bodies(d, batch)
            limit[arch, batch] = inprocess_load(lambda x: session.run(["logits"], {"input": x}), feeds)
            ours[arch, batch] = inprocess_async_load(lambda x: loaded.infer({"input": x}), feeds)
    return {"limit": limit, "ours_inproc": ours}


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


def render(r: dict) -> str:
    published, latency, variants = r["published"], r["latency"], r["variants"]
    on, off, pt, limit, ours = r["http_on"], r["http_off"], r["http_torch"], r["limit"], r["ours_inproc"]
    binary, floor = r["http_binary"], r["http_floor"]
    cards = {a: published[a][0] for a in published}
    keys = [(a, b) for a in HTTP_STUDENTS for b in REQUEST_BATCHES]

    speedup = {k: (v[1] / v[0], v[2] / v[0]) for k, v in latency.items()}  # eager ÷ ORT, teacher ÷ ORT
    t1_eager = all(speedup[a, 1][0] >= 1.5 for a in published)
    t1_teacher = all(speedup[a, 1][1] >= 5 for a in published)  # the target is stated at batch 1
    t1_teacher_64 = all(speedup[a, 64][1] >= 5 for a in published)
    vs_torch = {k: on[k]["rps"] / pt[k]["rps"] for k in keys}
    t3 = {k: vs_torch[k] >= 2 and on[k]["p99"] <= pt[k]["p99"] for k in keys}
    fraction = {k: max(on[k]["rps"], off[k]["rps"], binary[k]["rps"]) / limit[k]["rps"] for k in keys}
    binary_vs_json = {k: binary[k]["rps"] / on[k]["rps"] for k in keys}
    t4 = {k: fraction[k] >= 0.5 for k in keys if k[1] >= 8}
    teacher_params, teacher_acc = r["teacher"]

    variant_rows = []
    int8_speed = {}
    for arch, results in variants.items():
        fp32 = results[0]
        for v in results:
            if v.latency_ms_batch1 is None:
                variant_rows.append([arch, v.precision, "—", "", "", "", "", "", "", "", "", f"no: {v.reason}"])
                continue
            s1, s64 = fp32.latency_ms_batch1 / v.latency_ms_batch1, fp32.latency_ms_batch64 / v.latency_ms_batch64
            if v.precision == "int8":
                int8_speed[arch] = (s1, s64, v.size_bytes / fp32.size_bytes, v.accuracy_delta)
            variant_rows.append([arch, v.precision, v.quantization.split(" (")[0], v.size_bytes, v.latency_ms_batch1,
                                 v.latency_ms_batch64, s1, s64, v.accuracy, f"{v.accuracy_delta * 100:+.2f}",
                                 v.max_abs_diff, "yes" if v.published else f"no: {v.reason}"])

    lines = [
        "# Serving benchmark: the distilled student in onnxruntime and through the API",
        "",
        f"Machine: {machine()}. onnxruntime {__import__('onnxruntime').__version__}, CPU execution provider, "
        f"default threads. Load average {r['load_before']:.1f} at the start, {r['load_quiet']:.1f} before (1), "
        f"{r['load_after']:.1f} at the end: the machine is shared, and other test runs add noise (a core taken "
        "away slows a 2-thread batch-64 run several-fold; the HTTP numbers vary by ±30 % from run to run). "
        "Reproduce: `python -m bench.serving`.",
        "",
        f"Teacher: MLP {list(TEACHER_HIDDEN)}, {teacher_params:,} parameters, test accuracy {teacher_acc:.4f} "
        "(TorchScript upload). Students distilled through `kdserve up` with `kd` (τ = 4, α = 0.9) on 1438 digits rows "
        "and downloaded as a client would; accuracies below are on the 359 held-out digits the service never saw.",
        "",
        table(["student", "params", "compression", "epochs", "job wall time (s)"],
              [[a, cards[a]["num_parameters"], f"{cards[a]['compression_ratio']:.0f}×", STUDENTS[a][1],
                published[a][2]["finished_at"] - published[a][2]["started_at"]] for a in published]),
        "",
        "## (1) Latency: student in onnxruntime vs student and teacher in PyTorch eager (median ms, one thread each)",
        "",
        table(["student", "batch", "student ORT fp32", "student eager", "teacher eager", "eager ÷ ORT",
               "teacher ÷ student ORT"],
              [[a, b, *latency[a, b], *speedup[a, b]] for a, b in latency]),
        "",
        "PyTorch eager students: " + "; ".join(r["eager_notes"]) + " (the exporter folds BatchNorm into the "
        "convolutions and pre-transposes attention weights; unmatched tensors keep their init, which changes the "
        "numbers, not the cost). Eager runs under `torch.inference_mode()`. Both engines run on one thread "
        "(`torch.set_num_threads(1)`, onnxruntime `intra_op_num_threads=1`): with two, a batch-64 run on this shared "
        "machine loses a core to other jobs at random and waits for it, and the numbers swung 10× between runs. The "
        "three are timed in alternating 0.2 s windows (4 each) and the median is shown; (2) uses the default threads, "
        "as the model card does.",
        "",
        f"Targets (batch 1): student ORT ≥ 1.5× faster than student eager — {verdict(t1_eager)} ("
        + ", ".join(f"{a} {speedup[a, 1][0]:.1f}×" for a in published)
        + f"); ≥ 5× faster than the teacher — {verdict(t1_teacher)} ("
        + ", ".join(f"{a} {speedup[a, 1][1]:.0f}×" for a in published)
        + "). At batch 64: " + ", ".join(f"{a} {speedup[a, 64][0]:.1f}× eager, {speedup[a, 64][1]:.0f}× teacher"
                                         for a in published)
        + ("." if t1_teacher_64 else "; below 5× there means the teacher's large matmuls use the cores better "
           "than the student's many small ops (a transformer's attention is not fused by the exporter, while "
           "PyTorch's eager TransformerEncoderLayer runs a fused inference kernel)."),
        "",
        "## (2) int8 and fp16 vs fp32, built by `models/export.build_variants` from the downloaded fp32 file",
        "",
        "Calibration of static QDQ (cnn): 256 training rows. Accuracy and max abs diff on the held-out digits, the "
        "diff against the fp32 file's logits; published = within the default `max_accuracy_drop` of 1 point.",
        "",
        table(["student", "precision", "method", "bytes", "ms b1", "ms b64", "speed-up b1", "speed-up b64",
               "accuracy", "Δ acc (points)", "max abs diff", "published"], variant_rows),
        "",
        "int8 here: " + "; ".join(
            f"{a} {s1:.2f}× at batch 1 and {s64:.2f}× at 64, {size:.0%} of the fp32 file, Δ accuracy "
            f"{delta * 100:+.2f} points" for a, (s1, s64, size, delta) in int8_speed.items())
        + "." + (" Below 1× means int8 is slower: for students this small, quantizing the activations and the "
                 "integer kernels' set-up cost more than the smaller matmuls save." if any(
                     min(v[0], v[1]) < 1 for v in int8_speed.values()) else "")
        + " The card reports these measured latencies next to the accuracy delta, so a user sees when fp32 is the "
        "better file.",
        "",
        "## (3) HTTP: `POST /v2/models/{m}/infer`, 32 concurrent clients",
        "",
        f"Each client keeps one connection and sends its next request when the previous answer arrives; requests of "
        f"1, 8 or 64 digits as JSON FP32 tensors. {RUN_S:.0f} s measured per cell, in {ROUNDS} turns of "
        f"{RUN_S / ROUNDS:.0f} s (after 0.25 s of warm-up each) taken round-robin over the servers, which run "
        "side by side: load from elsewhere on this shared machine falls on all three alike. kdserve = `kdserve up` "
        "(uvicorn, one API process, API-key auth on every request), dynamic batching on (max 64 rows, max wait "
        "1 ms, the defaults; onnxruntime runs on one intra-op thread that sleeps rather than spins between runs, "
        "`KDSERVE_INFERENCE_THREADS=1`, the default; a run expected to take less than a thread hand-off, "
        "about 0.2 ms, is done on the event loop) and, as a second `kdserve up` on the same database and blobs, "
        "off (`KDSERVE_BATCHING=false`). "
        "PyTorch = a minimal FastAPI app (sync handler, `torch.no_grad()`, same request body, no auth) under uvicorn. "
        "The clients share the 2 cores.",
        "",
        "The target is judged on the same JSON body for both servers. A second table has kdserve (batching on) "
        "with the same tensors in the protocol's binary tensor data extension, in and out (service/serving/v2_binary.py; what "
        "Triton's and KServe's HTTP clients send by default).",
        "",
        table(["student", "rows/request", "batching on req/s", "p50 ms", "p99 ms", "batching off req/s", "p50 ms",
               "p99 ms", "PyTorch req/s", "p50 ms", "p99 ms", "on ÷ PyTorch"],
              [[a, b, on[a, b]["rps"], on[a, b]["p50"], on[a, b]["p99"], off[a, b]["rps"], off[a, b]["p50"],
                off[a, b]["p99"], pt[a, b]["rps"], pt[a, b]["p50"], pt[a, b]["p99"], vs_torch[a, b]] for a, b in keys]),
        "",
        table(["student", "rows/request", "binary req/s", "p50 ms", "p99 ms", "binary ÷ JSON (batching on)",
               "binary ÷ PyTorch (JSON)"],
              [[a, b, binary[a, b]["rps"], binary[a, b]["p50"], binary[a, b]["p99"], binary_vs_json[a, b],
                binary[a, b]["rps"] / pt[a, b]["rps"]] for a, b in keys]),
        "",
        "## (4) The same requests in-process, no HTTP: the ceiling",
        "",
        "32 threads calling `session.run` on the same request arrays back to back (onnxruntime), and 32 coroutines "
        "awaiting `service/serving/runtime.py` with dynamic batching (what the API process runs under the HTTP layer). "
        "HTTP floor = uvicorn with nothing behind it: a bare ASGI function (`bench.serving:floor_app`) that reads "
        "the same request bodies and sends a fixed 1-row answer, under the same 32 clients, in the same turns as "
        "the servers of (3) — what an HTTP server that does no work per request gets here.",
        "",
        table(["student", "rows/request", "onnxruntime req/s", "runtime (batching) req/s", "HTTP on req/s",
               "HTTP off req/s", "HTTP binary req/s", "HTTP floor req/s", "best HTTP ÷ onnxruntime",
               "floor ÷ onnxruntime"],
              [[a, b, limit[a, b]["rps"], ours[a, b]["rps"], on[a, b]["rps"], off[a, b]["rps"], binary[a, b]["rps"],
                floor[a, b]["rps"], fraction[a, b], floor[a, b]["rps"] / limit[a, b]["rps"]] for a, b in keys]),
        "",
        "## Targets",
        "",
        f"- (1) ORT ≥ 1.5× eager at batch 1: {verdict(t1_eager)}; ≥ 5× the teacher at batch 1: {verdict(t1_teacher)}"
        f" (at batch 64 as well: {verdict(t1_teacher_64)}).",
        "- (3) ≥ 2× the PyTorch endpoint's throughput at equal or better p99: "
        + "; ".join(f"{a} ×{b}: {vs_torch[a, b]:.2f}×, p99 {on[a, b]['p99']:.0f} vs {pt[a, b]['p99']:.0f} ms "
                    f"{'met' if t3[a, b] else 'missed'}" for a, b in keys) + ".",
        "- (4) HTTP ≥ 0.5 of in-process onnxruntime at ≥ 8 rows per request: "
        + "; ".join(f"{a} ×{b}: {fraction[a, b]:.2f} {'met' if t4[a, b] else 'missed'}" for a, b in t4) + ".",
        "",
        *(["## Why targets are missed", ""] if not (all(t3.values()) and all(t4.values())) else []),
        "- A request costs the API process a fixed amount of Python — reading and parsing the JSON body, building "
        "the arrays, encoding the answer, uvicorn's HTTP handling — that does not depend on the model: 1 / (req/s) of "
        f"the 1-row MLP with batching on is {1000 / on['mlp', 1]['rps']:.2f} ms here. The 2 k-parameter MLP computes "
        f"a row in microseconds (onnxruntime in-process answers {limit['mlp', 8]['rps']:,.0f} requests of 8 rows a "
        "second), so for it (4) measures the HTTP stack, not the model. uvicorn answering a fixed body with no "
        "work at all (the floor) reached " + "; ".join(
            f"{floor['mlp', b]['rps']:,.0f} requests/s at {b} rows, {floor['mlp', b]['rps'] / limit['mlp', b]['rps']:.2f} "
            "of in-process" for b in REQUEST_BATCHES if b >= 8) + " — the most any server could get here before "
        "parsing a single tensor (a 64-row JSON body alone takes about 0.2 ms to read, the floor's whole request "
        f"{1000 / floor['mlp', 64]['rps']:.2f} ms). The fraction grows with the work per request: the transformer, "
        "whose rows cost onnxruntime real time, reaches " + ", ".join(
            f"{fraction['patch_transformer', b]:.2f} at {b} rows" for b in REQUEST_BATCHES if b >= 8) + ".",
        "- Where that time goes (py-spy on the API process, 6 s of the mlp ×1 load at 4,500 requests/s, a separate "
        "run on 2026-11-28; share of the event loop's samples): kdserve's own handling about 45% — reading and validating the "
        "body 10%, turning the tensors into checked arrays 9%, batching and the inline onnxruntime run 10%, the "
        "JSON answer 5%, the NaN check of the outputs 3%, the auth and model-lookup memos 3%, Prometheus metrics "
        "2%; uvicorn the rest — writing the response 12%, the access log 10%, parsing the request 5%, the event "
        "loop itself 8%. What this version removed from each request: FastAPI's router, parameter solving, "
        "exit stack and two middleware layers (infer requests are answered before the router: "
        "`KdserveApp` in service/app.py, `infer_direct` in service/api/inference_v2.py; the routes stay for "
        "OpenAPI, and a test checks both paths give the same answers), and the hand-off to the inference thread "
        "for runs cheaper than that hand-off (the MLP's: `INLINE_BELOW_S` in service/serving/runtime.py). A request that "
        "fills a batch alone (64 rows) now runs at once instead of queueing behind the batcher, and a third run "
        "waits in the inference threads' queue so a thread never idles while the event loop is busy. Measured "
        "once before these changes (commit 0e59e83, Intel Xeon, 2 cores, 2026-11-28): mlp ×1 2,615, ×8 2,018, ×64 876; "
        "patch_transformer ×1 2,445, ×8 1,659, ×64 424 requests/s with batching on — 1.86×, 1.82×, 2.15×, 4.13×, "
        "3.34×, 2.05× the PyTorch endpoint; (4) 0.04, 0.04, 0.35, 0.62. "
        "Earlier stalls of our own stay fixed: gen-2 garbage collection over the start-up heap (now frozen), "
        "memo entries expiring for all waiting requests at once (now refreshed ahead), onnxruntime's spinning "
        f"threads (now sleeping); p99/p50 here {min(on[k]['p99'] / on[k]['p50'] for k in keys):.1f}–"
        f"{max(on[k]['p99'] / on[k]['p50'] for k in keys):.1f}×.",
        "- The PyTorch endpoint pays uvicorn's and all of FastAPI's cost per request (router, parameter solving, "
        "`json.loads` of the body) but checks no key, looks up no model and validates nothing; where the model is "
        "cheap, those per-request costs are the whole difference between the two servers. Dynamic batching is what "
        "separates them as the work per request grows: one onnxruntime run for many requests while the PyTorch "
        "endpoint runs each request on its own.",
        "- The request format: JSON turns every float into text and back (a 64-row request is about 25 kB of JSON, "
        "16 kB of binary). kdserve parses JSON bodies with pydantic's Rust reader rather than `json.loads` "
        "(about 9× less time for a 64-row body) and also takes the binary tensor data extension, which skips the "
        "conversion: " + ", ".join(f"{a} ×{b} {binary_vs_json[a, b]:.2f}×" for a, b in keys) + " the JSON "
        "throughput here.",
        "",
        f"Whole run: {r['total_s']:.0f} s.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
