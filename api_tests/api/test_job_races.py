"""Races around job creation, on SQLite and on PostgreSQL: concurrent requests with one
Idempotency-Key answer one job (never a 500), a replay answers the first job even after its
dataset and teacher were deleted, and a DELETE of a teacher or dataset racing a job that needs it
ends one way or the other (the job is refused with 404, or the DELETE with 409), never with a
queued job whose inputs are gone."""

from __future__ import annotations

import threading
import uuid

import pytest

from api_tests.harness import KD_JOB, Service, postgres_database, upload_dataset, upload_teacher, wait_job

ROUNDS = 8


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def svc(request, tmp_path_factory):
    """The session's SQLite service, or one of this module's own on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield request.getfixturevalue("service")
        return
    with postgres_database() as url, Service(tmp_path_factory.mktemp("races-pg"), database_url=url) as s:
        yield s


def together(*calls):
    """Run the calls in threads released at the same instant; their results in order."""
    gate, results = threading.Barrier(len(calls)), [None] * len(calls)

    def run(i, call):
        gate.wait()
        results[i] = call()

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def body(teacher_id: str, dataset_id: str, epochs: int = 1) -> dict:
    return {**KD_JOB, "teacher_id": teacher_id, "dataset_id": dataset_id, "training": {"epochs": epochs}}


def test_concurrent_requests_with_one_idempotency_key(svc, files):
    with svc.client() as c:
        spec = body(upload_teacher(c, files["onnx"])["id"], upload_dataset(c, files["npz"])["id"])
        key = {"Idempotency-Key": f"race-{uuid.uuid4().hex}"}
        clients = [svc.client() for _ in range(8)]
        answers = together(*[lambda cl=cl: cl.post("/v1/jobs", json=spec, headers=key) for cl in clients])
        for cl in clients:
            cl.close()
        assert sorted(a.status_code for a in answers) == [200] * 7 + [202], [a.text for a in answers]
        assert len({a.json()["id"] for a in answers}) == 1
        mine = [j for j in c.get("/v1/jobs", params={"limit": 100}).json()["data"]
                if j["dataset_id"] == spec["dataset_id"]]
        assert len(mine) == 1
        assert wait_job(c, mine[0]["id"])["status"] == "succeeded"


def test_replay_after_the_dataset_and_teacher_were_deleted(svc, files):
    with svc.client() as c:
        spec = body(upload_teacher(c, files["onnx"])["id"], upload_dataset(c, files["npz"])["id"])
        key = {"Idempotency-Key": f"replay-{uuid.uuid4().hex}"}
        first = c.post("/v1/jobs", json=spec, headers=key)
        assert first.status_code == 202
        assert wait_job(c, first.json()["id"])["status"] == "succeeded"
        assert c.delete(f"/v1/datasets/{spec['dataset_id']}").status_code == 204
        assert c.delete(f"/v1/teachers/{spec['teacher_id']}").status_code == 204
        again = c.post("/v1/jobs", json=spec, headers=key)
        assert again.status_code == 200, again.text
        assert again.json()["id"] == first.json()["id"] and again.json()["status"] == "succeeded"
        # without the key the same body is a new request, and its dataset is gone
        assert c.post("/v1/jobs", json=spec).status_code == 404


def race_delete(c, svc, kind: str, resource_id: str, spec: dict) -> tuple[int, int]:
    """POST a job that needs the resource and DELETE the resource at the same instant."""
    with svc.client() as a, svc.client() as b:
        made, deleted = together(lambda: a.post("/v1/jobs", json=spec), lambda: b.delete(f"/v1/{kind}/{resource_id}"))
    outcome = (made.status_code, deleted.status_code)
    assert outcome in ((202, 409), (404, 204)), (made.text, deleted.text)
    if made.status_code == 202:  # it was accepted, so its inputs must still be there when it runs
        assert c.get(f"/v1/{kind}/{resource_id}").status_code == 200
        c.post(f"/v1/jobs/{made.json()['id']}/cancel")
    else:
        assert made.json()["error"]["code"] == "not_found"
        assert c.get(f"/v1/{kind}/{resource_id}").status_code == 404
    return outcome


def test_delete_of_a_dataset_racing_a_new_job(svc, files):
    with svc.client() as c:
        teacher = upload_teacher(c, files["onnx"])["id"]
        outcomes = []
        for _ in range(ROUNDS):
            dataset = upload_dataset(c, files["npz"])["id"]
            outcomes.append(race_delete(c, svc, "datasets", dataset, body(teacher, dataset)))
        jobs = c.get("/v1/jobs", params={"limit": 100}).json()["data"]
        assert not [j for j in jobs if (j["error"] or {}).get("code") == "not_found"]
        print("dataset races (job, delete):", outcomes)


def test_delete_of_a_teacher_racing_a_new_job(svc, files):
    with svc.client() as c:
        dataset = upload_dataset(c, files["npz"])["id"]
        outcomes = []
        for _ in range(3):  # a teacher upload is probed: a few seconds each
            teacher = upload_teacher(c, files["onnx"])["id"]
            outcomes.append(race_delete(c, svc, "teachers", teacher, body(teacher, dataset)))
        print("teacher races (job, delete):", outcomes)
