"""The jobs contract of docs/api.md#jobs: Idempotency-Key, cursor pagination, cancel (queued and running),
events, and the discovery endpoints."""

from __future__ import annotations

import time

import pytest

from api_tests.harness import KD_JOB, upload_dataset, upload_teacher, wait_job


@pytest.fixture(scope="module")
def ids(service, files):
    with service.client() as c:
        return {"teacher_id": upload_teacher(c, files["onnx"])["id"], "dataset_id": upload_dataset(c, files["npz"])["id"]}


def test_idempotency_key(client, ids):
    body = {**KD_JOB, **ids, "training": {"epochs": 1}}
    first = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "abc-1"})
    assert first.status_code == 202
    again = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "abc-1"})
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    other = client.post("/v1/jobs", json={**body, "training": {"epochs": 2}}, headers={"Idempotency-Key": "abc-1"})
    assert other.status_code == 409 and other.json()["error"]["code"] == "conflict"
    assert wait_job(client, first.json()["id"])["status"] == "succeeded"


def test_pagination_newest_first(client, files):
    made = [upload_dataset(client, files["npz"], name=f"page-{i}")["id"] for i in range(5)]
    page1 = client.get("/v1/datasets", params={"limit": 2}).json()
    assert page1["object"] == "list" and page1["has_more"] is True
    assert [d["id"] for d in page1["data"]] == made[::-1][:2]
    page2 = client.get("/v1/datasets", params={"limit": 2, "after": page1["data"][-1]["id"]}).json()
    assert [d["id"] for d in page2["data"]] == made[::-1][2:4]
    assert client.get("/v1/datasets", params={"limit": 0}).status_code == 422
    assert client.get("/v1/datasets", params={"limit": 101}).status_code == 422
    for d in made:
        assert client.delete(f"/v1/datasets/{d}").status_code == 204
    assert client.get(f"/v1/datasets/{made[0]}").status_code == 404


def test_cancel_running_and_queued(client, ids):
    long_body = {**KD_JOB, **ids, "training": {**KD_JOB["training"], "epochs": 5000}}
    running = client.post("/v1/jobs", json=long_body).json()
    queued = client.post("/v1/jobs", json=long_body).json()
    deadline = time.time() + 60
    while client.get(f"/v1/jobs/{running['id']}").json()["status"] != "running":
        assert time.time() < deadline
        time.sleep(0.2)
    # a teacher in use cannot be deleted
    busy = client.delete(f"/v1/teachers/{ids['teacher_id']}")
    assert busy.status_code == 409 and busy.json()["error"]["code"] == "conflict"

    r = client.post(f"/v1/jobs/{queued['id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"

    # wait until it is training, then cancel: it must stop within 10 s
    while client.get(f"/v1/jobs/{running['id']}").json()["epoch"] < 2:
        assert time.time() < deadline
        time.sleep(0.2)
    t0 = time.time()
    client.post(f"/v1/jobs/{running['id']}/cancel")
    job = wait_job(client, running["id"], timeout=10)
    assert job["status"] == "cancelled" and time.time() - t0 < 10
    assert job["model_id"] is None and 2 <= job["epoch"] < 5000
    events = client.get(f"/v1/jobs/{running['id']}/events", params={"limit": 1000}).json()["data"]
    assert any(e["type"] == "metrics" for e in events)  # partial progress kept
    assert client.post(f"/v1/jobs/{running['id']}/cancel").status_code == 409
    # the worker is free for the next job, and the cancelled queued job never ran
    nxt = client.post("/v1/jobs", json={**KD_JOB, **ids, "training": {"epochs": 1}}).json()
    assert wait_job(client, nxt["id"], timeout=60)["status"] == "succeeded"
    assert client.get(f"/v1/jobs/{queued['id']}").json()["started_at"] is None


def test_list_jobs_by_status(client, ids):
    for status in ("succeeded", "cancelled"):
        rows = client.get("/v1/jobs", params={"status": status, "limit": 100}).json()["data"]
        assert all(j["status"] == status for j in rows)
    assert client.get("/v1/jobs", params={"status": "sleeping"}).status_code == 422


def test_events_stream_as_sse(client, ids):
    job = client.post("/v1/jobs", json={**KD_JOB, **ids, "training": {"epochs": 3}}).json()
    with client.stream("GET", f"/v1/jobs/{job['id']}/events", headers={"Accept": "text/event-stream"}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        text = "".join(r.iter_text())
    assert text.count("event: metrics") == 3 and "succeeded" in text
    ids_seen = [int(line[4:]) for line in text.splitlines() if line.startswith("id: ")]
    assert ids_seen == sorted(ids_seen)
    with client.stream("GET", f"/v1/jobs/{job['id']}/events",
                       headers={"Accept": "text/event-stream", "Last-Event-ID": str(ids_seen[-2])}) as r:
        resumed = "".join(r.iter_text())
    assert [int(line[4:]) for line in resumed.splitlines() if line.startswith("id: ")] == ids_seen[-1:]


def test_discovery(client):
    methods = {m["name"]: m for m in client.get("/v1/methods").json()["data"]}
    assert methods["kd"]["needs_teacher"] and not methods["kd"]["needs_labels"]
    assert methods["kd"]["params"]["properties"]["temperature"]["default"] == 4.0
    assert methods["ce"]["needs_labels"] and not methods["ce"]["needs_teacher"]
    archs = {a["name"]: a for a in client.get("/v1/architectures").json()["data"]}
    assert {"mlp", "cnn"} <= set(archs)
    assert archs["mlp"]["params"]["properties"]["hidden_sizes"]["default"] == [128]
    assert client.get("/docs").status_code == 200
    assert client.get("/openapi.json").json()["info"]["title"] == "kdserve"


def test_ce_and_cnn_student(client, ids):
    body = {**ids, "student": {"architecture": "cnn", "params": {"channels": [8, 16]}},
            "method": {"name": "ce"}, "training": {"epochs": 8, "learning_rate": 0.01}}
    job = wait_job(client, client.post("/v1/jobs", json=body).json()["id"])
    assert job["status"] == "succeeded", job["error"]
    assert job["metrics"]["student_accuracy"] > 0.8 and job["metrics"]["teacher_accuracy"] > 0.9
    card = client.get(f"/v1/models/{job['model_id']}").json()
    assert card["input"]["shape"] == [-1, 64] and card["output"]["shape"] == [-1, 10]
