"""Two numbers of the security review's edges: how long a revoked key keeps working, and what a
/metrics scrape costs the backends.

    python -m bench.edges [--rounds 5] [--scrapes 50]      → prints a markdown report

(1) Revocation delay: a client per route (GET /v1/jobs, GET /v2) asks as fast as it can with a
    key (the caches stay warm: the worst case); the key is revoked from this process, as
    `kdserve keys revoke` does it from its own (kdserve.service.auth.revoke: the API learns of it only
    from the database); the delay is from that commit to each route's first 401.
(2) Scrape cost: a `kdserve up` with its embedded Redis (so its command counts are the service's
    own), idle; `--scrapes` sequential GET /metrics, then the same number from 10 threads at
    once: the client-side latency, and the PUBLISH commands the broker ran (a Celery worker
    broadcast is one; each waits 0.5 s for replies).

It runs against whichever tree it is started from (the harness starts `kdserve up` from the
repository holding it), so the same file measures a checkout before and after a change.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import redis

from bench.common import machine, table
from kdserve.service import auth
from kdserve.service.store.db import Database
from testkit.service import REPO, Service

MACHINE_REDIS = "redis://127.0.0.1:6379/0"


def revocation_delays(svc: Service) -> dict[str, float]:
    made = json.loads(subprocess.run([sys.executable, "-m", "kdserve.cli", "keys", "create", "--tenant", "bench",
                                      "--json"], cwd=REPO, env=svc.env, capture_output=True, text=True,
                                     check=True).stdout)
    first: dict[str, float] = {}

    def hammer(path: str) -> None:
        with svc.client(api_key=made["key"], timeout=30) as c:
            while c.get(path).status_code != 401:
                pass
            first[path] = time.monotonic()

    threads = [threading.Thread(target=hammer, args=(p,)) for p in ("/v1/jobs", "/v2")]
    for t in threads:
        t.start()
    time.sleep(1.0 + random.random() * 6)  # revoked at any point of the caches' lives (up to 7 s before)
    db = Database(svc.env.get("KDSERVE_DATABASE_URL") or f"sqlite:///{(svc.data_dir / 'kdserve.db').resolve()}")
    assert auth.revoke(db, made["id"])
    revoked = time.monotonic()
    db.engine.dispose()
    for t in threads:
        t.join()
    return {path: at - revoked for path, at in first.items()}


def publishes(svc: Service) -> int:
    with redis.Redis(unix_socket_path=str(svc.data_dir / "redis.sock")) as r:
        return int(r.info("commandstats").get("cmdstat_publish", {}).get("calls", 0))


def scrape_cost(svc: Service, scrapes: int, headers: dict) -> list[list]:
    rows = []
    with httpx.Client(base_url=svc.base_url, headers=headers, timeout=60) as c:
        c.get("/metrics").raise_for_status()

        def one(_=None) -> float:
            t0 = time.perf_counter()
            c.get("/metrics").raise_for_status()
            return time.perf_counter() - t0

        for label, run in (("sequential", lambda: [one() for _ in range(scrapes)]),
                           ("10 threads", lambda: list(ThreadPoolExecutor(10).map(one, range(scrapes))))):
            before, t0 = publishes(svc), time.perf_counter()
            latencies = sorted(run())
            wall = time.perf_counter() - t0
            rows.append([label, scrapes, wall, statistics.median(latencies) * 1000, latencies[-1] * 1000,
                         publishes(svc) - before])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--scrapes", type=int, default=50)
    parser.add_argument("--metrics-token", default=None, help="send it (a tree that asks for one)")
    args = parser.parse_args()
    headers = {"Authorization": f"Bearer {args.metrics_token}"} if args.metrics_token else {}
    env = {"KDSERVE_METRICS_TOKEN": args.metrics_token} if args.metrics_token else {}
    with tempfile.TemporaryDirectory() as tmp:
        with Service(Path(tmp) / "rev", redis_url=MACHINE_REDIS) as svc:
            delays = [revocation_delays(svc) for _ in range(args.rounds)]
        with Service(Path(tmp) / "scrape", extra_env=env) as svc:
            cost = scrape_cost(svc, args.scrapes, headers)
    print(f"# edges bench ({REPO})\n\n{machine()}\n")
    print(table(["route", "rounds", "median delay s", "max delay s"],
                [[p, len(delays), statistics.median(d[p] for d in delays), max(d[p] for d in delays)]
                 for p in ("/v1/jobs", "/v2")]))
    print()
    print(table(["scrapes", "n", "wall s", "median ms", "max ms", "broker PUBLISH"], cost))


if __name__ == "__main__":
    main()
