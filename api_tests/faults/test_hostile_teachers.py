"""Hostile teachers against a running service: each file is built here, uploaded with an ordinary
tenant key, and must be refused with `422 unsafe_file` naming what was refused, leaving nothing
behind — no record, no stored file, no file planted on the host, no secret in any answer. A stock
ONNX export with its external data file is accepted and trains. Where the sandbox is missing,
uploads are refused with a message that names it."""

from __future__ import annotations

import io
import zipfile

import pytest
import torch

from api_tests.harness import KD_JOB, Service, assert_error, post_file, wait_job
from kdserve.service.sandbox.jail import sandbox_problem
from testkit.hostile import (CUSTOM_CODE, Plain, ReadsAFile, Saves, WritesAFile, archive, onnx_custom_domain,
                               onnx_reading, rewrite_code)

pytestmark = pytest.mark.skipif(sandbox_problem("bwrap") is not None, reason="no sandbox here")


def refused(client, content: bytes, named: str, name: str = "t.pt", **form) -> str:
    r = post_file(client, "/v1/teachers", name, content, **form)
    assert_error(r, 422, "unsafe_file", "file")
    assert named in r.json()["error"]["message"], r.json()
    return r.text


def test_torchscript_reading_the_api_key_is_refused(service, client, unchanged):
    key_file = str((service.data_dir / "api_key").resolve())
    text = refused(client, archive(ReadsAFile(key_file)), "aten::from_file")
    assert service.api_key not in text


def test_torchscript_writing_files_is_refused(service, client, unchanged, tmp_path):
    for target in (service.data_dir / "argparse.py", tmp_path / "planted"):
        refused(client, archive(WritesAFile(str(target.resolve()))), "aten::from_file")
        assert not target.exists()

    refused(client, archive(Saves()), "aten::save")


@pytest.mark.parametrize("new,named", list(CUSTOM_CODE.items()))
def test_torchscript_custom_operators_and_classes_are_refused(client, unchanged, new, named):
    refused(client, rewrite_code(archive(Plain()), "torch.relu(", new), named)


@pytest.mark.parametrize("where", ["initializer", "constant", "subgraph"])
def test_onnx_external_data_pointing_at_host_files_is_refused(service, client, unchanged, where):
    key_file = (service.data_dir / "api_key").resolve()
    for location in ("api_key", "../../api_key", str(key_file), "/etc/passwd"):
        text = refused(client, onnx_reading(location, where), "not a data file uploaded", name="t.onnx")
        assert service.api_key not in text


def test_onnx_external_data_outside_its_own_data_file_is_refused(client, unchanged):
    r = client.post("/v1/teachers", files={"file": ("t.onnx", io.BytesIO(onnx_reading("api_key"))),
                                           "data": ("t.onnx.data", io.BytesIO(b"\0" * 2560))})
    assert_error(r, 422, "unsafe_file")
    assert "'api_key'" in r.json()["error"]["message"] and "t.onnx.data" in r.json()["error"]["message"]


def test_onnx_custom_domain_is_refused(client, unchanged):
    refused(client, onnx_custom_domain("com.evil"), "com.evil", name="t.onnx")


@pytest.fixture(scope="module")
def stock_export(tmp_path_factory, teacher_model):
    """What `torch.onnx.export(model, (x,), "digits.onnx")` writes with external data: the graph and
    digits.onnx.data beside it."""
    folder = tmp_path_factory.mktemp("stock")
    path = folder / "digits.onnx"
    torch.onnx.export(teacher_model, (torch.zeros(2, 64),), str(path), input_names=["input"], output_names=["logits"],
                      dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True, external_data=True)
    assert (folder / "digits.onnx.data").exists()
    return path


def test_stock_onnx_export_with_its_data_file_is_accepted_and_trains(client, stock_export, files):
    data = stock_export.with_name("digits.onnx.data")
    r = client.post("/v1/teachers", files={"file": (stock_export.name, stock_export.read_bytes()),
                                           "data": (data.name, data.read_bytes())})
    assert r.status_code == 201, r.text
    teacher = r.json()
    assert teacher["format"] == "onnx" and teacher["num_classes"] == 10 and teacher["input_shape"] == [64]
    with open(files["npz"], "rb") as f:
        dataset = client.post("/v1/datasets", files={"file": ("d.npz", f)}).json()
    job = client.post("/v1/jobs", json={**KD_JOB, "training": {**KD_JOB["training"], "epochs": 3},
                                        "teacher_id": teacher["id"], "dataset_id": dataset["id"]}).json()
    done = wait_job(client, job["id"])
    assert done["status"] == "succeeded", done
    assert done["metrics"]["teacher_accuracy"] > 0.9  # the teacher ran with its real weights


def test_stock_onnx_export_zipped_with_its_data_is_accepted(client, stock_export):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.write(stock_export, stock_export.name)
        zf.write(stock_export.with_name("digits.onnx.data"), "digits.onnx.data")
    r = post_file(client, "/v1/teachers", "digits.zip", buf.getvalue())
    assert r.status_code == 201, r.text
    assert r.json()["format"] == "onnx" and r.json()["num_classes"] == 10


def test_a_data_file_under_another_name_is_refused_with_the_name_to_use(client, unchanged, stock_export):
    r = client.post("/v1/teachers", files={"file": (stock_export.name, stock_export.read_bytes()),
                                           "data": ("weights.bin", stock_export.with_name("digits.onnx.data").read_bytes())})
    assert_error(r, 422, "unsafe_file")
    assert "'digits.onnx.data'" in r.json()["error"]["message"]


def test_no_service_process_imports_from_its_working_directory(tmp_path, files):
    """The images run with the data dir as a writable folder: modules planted in the working
    directory must never be imported by the API, the worker, the probe or the teacher jail."""
    data = tmp_path / "data"
    data.mkdir()
    marker = tmp_path / "imported"
    for module in ("argparse", "json", "numpy", "torch", "celery", "uvicorn", "typing_extensions"):
        (data / f"{module}.py").write_text(f"open({str(marker)!r}, 'a').write('{module}\\n')\n")
    with Service(data, cwd=data) as svc, svc.client() as c:
        with open(files["torchscript"], "rb") as f:
            teacher = c.post("/v1/teachers", files={"file": ("t.pt", f)})
        assert teacher.status_code == 201, teacher.text
        with open(files["npz"], "rb") as f:
            dataset = c.post("/v1/datasets", files={"file": ("d.npz", f)}).json()
        job = c.post("/v1/jobs", json={**KD_JOB, "training": {**KD_JOB["training"], "epochs": 2},
                                       "teacher_id": teacher.json()["id"], "dataset_id": dataset["id"]}).json()
        assert wait_job(c, job["id"])["status"] == "succeeded"
    assert not marker.exists(), marker.read_text()


def test_without_bubblewrap_teacher_uploads_are_refused_naming_it(tmp_path, files):
    with Service(tmp_path / "nobwrap", extra_env={"PATH": "/nonexistent"}) as svc, svc.client() as c:
        with open(files["torchscript"], "rb") as f:
            r = c.post("/v1/teachers", files={"file": ("t.pt", f)})
        assert_error(r, 503, "sandbox_unavailable")
        assert "bubblewrap" in r.json()["error"]["message"] and "KDSERVE_JAIL=off" in r.json()["error"]["message"]
        assert c.get("/v1/teachers").json()["data"] == []


def test_the_documented_opt_out_runs_teachers_without_bubblewrap(tmp_path, files):
    """KDSERVE_JAIL=off: an operator's explicit choice; limits and seccomp still apply."""
    from kdserve.service.sandbox.jail import Budget, JailConfig
    from kdserve.service.sandbox.probe import run_probe

    answer = run_probe(files["torchscript"], None, None, None,
                       jail=JailConfig(mode="off", budget=Budget(cpu_seconds=120), scratch=tmp_path))
    assert answer["ok"] and answer["num_classes"] == 10, answer
    assert list(tmp_path.iterdir()) == []  # its private folders are gone
