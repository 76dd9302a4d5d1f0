"""The API's body-parsing children end with the API process: a pool's children hold both ends of
their task queue and never see it close, so before this each SIGKILLed API left its parse children
waiting forever (a test run left 50 of them, 4 GB)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from api_tests.harness import REPO

API_LIKE = """
import json, sys, time
import multiprocessing.process as mpp
from kdserve.service.bodies import BodyParser
from kdserve.service.schemas import PredictIn
parser = BodyParser(2)
parser.start(PredictIn)
parser._pool.submit(time.sleep, 0).result(timeout=120)  # the children are up
print(json.dumps([p.pid for p in parser._pool._processes.values()]), flush=True)
time.sleep(600)
"""


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_parse_children_end_when_the_api_process_is_killed():
    api = subprocess.Popen([sys.executable, "-I", "-c", API_LIKE], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        children = json.loads(api.stdout.readline())
        assert children and all(alive(pid) for pid in children)
        os.kill(api.pid, signal.SIGKILL)
        api.wait(timeout=30)
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(alive(pid) for pid in children), "a parse child outlived the API process"
    finally:
        api.kill()
