"""The API runs without torch (the slim `api` image, `pip install kdserve` without the `worker`
extra): it never imports torch, it builds the method catalogue from the torch-free job-spec classes
(kdserve.service.spec), and it sends uploaded teachers to a worker to be probed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from api_tests.harness import REPO
from kdserve.service.spec import methods as spec_methods
from kdserve.service.spec.catalog import catalog
from kdserve.service.api.teachers import probe_mode
from kdserve.service.settings import Settings

# What the `worker` extra brings; the slim image has none of them.
WORKER_ONLY = ("torch", "torchvision", "transformers", "sklearn", "onnx", "onnxscript", "safetensors")


def test_catalogue_is_what_the_worker_runs():
    """Every method and architecture the API serves (and validates jobs for) has its loss and its
    builder in the worker, bound to the same params class, and nothing the worker has is missing."""
    from kdserve.models.zoo import ARCHITECTURES
    from kdserve.worker.losses import METHODS

    served = catalog()
    assert [m["name"] for m in served["methods"]] == list(METHODS)
    assert [a["name"] for a in served["architectures"]] == list(ARCHITECTURES)
    for entry in served["methods"]:
        assert METHODS[entry["name"]].catalog_entry() == entry
        assert METHODS[entry["name"]].params is spec_methods.METHODS[entry["name"]].params
    for entry in served["architectures"]:
        assert ARCHITECTURES[entry["name"]].catalog_entry() == entry


def run_api_script(body: str, tmp_path, block_worker_modules: bool) -> dict:
    """Start the app (lifespan included) in a fresh interpreter, run `body`, return what it prints."""
    block = f"for m in {WORKER_ONLY!r}:\n    sys.modules[m] = None  # import m raises, find_spec(m) is None\n"
    script = "import json, sys\n" + (block if block_worker_modules else "") + textwrap.dedent("""
        from fastapi.testclient import TestClient
        from kdserve.service.app import create_app
        from kdserve.service.settings import Settings
        settings = Settings(data_dir=sys.argv[1], auth="disabled")
        with TestClient(create_app(settings)) as client:
            from kdserve.service.api.teachers import probe_mode
            result = {}
    """) + textwrap.indent(textwrap.dedent(body), "    ") + textwrap.dedent("""
        result["imported"] = sorted(m for m in sys.modules if m.split(".")[0] in %r and sys.modules[m] is not None)
        print(json.dumps(result))
    """ % (WORKER_ONLY,))
    env = {k: v for k, v in os.environ.items() if not k.startswith("KDSERVE_")}
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "data")], cwd=REPO, capture_output=True,
                         text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_api_starts_and_serves_the_catalogue_without_torch(tmp_path):
    result = run_api_script("""
        result["methods"] = [m["name"] for m in client.get("/v1/methods").json()["data"]]
        result["architectures"] = [a["name"] for a in client.get("/v1/architectures").json()["data"]]
        result["probe"] = probe_mode(settings)
    """, tmp_path, block_worker_modules=True)
    served = catalog()
    assert result["methods"] == [m["name"] for m in served["methods"]]
    assert result["architectures"] == [a["name"] for a in served["architectures"]]
    assert result["probe"] == "worker"
    assert result["imported"] == []


def test_api_process_never_imports_torch(tmp_path):
    """With torch installed (this venv) the API still keeps it out of its own process: the
    catalogue comes from the torch-free specs and the probe runs in a child process."""
    result = run_api_script("""
        result["methods"] = len(client.get("/v1/methods").json()["data"])
        result["probe"] = probe_mode(settings)
    """, tmp_path, block_worker_modules=False)
    assert result["methods"] > 0
    assert result["probe"] == "local"
    assert result["imported"] == []


def test_probe_mode_setting():
    assert probe_mode(Settings(probe="worker")) == "worker"
    assert probe_mode(Settings(probe="local")) == "local"
    assert probe_mode(Settings(probe="auto", python="/opt/torch/bin/python")) == "local"
    assert probe_mode(Settings(probe="auto")) == "local"  # torch is installed in the test venv


def test_the_api_side_never_imports_torch():
    code = ("import sys, kdserve.service.serving.runtime, kdserve.service.api.inference_v2, kdserve.service.app; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0
