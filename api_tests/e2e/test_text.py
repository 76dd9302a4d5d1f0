"""Text distillation end to end: tiny BERT teachers built here (api_tests/text_fixtures.py) uploaded
as zipped Hugging Face folders, JSONL datasets, both text students (`transformer` from scratch and
`layer_dropped` copies), classification and embedding heads, ONNX parity, the int8 variant, the
tokenizer shipped in the download zip, and the pre-flight checks that refuse mismatched
vocabularies before anything is queued."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile

import numpy as np
import onnxruntime as ort
import pytest
import torch

from api_tests import text_fixtures as tf
from api_tests.harness import upload_dataset, wait_job


def upload(client, path, expect=201, **form):
    with open(path, "rb") as f:
        r = client.post("/v1/teachers", files={"file": (path.name, f)}, data=form)
    assert r.status_code == expect, r.text
    return r.json()


@pytest.fixture(scope="module")
def text(service, files, tmp_path_factory):
    d = tmp_path_factory.mktemp("text")
    tf.save_teacher(d / "cls", "classification")
    tf.save_teacher(d / "emb", "embedding", layers=3)
    tf.save_teacher(d / "pickled", "embedding", safe=False)
    tf.save_teacher(d / "small_table", "embedding", vocab_size=20)
    texts, labels = tf.sentences(400, seed=1)
    held_texts, held_labels = tf.sentences(200, seed=2)  # never uploaded
    pairs = tf.sentences(400, seed=3)[0]
    with service.client() as c:
        out = {
            "dir": d, "held_texts": held_texts, "held_labels": held_labels,
            "cls": upload(c, tf.zip_folder(d / "cls", d / "cls.zip"), name="sentiment"),
            # wrapped in a top folder, as zipping a folder from a file manager does
            "emb": upload(c, tf.zip_folder(d / "emb", d / "emb.zip", prefix="my-model/")),
            "sentiment": upload_dataset(c, tf.save_jsonl(d / "sentiment.jsonl", texts, labels)),
            "pairs": upload_dataset(c, tf.save_jsonl(d / "pairs.jsonl", texts, None, pairs)),
            "digits_teacher": upload(c, files["torchscript"]),
            "digits": upload_dataset(c, files["npz"]),
        }
    return out


def test_text_uploads_are_described(text):
    cls, emb = text["cls"], text["emb"]
    assert cls["format"] == "hf" and cls["input_dtype"] == "int64" and cls["num_classes"] == 2
    assert cls["details"]["task"] == "classification" and cls["details"]["vocab_size"] == len(tf.VOCAB)
    assert emb["details"]["task"] == "embedding" and emb["num_classes"] == 0 and emb["details"]["num_layers"] == 3
    assert emb["details"]["pooling"] == "mean" and emb["details"]["normalize"] is True
    assert [o["name"] for o in emb["outputs"]] == ["sentence_embedding"] + [f"hidden_states.{i}" for i in range(4)]
    ds = text["sentiment"]
    assert ds["format"] == "jsonl" and ds["num_rows"] == 400 and ds["labeled"] and ds["num_classes"] == 2
    assert ds["details"]["kind"] == "text" and not ds["details"]["text_pairs"]
    assert text["pairs"]["details"]["text_pairs"] and not text["pairs"]["labeled"]


def test_unsafe_and_mismatched_teacher_folders_are_refused(client, text):
    d = text["dir"]
    r = upload(client, tf.zip_folder(d / "pickled", d / "pickled.zip"), expect=422)
    assert r["error"]["code"] == "unsafe_file" and "pickle" in r["error"]["message"]
    r = upload(client, tf.zip_folder(d / "small_table", d / "small_table.zip"), expect=422)
    assert r["error"]["code"] == "teacher_output_mismatch" and "tokenizer" in r["error"]["message"]
    r = upload(client, d / "cls.zip", expect=422, task="translation")
    assert r["error"]["param"] == "task"
    # an encoder without a classification head asked to be a classifier: its head would be random
    r = upload(client, d / "emb.zip", expect=422, task="classification")
    assert r["error"]["code"] == "teacher_output_mismatch" and "classifier" in r["error"]["message"]
    # a classifier's encoder can serve as an embedding teacher
    assert upload(client, d / "cls.zip", task="embedding")["details"]["task"] == "embedding"
    assert not [t for t in client.get("/v1/teachers", params={"limit": 100}).json()["data"]
                if t["name"] in ("pickled.zip", "small_table.zip")]


def test_bad_jsonl_is_refused_at_upload(client, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine", "label": 1}\n{"text": "no label type", "label": "positive"}\n')
    with open(bad, "rb") as f:
        r = client.post("/v1/datasets", files={"file": ("bad.jsonl", f)})
    assert r.status_code == 422 and r.json()["error"]["param"] == "label_column" and "line 2" in r.json()["error"]["message"]
    with open(bad, "rb") as f:
        r = client.post("/v1/datasets", files={"file": ("bad.jsonl", f)}, data={"text_column": "body"})
    assert r.status_code == 422 and r.json()["error"]["param"] == "text_column"


def job(text, teacher="cls", dataset="sentiment", arch="layer_dropped", params=None, method="kd", **extra):
    return {"teacher_id": text[teacher]["id"], "dataset_id": text[dataset]["id"],
            "student": {"architecture": arch, "params": params or {}}, "method": {"name": method},
            "training": {"epochs": 4, "batch_size": 32, "learning_rate": 0.003}, "text": {"max_length": 32}, **extra}


@pytest.mark.parametrize("body,param", [
    # the vocabulary mismatch: a student table smaller than the teacher tokenizer
    (dict(arch="transformer", params={"vocab_size": 20, "hidden": 32, "heads": 2}), "student.params.vocab_size"),
    (dict(teacher="digits_teacher"), "teacher_id"),                      # text data, a teacher without a tokenizer
    (dict(arch="mlp"), "student.architecture"),                          # a numeric student on text
    (dict(dataset="digits"), "dataset_id"),                              # a text teacher on numeric data
    (dict(params={"layers": [0, 5]}), "student.params.layers"),          # the teacher has 2 layers
    (dict(params={"hidden_size": 64}), "student.params.hidden_size"),    # wider than the teacher
    (dict(params={"embedding_rank": 32}), "student.params.embedding_rank"),  # a full-rank factorisation
    (dict(params={"hidden_size": 16, "embedding_rank": 20}), "student.params.embedding_rank"),
    (dict(params={"embedding_full_rows": 10}), "student.params.embedding_full_rows"),  # full rows need a rank
    (dict(params={"embedding_rank": 8, "embedding_full_rows": 10_000}), "student.params.embedding_full_rows"),
    (dict(teacher="emb", dataset="pairs"), "method.name"),               # kd needs classes; an embedding teacher has none
    (dict(text={"max_length": 100}), "text.max_length"),                 # the teacher has 64 positions
    (dict(arch="transformer", params={"hidden": 30, "heads": 4}), "student.params.hidden"),
])
def test_preflight_refuses_mismatches(client, text, body, param):
    r = client.post("/v1/jobs", json={**job(text, **{k: v for k, v in body.items() if k != "text"}),
                                      **({"text": body["text"]} if "text" in body else {})})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["param"] == param, r.json()


def test_a_text_teacher_with_a_tabular_student_and_vice_versa(client, text):
    r = client.post("/v1/jobs", json={"teacher_id": text["digits_teacher"]["id"], "dataset_id": text["digits"]["id"],
                                      "student": {"architecture": "transformer"}, "method": {"name": "kd"}})
    assert r.status_code == 422 and r.json()["error"]["param"] == "student.architecture"


def onnx_outputs(onnx_bytes: bytes, tokenizer_json: str, texts: list[str], max_length: int) -> np.ndarray:
    """What a client does with the download: tokenise with the shipped tokenizer, run onnxruntime."""
    from kdserve.service.serving import textio

    enc = textio.encode(textio.load_tokenizer(tokenizer_json), texts, max_length)
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]
    return session.run(None, {"input_ids": enc.input_ids, "attention_mask": enc.attention_mask})[0]


def teacher_outputs(text, name: str, texts: list[str]) -> np.ndarray:
    from kdserve.models.teachers import load_teacher
    from kdserve.service.serving import textio

    t = load_teacher(text["dir"] / f"{name}.zip")
    enc = textio.encode(t.tokenizer, texts, 32)
    with torch.no_grad():
        return t.run(tuple(torch.from_numpy(a) for a in (enc.input_ids, enc.attention_mask, enc.token_type_ids)),
                     [t.logits_name])[t.logits_name].numpy()


def check_download(client, card, precision="fp32") -> tuple[bytes, str]:
    """The zip holds model.onnx (the same bytes as the onnx artifact) and the tokenizer."""
    art = next(a for a in card["artifacts"] if a["precision"] == precision)
    onnx_bytes = client.get(f"/v1/models/{card['id']}/download", params={"precision": precision}).content
    assert hashlib.sha256(onnx_bytes).hexdigest() == art["sha256"]
    r = client.get(f"/v1/models/{card['id']}/download", params={"format": "zip", "precision": precision})
    assert r.status_code == 200 and f'.{precision}.zip"' in r.headers["content-disposition"]
    bundle = next(b for b in card["bundles"] if b["precision"] == precision)
    assert hashlib.sha256(r.content).hexdigest() == bundle["sha256"] == r.headers["etag"].strip('"')
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        names = set(zf.namelist())
        assert {"model.onnx", "tokenizer/tokenizer.json", "tokenizer/kdserve_text.json", "tokenizer/vocab.txt"} <= names
        assert zf.read("model.onnx") == onnx_bytes
        info = json.loads(zf.read("tokenizer/kdserve_text.json"))
        assert info["max_length"] == 32 and info["inputs"] == ["input_ids", "attention_mask"]
        return onnx_bytes, zf.read("tokenizer/tokenizer.json").decode()


@pytest.mark.parametrize("arch,params,method", [
    ("layer_dropped", {"layers": [1]}, "kd"),
    ("transformer", {"layers": 1, "hidden": 32, "heads": 2, "intermediate": 32}, "dkd"),
])
def test_classification_teacher_end_to_end(client, text, arch, params, method):
    body = job(text, arch=arch, params=params, method=method, export={"quantize": ["int8"], "max_accuracy_drop": 0.05})
    r = client.post("/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    done = wait_job(client, r.json()["id"])
    assert done["status"] == "succeeded", done["error"]
    assert done["metrics"]["student_accuracy"] > 0.6 and done["metrics"]["agreement"] > 0.6
    card = client.get(f"/v1/models/{done['model_id']}").json()
    assert card["inputs"] == [{"name": "input_ids", "shape": [-1, -1], "datatype": "INT64"},
                              {"name": "attention_mask", "shape": [-1, -1], "datatype": "INT64"}]
    assert card["output"] == {"name": "logits", "shape": [-1, 2], "datatype": "FP32"}
    fp32 = card["artifacts"][0]
    assert fp32["precision"] == "fp32" and fp32["max_abs_diff"] <= 1e-4 and fp32["argmax_agreement"] == 1.0
    assert {a["precision"] for a in card["artifacts"]} == {"fp32", "int8"}  # within 5 points on this task
    assert card["compression_ratio"] > 1 and card["text"]["task"] == "classification"
    assert card["teacher_latency"]["runtime"] == "torch" and card["teacher_latency"]["latency_ms_batch64"] > 0
    assert card["speedup"]["batch1"] > 0 and card["speedup"]["batch64"] > 0

    onnx_bytes, tokenizer = check_download(client, card)
    held = text["held_texts"]
    student = onnx_outputs(onnx_bytes, tokenizer, held, 32)
    teacher = teacher_outputs(text, "cls", held)
    assert np.mean(teacher.argmax(1) == text["held_labels"]) > 0.9  # the teacher learned the task
    assert np.mean(student.argmax(1) == teacher.argmax(1)) > 0.7, method
    int8_bytes, _ = check_download(client, card, "int8")
    assert onnx_outputs(int8_bytes, tokenizer, held[:3], 32).shape == (3, 2)

    # served: texts in, tokenised by the API with the student's tokenizer
    r = client.post(f"/v1/models/{card['id']}/predict", json={"inputs": held[:5]})
    assert r.status_code == 200, r.text
    assert np.allclose(r.json()["logits"], student[:5], atol=1e-4)
    assert r.json()["predictions"] == student[:5].argmax(1).tolist()
    r = client.post(f"/v1/models/{card['id']}/predict", json={"inputs": [[0.5, 1.0]]})
    assert r.status_code == 422 and r.json()["error"]["param"] == "inputs"

    # Open Inference Protocol v2: BYTES text in, tokenised server-side; token ids work too
    meta = client.get(f"/v2/models/{card['id']}").json()
    assert [i["name"] for i in meta["inputs"]] == ["text", "input_ids", "attention_mask"]
    assert meta["inputs"][0]["datatype"] == "BYTES"
    r = client.post(f"/v2/models/{card['id']}/infer",
                    json={"id": "t1", "inputs": [{"name": "text", "shape": [3], "datatype": "BYTES", "data": held[:3]}]})
    assert r.status_code == 200, r.text
    out = r.json()["outputs"][0]
    assert out["name"] == "logits" and out["shape"] == [3, 2]
    assert np.allclose(np.reshape(out["data"], (3, 2)), student[:3], atol=1e-4)
    r = client.post(f"/v2/models/{card['id']}/versions/int8/infer",
                    json={"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [held[0]]}]})
    assert r.status_code == 200 and r.json()["model_version"] == "int8"
    r = client.post(f"/v2/models/{card['id']}/infer",
                    json={"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [7]}]})
    assert r.status_code == 400 and "not a string" in r.json()["error"]
    r = client.post(f"/v2/models/{card['id']}/infer",  # trained on single texts
                    json={"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]},
                                     {"name": "text_pair", "shape": [1], "datatype": "BYTES", "data": ["b"]}]})
    assert r.status_code == 400 and "single texts" in r.json()["error"]


@pytest.mark.parametrize("arch,params,method,dataset", [
    ("layer_dropped", {"every": 2}, "embedding_cosine", "pairs"),                   # layers [1], text pairs
    ("layer_dropped", {"layers": [0, 2], "hidden_size": 16}, "embedding_relational", "sentiment"),  # narrower
    ("layer_dropped", {"layers": [0, 2], "embedding_rank": 8, "embedding_full_rows": 10, "freeze_embeddings": False},
     "embedding_cosine", "sentiment"),  # low-rank table with full rows for the 10 most used tokens
    ("transformer", {"layers": 1, "hidden": 32, "heads": 2}, "embedding_mse", "sentiment"),
])
def test_embedding_teacher_end_to_end(client, text, arch, params, method, dataset):
    body = job(text, teacher="emb", dataset=dataset, arch=arch, params=params, method=method,
               export={"quantize": ["int8"], "max_accuracy_drop": 0.02})
    r = client.post("/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    done = wait_job(client, r.json()["id"])
    assert done["status"] == "succeeded", done["error"]
    m = done["metrics"]
    assert m["student_accuracy"] is None and m["mean_cosine"] > 0.8 and 0 <= m["neighbour_overlap_at_10"] <= 1
    card = client.get(f"/v1/models/{done['model_id']}").json()
    assert card["output"] == {"name": "sentence_embedding", "shape": [-1, 32], "datatype": "FP32"}
    assert card["artifacts"][0]["max_abs_diff"] <= 1e-4 and card["artifacts"][0]["mean_cosine"] > 0.9999
    assert card["metrics"]["mean_cosine"] == pytest.approx(m["mean_cosine"])
    events = client.get(f"/v1/jobs/{done['id']}/events", params={"limit": 1000}).json()["data"]
    assert any("val_cosine" in e["message"] for e in events if e["type"] == "metrics")
    if "embedding_rank" in params:  # [V, r] @ [r, 32] + full rows instead of [V, 32]: Gathers + MatMul, int8 built
        layer = 4 * 32 * 33 + (32 * 64 + 64) + (64 * 32 + 32) + 4 * 32  # attention, feed-forward, 2 LayerNorms
        embeddings = len(tf.VOCAB) * 8 + 8 * 32 + 11 * 32 + (64 + 2) * 32 + 2 * 32  # words (+ full rows), positions
        # + segments, LayerNorm
        assert card["num_parameters"] == embeddings + 2 * layer + 32 * 33  # + the head
        assert any("int8" in e["message"] and "could not be built" not in e["message"] for e in events)

    onnx_bytes, tokenizer = check_download(client, card)
    held = text["held_texts"]
    student = onnx_outputs(onnx_bytes, tokenizer, held, 32)
    teacher = teacher_outputs(text, "emb", held)
    assert np.allclose(np.linalg.norm(student, axis=1), 1.0, atol=1e-5)  # normalised like the teacher
    cosine = float(np.mean(np.sum(student * teacher, axis=1)))
    assert cosine > 0.8, (arch, method, cosine)
    r = client.post(f"/v1/models/{card['id']}/predict", json={"inputs": held[:4]})
    assert r.status_code == 200 and r.json()["logits"] == []
    assert np.allclose(r.json()["embeddings"], student[:4], atol=1e-4)
    inputs = [{"name": "text", "shape": [2], "datatype": "BYTES", "data": held[:2]}]
    if dataset == "pairs":  # a model trained on pairs takes the second texts too
        inputs.append({"name": "text_pair", "shape": [2], "datatype": "BYTES", "data": held[2:4]})
    r = client.post(f"/v2/models/{card['id']}/infer", json={"inputs": inputs})
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["name"] == "sentence_embedding" and r.json()["outputs"][0]["shape"] == [2, 32]
    if dataset != "pairs":
        assert np.allclose(np.reshape(r.json()["outputs"][0]["data"], (2, 32)), student[:2], atol=1e-4)


def test_fitnet_on_hidden_states_with_a_layer_mapping(client, text):
    """Student layer 0 learns the teacher's layer 2 (its masked-mean hidden state) through a regressor."""
    body = job(text, params={"layers": [1]}, method="fitnet", teacher_features="hidden_states.2")
    body["method"]["params"] = {"student_layer": 0, "kd_weight": 1.0}
    done = wait_job(client, client.post("/v1/jobs", json=body).json()["id"])
    assert done["status"] == "succeeded", done["error"]
    assert done["metrics"]["agreement"] > 0.6
    r = client.post("/v1/jobs", json={**body, "teacher_features": "hidden_states.9"})
    assert r.status_code == 422 and r.json()["error"]["param"] == "teacher_features"
