"""The HTTP edges that answered 500 from outside, each now a 4xx with the error shape: a /v2
shape with an absurd dimension (JSON and binary), a Last-Event-ID that is not an ASCII number,
cursors and Range values of thousands of digits, a model file removed between the card read and
the download. Downloads name the file in RFC 6266's `filename*=UTF-8''…` (a non-latin-1 model name
made every download a 500), and the SDK and the CLI never build a path from a server-supplied
name: a model named `../../x` lands in the folder asked for, under a plain basename."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.parse

import httpx
import pytest

from api_tests.harness import KD_JOB, assert_error, stored_files, upload_dataset, upload_teacher, wait_job
from kdserve.client import Client

HOSTILE_NAME = "../../☃-évil"  # a path out of the download folder, and not latin-1


@pytest.fixture(scope="module")
def published(service, files):
    """A student published by a real job, whose name is HOSTILE_NAME. Pre-flight now refuses such
    a name (metadata.name is `[A-Za-z0-9_.-]`), so the job names it plainly and the row is renamed
    as a model stored before that rule would be named: downloads must still handle it."""
    import sqlalchemy

    with service.client() as c:
        ids = {"teacher_id": upload_teacher(c, files["onnx"])["id"], "dataset_id": upload_dataset(c, files["npz"])["id"]}
        refused = c.post("/v1/jobs", json={**KD_JOB, **ids, "training": {"epochs": 1}, "metadata": {"name": HOSTILE_NAME}})
        assert refused.status_code == 422 and refused.json()["error"]["param"] == "metadata.name", refused.text
        job = c.post("/v1/jobs", json={**KD_JOB, **ids, "training": {"epochs": 1}, "metadata": {"name": "edges"}}).json()
        job = wait_job(c, job["id"])
        assert job["status"] == "succeeded", job
        engine = sqlalchemy.create_engine(f"sqlite:///{service.data_dir.resolve() / 'kdserve.db'}")
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text("UPDATE models SET name = :n WHERE id = :id"), {"n": HOSTILE_NAME,
                                                                                           "id": job["model_id"]})
        engine.dispose()
        card = c.get(f"/v1/models/{job['model_id']}").json()
    assert card["name"] == HOSTILE_NAME
    return {"card": card, "job": job}


def v2_error(r, status: int = 400) -> str:
    assert r.status_code == status, r.text
    assert isinstance(r.json()["error"], str)
    return r.json()["error"]


@pytest.mark.parametrize("shape", [[0, 1e20], [0, 10**30], [10**19, 0], [0, 2**63]])
def test_v2_absurd_shapes_in_json(client, published, unchanged, shape):
    body = json.dumps({"inputs": [{"name": "input", "shape": shape, "datatype": "FP32", "data": []}]})
    r = client.post(f"/v2/models/{published['card']['id']}/infer", content=body,
                    headers={"Content-Type": "application/json"})
    assert "shape" in v2_error(r)


@pytest.mark.parametrize("shape", [[0, 1e20], [0, 10**30], [10**19, 0]])
def test_v2_absurd_shapes_in_binary(client, published, unchanged, shape):
    header = json.dumps({"inputs": [{"name": "input", "shape": shape, "datatype": "FP32",
                                     "parameters": {"binary_data_size": 0}}]}).encode()
    r = client.post(f"/v2/models/{published['card']['id']}/infer", content=header,
                    headers={"Inference-Header-Content-Length": str(len(header)),
                             "Content-Type": "application/octet-stream"})
    assert "shape" in v2_error(r)


def test_v2_still_serves_after_absurd_shapes(client, published, digits):
    x = digits.x_test[:2]
    body = {"inputs": [{"name": "input", "shape": [2, 64], "datatype": "FP32", "data": x.ravel().tolist()}]}
    assert client.post(f"/v2/models/{published['card']['id']}/infer", json=body).status_code == 200


@pytest.mark.parametrize("last_id", ["²".encode("latin-1"), "¹²".encode("latin-1"), "١٢".encode(), b"12abc", b"-1",
                                     b"9" * 5000, b"99999999999999999999"])
def test_sse_last_event_id_that_is_not_a_number(client, published, unchanged, last_id):
    """HTTP headers are latin-1 on the wire: b'\xb2' is '²', which Python's str.isdigit() calls a digit."""
    job = published["job"]["id"]
    headers = {"Accept": "text/event-stream", "Last-Event-ID": last_id}
    assert_error(client.get(f"/v1/jobs/{job}/events", headers=headers), 422, "invalid_request", "Last-Event-ID")


def test_sse_resumes_from_a_good_last_event_id(client, published):
    job = published["job"]["id"]
    events = client.get(f"/v1/jobs/{job}/events", params={"limit": 1000}).json()["data"]
    r = client.get(f"/v1/jobs/{job}/events", headers={"Accept": "text/event-stream", "Last-Event-ID": str(events[-2]["id"])})
    assert r.status_code == 200
    assert [line for line in r.text.splitlines() if line.startswith("id: ")] == [f"id: {events[-1]['id']}"]


@pytest.mark.parametrize("after", ["9" * 5000, "99999999999999999999", str(2**63), "-5", "1e3"])
@pytest.mark.parametrize("accept", ["application/json", "text/event-stream"])
def test_event_cursor_of_many_digits(client, published, unchanged, after, accept):
    r = client.get(f"/v1/jobs/{published['job']['id']}/events", params={"after": after}, headers={"Accept": accept})
    assert_error(r, 422, "invalid_request", "after")


@pytest.mark.parametrize("route", ["teachers", "datasets", "jobs", "models"])
@pytest.mark.parametrize("after", ["9" * 5000, "x" * 8000])
def test_list_cursor_of_thousands_of_characters(client, unchanged, route, after):
    assert_error(client.get(f"/v1/{route}", params={"after": after}), 422, "invalid_request", "after")


@pytest.mark.parametrize("value", ["bytes=" + "9" * 5000 + "-", "bytes=0-" + "9" * 5000, "bytes=-" + "9" * 5000,
                                   "bytes=99999999999999999999999-", "bytes=0-1,5-9", "bytes=²-".encode("latin-1"),
                                   "items=0-1"])
def test_range_of_thousands_of_digits(client, published, unchanged, value):
    r = client.get(f"/v1/models/{published['card']['id']}/download", headers={"Range": value})
    assert r.status_code == 416, r.text
    if r.content:  # an unsatisfiable range is answered with Content-Range and no body
        assert r.json()["error"]["code"] == "invalid_range"


def test_range_still_works(client, published):
    mid = published["card"]["id"]
    whole = client.get(f"/v1/models/{mid}/download").content
    for value, want in (("bytes=0-9", whole[:10]), ("bytes=-10", whole[-10:]), ("bytes=5-", whole[5:]),
                        (f"bytes=0-{10**18}", whole)):
        r = client.get(f"/v1/models/{mid}/download", headers={"Range": value})
        assert r.status_code == 206 and r.content == want, value


def test_download_names_a_non_latin1_model_in_rfc6266_form(client, published):
    mid = published["card"]["id"]
    r = client.get(f"/v1/models/{mid}/download")
    assert r.status_code == 200 and r.content
    disposition = r.headers["content-disposition"]
    assert disposition.startswith("attachment; ")
    star = disposition.split("filename*=UTF-8''", 1)[1].split(";")[0]
    assert urllib.parse.unquote(star) == "☃-évil.fp32.onnx"  # the basename: no folder from the server
    fallback = disposition.split('filename="', 1)[1].split('"')[0]
    assert fallback.isascii() and "/" not in fallback and ".." not in fallback.replace(".fp32.onnx", "")
    assert client.get(f"/v1/models/{mid}/download", headers={"Range": "bytes=0-3"}).status_code == 206


def test_sdk_download_never_leaves_the_folder(service, published, tmp_path):
    inner = tmp_path / "a" / "b"
    inner.mkdir(parents=True)
    with Client(service.base_url, service.api_key) as kd:
        result = kd.models.download(published["card"]["id"], inner)
    assert result.path.parent == inner and result.path.name == "☃-évil.fp32.onnx"
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["☃-évil.fp32.onnx"]


def test_cli_download_never_leaves_the_folder(service, published, tmp_path):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    env = {**service.env, "KDSERVE_URL": service.base_url, "KDSERVE_API_KEY": service.api_key}
    out = subprocess.run([sys.executable, "-m", "kdserve.cli", "models", "download", published["card"]["id"], "--json"],
                         cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    saved = json.loads(out.stdout)["path"]
    assert (work / saved).resolve().parent == work.resolve()
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()) == \
        ["a/b/☃-évil.fp32.onnx"]
    # the user's own -o is taken as given
    out = subprocess.run([sys.executable, "-m", "kdserve.cli", "models", "download", published["card"]["id"], "-o",
                          str(tmp_path / "mine.onnx"), "--json"], cwd=work, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "mine.onnx").is_file()


def test_model_file_removed_between_card_and_download(service, client, files):
    """The card says the file exists; the store lost it (a partial restore, an operator's rm)."""
    with service.client() as c:
        ids = {"teacher_id": upload_teacher(c, files["onnx"])["id"], "dataset_id": upload_dataset(c, files["npz"])["id"]}
        job = wait_job(c, c.post("/v1/jobs", json={**KD_JOB, **ids, "training": {"epochs": 1}}).json()["id"])
    mid = job["model_id"]
    assert client.get(f"/v1/models/{mid}").status_code == 200
    for f in (service.data_dir / "blobs" / "models" / mid).rglob("*.onnx"):
        f.unlink()
    before = stored_files(service)
    for headers in ({}, {"Range": "bytes=0-9"}, {"If-None-Match": '"x"'}):
        r = client.get(f"/v1/models/{mid}/download", headers=headers)
        assert_error(r, 404, "not_found")
        assert "gone" in r.json()["error"]["message"]
    assert stored_files(service) == before
    assert client.get("/healthz").json() == {"status": "ok"}
    assert httpx.get(service.base_url + "/healthz").status_code == 200
