"""The `kdserve` CLI as a user runs it (a child process) against the real service: uploads, jobs
from flags and from a job.json, live follow, cancel, models, a resumed download, predict, the
demo, `--json` output for scripts, and API errors as a message and exit status 1."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest

from api_tests.harness import REPO, run_onnx
from api_tests.text_fixtures import save_jsonl, sentences


def kdserve(service, *args: str, key: str | None = "default", env: dict | None = None, timeout: float = 600):
    """Run `kdserve --url … --api-key … ARGS`; returns the CompletedProcess."""
    flags = ["--url", service.base_url]
    if key is not None:
        flags += ["--api-key", service.api_key if key == "default" else key]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("KDSERVE_")}
    full_env.update({"COLUMNS": "200", **(env or {})})  # wide unless the test says otherwise
    return subprocess.run([sys.executable, "-m", "kdserve.cli", *flags, *args], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def as_json(result) -> dict | list:
    assert result.returncode == 0, result.stderr + result.stdout
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def uploaded(service, files):
    teacher = as_json(kdserve(service, "teachers", "upload", str(files["onnx"]), "--name", "cli-teacher", "--json"))
    dataset = as_json(kdserve(service, "datasets", "upload", str(files["csv"]), "--label-column", "digit", "--json"))
    return teacher, dataset


@pytest.fixture(scope="module")
def finished_job(service, uploaded):
    teacher, dataset = uploaded
    return as_json(kdserve(service, "jobs", "create", "--teacher", teacher["id"], "--dataset", dataset["id"],
                           "--student", "mlp", "--student-param", "hidden_sizes=[32]", "--method", "kd",
                           "--param", "temperature=4", "--param", "alpha=0.9", "--epochs", "6", "--lr", "0.005",
                           "--metadata", "team=cli", "--wait", "--json"))


def test_uploads_and_listing(service, uploaded, files):
    teacher, dataset = uploaded
    assert teacher["format"] == "onnx" and teacher["name"] == "cli-teacher" and teacher["input_shape"] == [64]
    assert dataset["format"] == "csv" and dataset["labeled"] and dataset["num_classes"] == 10
    listed = as_json(kdserve(service, "teachers", "list", "--limit", "100", "--json"))
    assert listed["object"] == "list" and teacher["id"] in [t["id"] for t in listed["data"]]
    assert as_json(kdserve(service, "datasets", "show", dataset["id"], "--json")) == dataset

    human = kdserve(service, "teachers", "show", teacher["id"])
    assert human.returncode == 0 and teacher["id"] in human.stdout and "cli-teacher" in human.stdout
    table = kdserve(service, "datasets", "list")
    assert table.returncode == 0 and dataset["id"] in table.stdout

    extra = as_json(kdserve(service, "datasets", "upload", str(files["npz"]), "--json"))
    assert as_json(kdserve(service, "datasets", "delete", extra["id"], "--json")) == {"id": extra["id"], "deleted": True}
    gone = kdserve(service, "datasets", "show", extra["id"], "--json")
    assert gone.returncode == 1 and json.loads(gone.stdout)["error"]["code"] == "not_found"


def test_job_from_flags_with_wait(finished_job, uploaded):
    job = finished_job
    assert job["status"] == "succeeded" and job["epoch"] == 6 and job["model_id"]
    assert job["student"]["params"]["hidden_sizes"] == [32]
    assert job["method"] == {"name": "kd", "params": {"temperature": 4, "alpha": 0.9}}
    assert job["training"]["learning_rate"] == 0.005 and job["metadata"] == {"team": "cli"}
    assert job["teacher_id"] == uploaded[0]["id"]


def test_job_from_a_file_and_its_logs(service, uploaded, tmp_path):
    teacher, dataset = uploaded
    spec = tmp_path / "job.json"
    spec.write_text(json.dumps({"teacher_id": teacher["id"], "dataset_id": dataset["id"],
                                "student": {"architecture": "mlp", "params": {"hidden_sizes": [16]}},
                                "method": {"name": "kd"}, "training": {"epochs": 50, "batch_size": 128}}))
    # flags override the file: 3 epochs, not 50; the batch size stays from the file
    queued = as_json(kdserve(service, "jobs", "create", "--file", str(spec), "--epochs", "3", "--json"))
    assert queued["status"] == "queued" and queued["epochs"] == 3 and queued["training"]["batch_size"] == 128

    followed = kdserve(service, "jobs", "logs", queued["id"], "-f", "--json")
    assert followed.returncode == 0, followed.stderr
    events = [json.loads(line) for line in followed.stdout.splitlines()]
    assert [e["id"] for e in events] == sorted({e["id"] for e in events})
    assert [e["data"]["epoch"] for e in events if e["type"] == "metrics"] == [1, 2, 3]
    assert {"status": "succeeded"} in [e["data"] for e in events if e["type"] == "stage"]

    logs = kdserve(service, "jobs", "logs", queued["id"])
    assert logs.returncode == 0 and "epoch 3/3" in logs.stdout and "publishing" in logs.stdout
    shown = as_json(kdserve(service, "jobs", "show", queued["id"], "--json"))
    assert shown["status"] == "succeeded"
    listed = as_json(kdserve(service, "jobs", "list", "--status", "succeeded", "--limit", "100", "--json"))
    assert queued["id"] in [j["id"] for j in listed["data"]]

    # the human --wait output: the final job table, exit status 0 for a succeeded job
    human = kdserve(service, "jobs", "create", "--file", str(spec), "--epochs", "2", "--wait")
    assert human.returncode == 0, human.stderr
    assert "succeeded" in human.stdout and "kdserve models show mdl_" in human.stdout


def test_cancel_and_api_errors(service, uploaded):
    teacher, dataset = uploaded
    job = as_json(kdserve(service, "jobs", "create", "--teacher", teacher["id"], "--dataset", dataset["id"],
                          "--student", "mlp", "--method", "kd", "--epochs", "5000", "--json"))
    cancelled = as_json(kdserve(service, "jobs", "cancel", job["id"], "--json"))
    assert cancelled["id"] == job["id"] and cancelled["status"] in ("cancelled", "running")
    waited = kdserve(service, "jobs", "wait", job["id"], "--json")
    assert waited.returncode == 1 and json.loads(waited.stdout)["status"] == "cancelled"  # not a success

    again = kdserve(service, "jobs", "cancel", job["id"])
    assert again.returncode == 1 and "409" in again.stderr and "conflict" in again.stderr

    bad = kdserve(service, "jobs", "create", "--teacher", teacher["id"], "--dataset", dataset["id"],
                  "--student", "mlp", "--method", "kd", "--param", "temperature=-1", "--json")
    err = json.loads(bad.stdout)
    assert bad.returncode == 1 and err["status"] == 422 and err["error"]["param"] == "method.params.temperature"

    missing = kdserve(service, "teachers", "show", "tch_nope")
    assert missing.returncode == 1 and "not_found" in missing.stderr and "tch_nope" in missing.stderr
    denied = kdserve(service, "jobs", "list", key="kd_" + "z" * 43)
    assert denied.returncode == 1 and "unauthorized" in denied.stderr
    assert "the API key was taken from the --api-key option" in denied.stderr  # where to look
    usage = kdserve(service, "jobs", "create", "--param", "no-equals-sign")
    assert usage.returncode == 2 and "KEY=VALUE" in usage.stderr
    down = subprocess.run([sys.executable, "-m", "kdserve.cli", "--url", "http://127.0.0.1:9", "--api-key", "kd_x",
                           "models", "list", "--json"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert down.returncode == 1 and json.loads(down.stdout)["error"]["code"] == "connection_error"


def test_models_download_resume_and_predict(service, finished_job, tmp_path, digits):
    model_id = finished_job["model_id"]
    card = as_json(kdserve(service, "models", "show", model_id, "--json"))
    assert card["id"] == model_id and card["job_id"] == finished_job["id"]
    fp32 = next(a for a in card["artifacts"] if a["precision"] == "fp32")
    assert model_id in [m["id"] for m in as_json(kdserve(service, "models", "list", "--json"))["data"]]
    human = kdserve(service, "models", "show", model_id)
    assert human.returncode == 0 and "artifacts" in human.stdout and "compression" in human.stdout

    with service.client() as c:
        whole = c.get(f"/v1/models/{model_id}/download").content
    dest = tmp_path / "student.onnx"
    dest.with_name("student.onnx.part").write_bytes(whole[:5000])  # what an interrupted download leaves
    result = as_json(kdserve(service, "models", "download", model_id, "-o", str(dest), "--json"))
    assert result["resumed_from"] == 5000 and result["sha256"] == fp32["sha256"]
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == fp32["sha256"]
    assert not dest.with_name("student.onnx.part").exists()

    into_dir = kdserve(service, "models", "download", model_id, "-o", str(tmp_path))
    assert into_dir.returncode == 0 and "sha256" in into_dir.stdout
    assert (tmp_path / f"{card['name']}.fp32.onnx").read_bytes() == whole

    samples = tmp_path / "samples.json"
    samples.write_text(json.dumps(digits.x_test[:4].tolist()))
    out = as_json(kdserve(service, "predict", model_id, "--input", str(samples), "--json"))
    assert len(out["predictions"]) == 4 and len(out["logits"][0]) == 10
    inline = as_json(kdserve(service, "predict", model_id, "--data", json.dumps(digits.x_test[:2].tolist()), "--json"))
    assert inline["predictions"] == out["predictions"][:2]
    table = kdserve(service, "predict", model_id, "--input", str(samples))
    assert table.returncode == 0 and "prediction" in table.stdout

    # a test set of the user's, scored by the service: the same accuracy as the downloaded file gives
    test_csv = tmp_path / "test.csv"
    test_csv.write_text("".join(",".join(f"{v:g}" for v in row) + f",{label}\n"
                                for row, label in zip(digits.x_test[:200], digits.y_test[:200])))
    test_csv.write_text(",".join(f"p{i}" for i in range(64)) + ",label\n" + test_csv.read_text())
    scored = as_json(kdserve(service, "models", "evaluate", model_id, "--input", str(test_csv), "--json"))
    local = float((run_onnx(dest, digits.x_test[:200]).argmax(1) == digits.y_test[:200]).mean())
    assert scored["rows"] == scored["labelled"] == 200 and abs(scored["accuracy"] - local) < 1e-9
    with service.client() as c:  # the uploaded test set was deleted afterwards
        assert not [d for d in c.get("/v1/datasets", params={"limit": 100}).json()["data"] if d["name"] == "test.csv"]
    human = kdserve(service, "models", "evaluate", model_id, "--input", str(test_csv))
    assert human.returncode == 0 and "accuracy" in human.stdout and "predicted class" in human.stdout


def test_models_delete(service, finished_job):
    model_id = finished_job["model_id"]
    assert as_json(kdserve(service, "models", "delete", model_id, "--json")) == {"id": model_id, "deleted": True}
    gone = kdserve(service, "models", "show", model_id)
    assert gone.returncode == 1 and "not_found" in gone.stderr


def test_ids_are_never_cut_and_quiet_prints_only_ids(service, uploaded):
    teacher, dataset = uploaded
    narrow = kdserve(service, "datasets", "list", "--limit", "100", env={"COLUMNS": "80"})
    assert narrow.returncode == 0 and dataset["id"] in narrow.stdout, narrow.stdout
    narrow = kdserve(service, "teachers", "list", "--limit", "100", env={"COLUMNS": "60"})
    assert narrow.returncode == 0 and f"id: {teacher['id']}\n" in narrow.stdout, narrow.stdout
    assert "name: cli-teacher" in narrow.stdout and "┃" not in narrow.stdout  # a block per row, not a table
    quiet = kdserve(service, "teachers", "list", "--limit", "100", "-q")
    assert quiet.returncode == 0 and teacher["id"] in quiet.stdout.split()
    assert all(line.startswith("tch_") for line in quiet.stdout.split())


def test_methods_and_architectures_with_their_params(service):
    methods = kdserve(service, "methods")
    assert methods.returncode == 0 and "dkd" in methods.stdout and "temperature" in methods.stdout
    assert "needs a teacher" in methods.stdout
    names = [m["name"] for m in as_json(kdserve(service, "methods", "--json"))["data"]]
    assert {"kd", "dist", "dkd", "ce"} <= set(names)
    archs = kdserve(service, "architectures")
    assert archs.returncode == 0 and "hidden_sizes" in archs.stdout and "layer_dropped" in archs.stdout


def test_a_pandas_csv_is_read_as_pandas_wrote_it(service, tmp_path):
    """DataFrame.to_csv with its index and the label column `target` last, uploaded without
    --label-column: the index is dropped and `target` is the label, and the answer says both; a
    label column named with the wrong case is refused with the columns."""
    path = tmp_path / "frame.csv"
    rows = "\n".join(f"{i},{i * 0.5},{i % 3},{i % 2}" for i in range(12))
    path.write_text(",f0,f1,target\n" + rows + "\n")
    ds = as_json(kdserve(service, "datasets", "upload", str(path), "--json"))
    assert ds["feature_shape"] == [2] and ds["labeled"] and ds["num_classes"] == 2
    assert ds["details"]["label_column"] == "target" and ds["details"]["dropped_columns"]
    typo = kdserve(service, "datasets", "upload", str(path), "--label-column", "Target")
    assert typo.returncode == 1 and "422" in typo.stderr and "'f0', 'f1', 'target'" in typo.stderr


def test_upload_fields_reach_the_service(service, teacher_model, tmp_path):
    """--data (an ONNX model's external data file, sent as a second part) and --text-column /
    --text-pair-column (JSONL) are sent as the API's form fields."""
    import torch

    onnx = tmp_path / "digits.onnx"
    torch.onnx.export(teacher_model, (torch.zeros(2, 64),), str(onnx), input_names=["input"], output_names=["logits"],
                      dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True, external_data=True)
    data = onnx.with_name("digits.onnx.data")
    teacher = as_json(kdserve(service, "teachers", "upload", str(onnx), "--data", str(data), "--format", "onnx",
                              "--json"))
    assert teacher["format"] == "onnx" and teacher["input_shape"] == [64] and teacher["num_classes"] == 10
    alone = kdserve(service, "teachers", "upload", str(onnx), "--json")  # the weights are in the data file
    assert alone.returncode == 1 and json.loads(alone.stdout)["status"] == 422

    texts, labels = sentences(40)
    jsonl = save_jsonl(tmp_path / "texts.jsonl", texts, labels, pairs=texts[::-1], text_key="sentence")
    dataset = as_json(kdserve(service, "datasets", "upload", str(jsonl), "--text-column", "sentence",
                              "--text-pair-column", "text_pair", "--json"))
    assert dataset["format"] == "jsonl" and dataset["num_rows"] == 40 and dataset["labeled"]
    missing = kdserve(service, "datasets", "upload", str(jsonl), "--json")  # no `text` field in the rows
    assert missing.returncode == 1 and json.loads(missing.stdout)["status"] == 422


def test_key_from_the_data_dir(service, tmp_path):
    """No --api-key: the CLI reads the key `kdserve up` wrote into KDSERVE_DATA_DIR."""
    result = subprocess.run([sys.executable, "-m", "kdserve.cli", "jobs", "list", "--json"], cwd=tmp_path,
                            env={**{k: v for k, v in os.environ.items() if not k.startswith("KDSERVE_")},
                                 "KDSERVE_URL": service.base_url, "KDSERVE_DATA_DIR": str(service.data_dir),
                                 "PYTHONPATH": str(REPO)},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["object"] == "list"


def test_demo(service, tmp_path):
    result = kdserve(service, "demo", "--workdir", str(tmp_path / "demo"), "--epochs", "15", "--json")
    summary = as_json(result)
    assert summary["job"]["status"] == "succeeded"
    assert summary["held_out_accuracy"] >= 0.9
    assert summary["model"]["compression_ratio"] > 10
    onnx = tmp_path / "demo" / "student.onnx"
    assert hashlib.sha256(onnx.read_bytes()).hexdigest() == summary["model"]["artifacts"][0]["sha256"]

    human = kdserve(service, "demo", "--workdir", str(tmp_path / "demo2"), "--epochs", "3")
    assert human.returncode == 0, human.stderr
    for text in ("uploaded teacher", "distilling: job", "artifacts", "held-out digits"):
        assert text in human.stdout, human.stdout


def operator(*args: str, cwd, **env: str) -> subprocess.CompletedProcess:
    """`kdserve ARGS` as an operator runs it on the service's machine, with only `env` set."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KDSERVE_")}
    return subprocess.run([sys.executable, "-m", "kdserve.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env={**clean, "PYTHONPATH": str(REPO), **env}, timeout=120)


def test_keys_name_their_database_and_never_make_an_empty_one(tmp_path):
    data = tmp_path / "not-the-service"
    db = (data / "kdserve.db").resolve()
    for args in (("keys", "create", "--tenant", "t"), ("keys", "list"), ("keys", "revoke", "key_x")):
        refused = operator(*args, cwd=tmp_path, KDSERVE_DATA_DIR=str(data))
        assert refused.returncode == 1 and refused.stdout == "", refused.stdout
        assert f"database: sqlite:///{db}" in refused.stderr and f"no database at {db}" in refused.stderr
        assert "KDSERVE_DATA_DIR" in refused.stderr and "KDSERVE_DATABASE_URL" in refused.stderr
    as_json = json.loads(operator("keys", "list", "--json", cwd=tmp_path, KDSERVE_DATA_DIR=str(data)).stdout)
    assert as_json["error"]["code"] == "no_database" and str(db) in as_json["error"]["message"]
    elsewhere = operator("keys", "list", cwd=tmp_path, KDSERVE_DATABASE_URL="sqlite:///other.db")
    assert elsewhere.returncode == 1 and f"no database at {tmp_path.resolve() / 'other.db'}" in elsewhere.stderr
    assert not data.exists() and not (tmp_path / "other.db").exists()  # nothing was made

    assert operator("db", "upgrade", cwd=tmp_path, KDSERVE_DATA_DIR=str(data)).returncode == 0  # what `up` also does
    made = operator("keys", "create", "--tenant", "t", cwd=tmp_path, KDSERVE_DATA_DIR=str(data))
    assert made.returncode == 0 and made.stdout.startswith("kd_") and len(made.stdout.split()) == 1  # the key alone
    assert f"database: sqlite:///{db}" in made.stderr
    listed = json.loads(operator("keys", "list", "--json", cwd=tmp_path, KDSERVE_DATA_DIR=str(data)).stdout)
    assert [k["tenant"] for k in listed] == ["t"]
    narrow = operator("keys", "list", cwd=tmp_path, KDSERVE_DATA_DIR=str(data), COLUMNS="60")
    assert narrow.returncode == 0 and f"id: {listed[0]['id']}\n" in narrow.stdout and "tenant: t" in narrow.stdout
