"""The files users actually produce, uploaded as they come and distilled end to end (issue 16):
`torch.onnx.export` with torch's defaults (weights in a `.onnx.data` side file, a fixed batch of
1), a graph that only runs one row at a time, `torch.jit.trace` of a model ending in softmax, a
float64 model, and `pandas.DataFrame.to_csv` with its index and string class names.

The teacher is a real wine classifier trained here on the raw features (it standardises them
itself, as a user's model would); each upload is accepted with what was adapted said in the
answer, and each default job gives a student close to its teacher on rows neither saw."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch

from api_tests.harness import assert_error, run_onnx, upload_dataset, upload_teacher, wait_job

CLASSES = ["barolo", "grignolino", "barbera"]  # wine's three cultivars, as a user's CSV names them


class WineNet(torch.nn.Module):
    """A user's model: raw features in, its own standardisation, logits out."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.net = torch.nn.Sequential(torch.nn.Linear(13, 64), torch.nn.ReLU(), torch.nn.Linear(64, 3))

    def forward(self, x):
        return self.net((x - self.mean) / self.std)


class OneRow(torch.nn.Module):
    """A forward written for one sample (`reshape(1, -1)`): exported, it runs only at batch 1."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x.reshape(1, -1))


@pytest.fixture(scope="module")
def wine(tmp_path_factory):
    from sklearn.datasets import load_wine
    from sklearn.model_selection import train_test_split

    d = tmp_path_factory.mktemp("stock")
    data = load_wine(as_frame=True)
    frame = data.frame  # the label column `target` last
    frame["target"] = [CLASSES[i] for i in data.target]
    train, test = train_test_split(frame, test_size=0.25, stratify=frame["target"], random_state=0)
    # sorted class names are the ids the service gives them (LabelEncoder's order): the teacher learns those
    order = sorted(CLASSES)
    x = torch.tensor(train.drop(columns="target").to_numpy(), dtype=torch.float32)
    y = torch.tensor([order.index(c) for c in train["target"]])
    torch.manual_seed(0)
    model = WineNet(x.mean(0), x.std(0)).eval()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    x_test = test.drop(columns="target").to_numpy().astype(np.float32)
    y_test = np.array([order.index(c) for c in test["target"]])
    with torch.no_grad():
        teacher_acc = float((model(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean())
    one = torch.zeros(1, 13)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (one,), d / "wine.onnx")  # torch's defaults: wine.onnx + wine.onnx.data
        torch.onnx.export(OneRow(model), (one,), d / "one_row.onnx", external_data=False)
        torch.jit.trace(torch.nn.Sequential(model, torch.nn.Softmax(-1)), one).save(str(d / "softmax.pt"))
        torch.jit.trace(_double(model), one.double()).save(str(d / "float64.pt"))  # e.g. trained on numpy's float64
    train.to_csv(d / "wine.csv")  # pandas' defaults: the index as an unnamed first column
    test.to_csv(d / "wine_test.csv")
    return {"dir": d, "x_test": x_test, "y_test": y_test, "teacher_acc": teacher_acc, "order": order}


def _double(model: WineNet) -> WineNet:
    copy = WineNet(model.mean.clone(), model.std.clone())
    copy.load_state_dict(model.state_dict())
    return copy.double().eval()


@pytest.fixture(scope="module")
def dataset(service, wine):
    with service.client() as c:
        return upload_dataset(c, wine["dir"] / "wine.csv")


def test_a_pandas_csv_with_its_index_and_class_names_is_read_as_meant(dataset, wine):
    details = dataset["details"]
    assert details["label_column"] == "target"
    assert details["class_names"] == wine["order"]
    assert details["dropped_columns"] and dataset["feature_shape"] == [13] and dataset["num_classes"] == 3
    assert any("class names" in m for m in details["messages"])


def test_torch_onnx_export_defaults_need_their_data_file_and_say_how(client, wine):
    with open(wine["dir"] / "wine.onnx", "rb") as f:
        r = client.post("/v1/teachers", files={"file": ("wine.onnx", f)})
    assert_error(r, 422, "unsafe_file")
    assert "wine.onnx.data" in r.json()["error"]["message"] and "external_data=False" in r.json()["error"]["message"]


@pytest.fixture(scope="module")
def test_set(service, wine):
    with service.client() as c:
        return upload_dataset(c, wine["dir"] / "wine_test.csv")


def distil(client, teacher: dict, dataset: dict, wine: dict, tmp_path, **extra) -> tuple[dict, dict, float]:
    r = client.post("/v1/jobs", json={"teacher_id": teacher["id"], "dataset_id": dataset["id"],
                                      "training": {"epochs": 40}, **extra})
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["id"])
    assert job["status"] == "succeeded", job["error"]
    card = client.get(f"/v1/models/{job['model_id']}").json()
    path = tmp_path / f"{teacher['id']}.onnx"
    path.write_bytes(client.get(f"/v1/models/{job['model_id']}/download").content)
    acc = float((run_onnx(path, wine["x_test"]).argmax(1) == wine["y_test"]).mean())
    print(f"{teacher['name']}: teacher {wine['teacher_acc']:.3f}, student {acc:.3f} on the held-out quarter")
    return job, card, acc


@pytest.mark.parametrize("upload, adapted", [
    ("onnx+data", {"batch": "made symbolic"}),
    ("one_row.onnx", {"batch": "one row at a time"}),
    ("softmax.pt", {"probabilities": "taken as their log"}),
    ("float64.pt", {"dtype": "float64"}),
])
def test_stock_teachers_are_accepted_and_distilled(service, client, wine, dataset, test_set, tmp_path, upload, adapted):
    d = wine["dir"]
    if upload == "onnx+data":
        with open(d / "wine.onnx", "rb") as f, open(d / "wine.onnx.data", "rb") as g:
            r = client.post("/v1/teachers", files={"file": ("wine.onnx", f), "data": ("wine.onnx.data", g)},
                            data={"name": upload})
        assert r.status_code == 201, r.text
        teacher = r.json()
    else:
        teacher = upload_teacher(client, d / upload, name=upload)
    assert teacher["input_shape"] == [13] and teacher["num_classes"] == 3
    said = teacher["details"]["adaptations"]
    assert set(said) == set(adapted) and all(v in said[k] for k, v in adapted.items()), said

    extra = {"test_dataset_id": test_set["id"]} if upload == "float64.pt" else {}
    job, card, acc = distil(client, teacher, dataset, wine, tmp_path, **extra)
    if extra:  # the held-out quarter scored by the job at the end, as the downloaded file scores it
        assert job["test_dataset_id"] == test_set["id"]
        test = card["test"]
        assert test["rows"] == test["labelled"] == len(wine["y_test"]) and test["dataset_id"] == test_set["id"]
        assert test["student_accuracy"] == pytest.approx(acc, abs=1.5 / len(wine["y_test"]))
        assert test["teacher_accuracy"] == pytest.approx(wine["teacher_acc"]) and test["agreement"] > 0.9
    else:
        assert card.get("test") is None
    assert acc >= wine["teacher_acc"] - 0.1, (acc, wine["teacher_acc"])
    if upload.endswith((".onnx", "+data")):  # a drop-in replacement: the teacher's tensor names
        logits = next(o["name"] for o in teacher["outputs"] if o["logits"])
        assert (card["input"]["name"], card["output"]["name"]) == (teacher["details"]["input_name"], logits)
        session = ort.InferenceSession(str(tmp_path / f"{teacher['id']}.onnx"), providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == [teacher["details"]["input_name"]]
        assert [o.name for o in session.get_outputs()] == [logits]
    assert card["class_names"] == wine["order"]
    assert card["validation"]["rows"] >= 10 and "split of dataset" in card["validation"]["source"]
    assert "optimistic" in card["validation"]["note"]
    timed = card["teacher_latency"]  # the teacher timed in its own runtime; the student's speed-up beside it
    assert timed["latency_ms_batch1"] > 0 and timed["latency_ms_batch64"] > 0
    assert timed["runtime"] == ("torch" if upload.endswith(".pt") else "onnxruntime")
    assert card["speedup"]["batch1"] == pytest.approx(
        timed["latency_ms_batch1"] / card["artifacts"][0]["latency_ms_batch1"], rel=0.01)
    codes = {w["code"] for w in job["warnings"]}
    assert ("teacher_probabilities" in codes) == ("probabilities" in adapted)
    assert ("teacher_row_by_row" in codes) == (upload == "one_row.onnx")
    # a client gets the class names back
    r = client.post(f"/v1/models/{job['model_id']}/predict", json={"inputs": wine["x_test"][:4].tolist()})
    assert r.status_code == 200, r.text
    assert r.json()["labels"] == [wine["order"][i] for i in r.json()["predictions"]]
    assert set(card["versions"]) == {"kdserve", "torch", "onnx", "onnxruntime", "python"}
    # /v2 answers class names too, through Triton's classification extension
    x = wine["x_test"][:2]
    r = client.post(f"/v2/models/{job['model_id']}/infer", json={
        "inputs": [{"name": card["input"]["name"], "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}],
        "outputs": [{"name": card["output"]["name"], "parameters": {"classification": 1}}]})
    assert r.status_code == 200, r.text
    labels = [cell.split(":")[2] for cell in r.json()["outputs"][0]["data"]]
    assert labels == client.post(f"/v1/models/{job['model_id']}/predict", json={"inputs": x.tolist()}).json()["labels"]
    if upload == "onnx+data":
        run_the_usage_snippets(service, card, tmp_path)
        # the held-out quarter, uploaded as the user has it (class names), scores the same on the service
        r = client.post(f"/v1/models/{job['model_id']}/evaluate", json={"dataset_id": test_set["id"]})
        assert r.status_code == 200, r.text
        assert r.json()["rows"] == r.json()["labelled"] == len(wine["y_test"])
        assert r.json()["accuracy"] == pytest.approx(acc) and set(r.json()["predicted_counts"]) <= set(CLASSES)
        assert_error(client.post(f"/v1/models/{job['model_id']}/evaluate", json={"dataset_id": dataset["id"][:-1]}),
                     404, "not_found", "dataset_id")
        np.savez(tmp_path / "narrow.npz", x=np.zeros((3, 5), np.float32))
        narrow = upload_dataset(client, tmp_path / "narrow.npz")
        r = client.post(f"/v1/models/{job['model_id']}/evaluate", json={"dataset_id": narrow["id"]})
        assert_error(r, 422, "invalid_request", "dataset_id")
        assert "[5]" in r.json()["error"]["message"] and "[13]" in r.json()["error"]["message"]
        r = client.post("/v1/jobs", json={"teacher_id": teacher["id"], "dataset_id": dataset["id"],
                                          "test_dataset_id": narrow["id"]})
        assert_error(r, 422, "invalid_request", "test_dataset_id")


def run_the_usage_snippets(service, card: dict, tmp_path) -> None:
    """The card's snippets run as shown, with only KDSERVE_URL and KDSERVE_API_KEY set."""
    env = dict(os.environ, KDSERVE_URL=service.base_url, KDSERVE_API_KEY=service.api_key)
    usage = card["usage"]
    for name in ("download", "predict", "v2_infer"):
        done = subprocess.run(["bash", "-c", usage[name]], env=env, cwd=tmp_path, capture_output=True, text=True)
        assert done.returncode == 0, (name, done.stderr)
    assert json.loads(done.stdout)["outputs"][0]["name"] == card["output"]["name"]
    for name in ("onnxruntime", "sdk"):
        done = subprocess.run([sys.executable, "-c", usage[name]], env=env, cwd=tmp_path, capture_output=True, text=True)
        assert done.returncode == 0 and done.stdout.strip().startswith("["), (name, done.stderr)


def test_a_model_that_fails_on_a_batch_is_refused_with_the_cause_and_the_fix(client, tmp_path):
    """TorchScript's interpreter puts its traceback first: the answer quotes the cause (the last
    error line) and names the input_shape to pass."""

    class Images(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 4, 3)
            self.head = torch.nn.Linear(4 * 6 * 6, 10)

        def forward(self, x):
            return self.head(self.conv(x).flatten(1))

    path = tmp_path / "images.pt"
    torch.jit.trace(Images().eval(), torch.zeros(1, 1, 8, 8)).save(str(path))
    with open(path, "rb") as f:
        r = client.post("/v1/teachers", files={"file": ("images.pt", f)}, data={"input_shape": "[64]"})
    assert_error(r, 422, "teacher_output_mismatch", "input_shape")
    message = r.json()["error"]["message"]
    assert "Error: " in message and "The following operation failed" not in message
    assert "--input-shape" in message
