"""Webhooks end to end (issue 18), on a real service (uvicorn, a Celery worker, Redis, SQLite) and a
real receiver this test starts on 127.0.0.1 (a threading http.server): a job's queued, running,
succeeded and model.published events arrive signed (checked with `standardwebhooks`, the Standard
Webhooks reference verifier) while another endpoint hangs without holding up the job; 500s and a
timeout are retried with backoff, each attempt recorded, until a 2xx; a receiver that keeps failing
ends `failed`; a replay sends the same message again; another tenant sees none of it; and without
the operator's allow-list a loopback URL is refused at create and, for an endpoint created while it
was allowed, again at delivery time (nothing sent)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from standardwebhooks import Webhook as ReferenceVerifier

from api_tests.harness import REPO, Service, assert_error, job_body, upload_dataset, upload_teacher, wait_job, wait_until
from kdserve.client import AsyncClient, Client, NotFound
from kdserve.service.vocab import WEBHOOK_EVENTS

RETRY_BASE_S, TIMEOUT_S, MAX_ATTEMPTS = 0.2, 2, 4
SETTINGS = {"KDSERVE_REAPER_INTERVAL_S": "1", "KDSERVE_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.1/32",
            "KDSERVE_WEBHOOK_RETRY_BASE_S": str(RETRY_BASE_S), "KDSERVE_WEBHOOK_TIMEOUT_S": str(TIMEOUT_S),
            "KDSERVE_WEBHOOK_MAX_ATTEMPTS": str(MAX_ATTEMPTS)}

pytestmark = pytest.mark.timeout(600)


class Receiver:
    """A webhook receiver on 127.0.0.1 that records every request. Each path answers 200 unless
    told otherwise: `plan(path, 500, 500)` answers 500 twice first; "sleep:S" waits S seconds before
    answering; a path under /hang/ holds every request until the test ends."""

    def __init__(self):
        self.requests: list[dict] = []
        self.plans: dict[str, list] = {}
        self.lock = threading.Lock()
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with receiver.lock:
                    receiver.requests.append({"path": self.path, "headers": dict(self.headers.items()), "body": body,
                                              "at": time.time()})
                    plan = receiver.plans.get(self.path) or []
                    action = plan.pop(0) if plan else 200
                if self.path.startswith("/hang/"):
                    receiver.release.wait(120)
                    action = 200
                if isinstance(action, str):  # "sleep:S"
                    time.sleep(float(action.split(":")[1]))
                    action = 200
                try:
                    self.send_response(action)
                    self.send_header("content-length", "0")
                    self.end_headers()
                except OSError:  # the sender gave up waiting and closed the connection
                    pass

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def plan(self, path: str, *actions) -> None:
        with self.lock:
            self.plans[path] = list(actions)

    def got(self, path: str) -> list[dict]:
        with self.lock:
            return [r for r in self.requests if r["path"] == path]

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()


def verified(request: dict, secret: str) -> dict:
    """The message, after the reference verifier accepted its signature (it raises otherwise)."""
    return ReferenceVerifier(secret).verify(request["body"], request["headers"])


@pytest.fixture(scope="module")
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    with Service(tmp_path_factory.mktemp("webhooks"), extra_env=SETTINGS) as s:
        yield s


@pytest.fixture(scope="module")
def c(svc):
    with svc.client() as client:
        yield client


@pytest.fixture(scope="module")
def ids(c, files):
    return {"teacher_id": upload_teacher(c, files["torchscript"], name="digits-webhooks")["id"],
            "dataset_id": upload_dataset(c, files["npz"])["id"]}


def create(c, url: str, **fields) -> dict:
    r = c.post("/v1/webhooks", json={"url": url, **fields})
    assert r.status_code == 201, r.text
    return r.json()


def deliveries(c, hook_id: str) -> list[dict]:
    r = c.get(f"/v1/webhooks/{hook_id}/deliveries", params={"limit": 100})
    assert r.status_code == 200, r.text
    return r.json()["data"]


def ended(c, hook_id: str, delivery_id: str, timeout: float = 60) -> dict:
    def check():
        d = next(d for d in deliveries(c, hook_id) if d["id"] == delivery_id)
        return d if d["status"] != "pending" else None
    return wait_until(check, timeout, f"delivery {delivery_id} to end", interval=0.3)


def about(message: dict) -> str | None:
    """The job a message is about (a model's job for model.published)."""
    data = message["data"]
    return data.get("job_id") if message["type"].startswith("model.") else data.get("id")


def test_a_jobs_events_arrive_signed_while_a_hanging_endpoint_holds_nothing_up(svc, c, ids, receiver):
    hook = create(c, receiver.url("/all"), description="everything")
    assert hook["secret"].startswith("whsec_") and hook["events"] == list(WEBHOOK_EVENTS) and hook["enabled"]
    hang = create(c, receiver.url("/hang/1"), events=["job.queued", "job.running", "job.succeeded"])
    r = c.post("/v1/jobs", json=job_body(ids, 3))
    assert r.status_code == 202, r.text
    job = wait_job(c, r.json()["id"])
    assert job["status"] == "succeeded", job

    want = ["job.queued", "job.running", "model.published", "job.succeeded"]

    def arrived():
        mine = [m for m in (verified(q, hook["secret"]) for q in receiver.got("/all")) if about(m) == job["id"]]
        return mine if {m["type"] for m in mine} >= set(want) else None
    messages = wait_until(arrived, 60, "the job's four events at /all")
    assert sorted((m["type"] for m in messages), key=want.index) == want  # each once
    by_type = {m["type"]: m for m in messages}
    assert by_type["job.succeeded"]["data"]["model_id"] == job["model_id"] == by_type["model.published"]["data"]["id"]
    assert by_type["job.queued"]["data"]["dataset_id"] == ids["dataset_id"]
    assert by_type["job.succeeded"]["timestamp"].endswith("Z")

    # what the API recorded matches what arrived: one 200 attempt each, the webhook-id its message id
    sent = {q["headers"]["webhook-id"]: json.loads(q["body"]) for q in receiver.got("/all")}
    recorded = [d for d in deliveries(c, hook["id"]) if d["payload"] in sent.values() and about(d["payload"]) == job["id"]]
    assert sorted(d["event_type"] for d in recorded) == sorted(want)
    for d in recorded:
        assert d["status"] == "succeeded" and d["next_attempt_at"] is None and d["message_id"] in sent
        assert [a["status_code"] for a in d["attempts"]] == [200] and d["attempts"][0]["duration_ms"] >= 0

    # the hanging endpoint: its attempts were timing out while the job ran, and the job ended anyway
    held = [a for d in deliveries(c, hang["id"]) for a in d["attempts"]]
    assert any(a["error"] == f"timed out after {TIMEOUT_S:g} s" and job["started_at"] <= a["at"]
               and a["at"] + a["duration_ms"] / 1000 <= job["finished_at"] + 1 for a in held), held
    assert {d["event_type"] for d in deliveries(c, hang["id"])} == {"job.queued", "job.running", "job.succeeded"}
    assert all(d["status"] != "succeeded" for d in deliveries(c, hang["id"]))
    c.patch(f"/v1/webhooks/{hang['id']}", json={"enabled": False})  # its retries stop: the rest of the module is quiet


def test_500s_and_a_timeout_are_retried_with_backoff_until_a_2xx(c, receiver):
    hook = create(c, receiver.url("/flaky"), events=["job.failed"])
    receiver.plan("/flaky", 500, 500)
    r = c.post(f"/v1/webhooks/{hook['id']}/test")
    assert r.status_code == 202, r.text
    test = r.json()
    assert test["event_type"] == "webhook.test" and test["status"] == "pending" and test["attempts"] == []
    done = ended(c, hook["id"], test["id"])
    assert done["status"] == "succeeded" and [a["status_code"] for a in done["attempts"]] == [500, 500, 200]
    first, second, third = (a["at"] for a in done["attempts"])
    assert second - first >= RETRY_BASE_S and third - second >= 6 * RETRY_BASE_S  # exponential backoff
    got = receiver.got("/flaky")
    assert len(got) == 3 and {q["headers"]["webhook-id"] for q in got} == {done["message_id"]}
    assert all(verified(q, hook["secret"])["type"] == "webhook.test" for q in got)
    assert len({q["headers"]["webhook-timestamp"] for q in got}) >= 2  # each attempt signed anew

    slow = create(c, receiver.url("/slow"))
    receiver.plan("/slow", f"sleep:{TIMEOUT_S + 1}")
    done = ended(c, slow["id"], c.post(f"/v1/webhooks/{slow['id']}/test").json()["id"])
    assert done["status"] == "succeeded", done
    timed_out, ok = done["attempts"]
    assert timed_out["status_code"] is None and timed_out["error"] == f"timed out after {TIMEOUT_S:g} s"
    assert timed_out["duration_ms"] >= TIMEOUT_S * 1000 and ok["status_code"] == 200


def test_a_receiver_that_keeps_failing_ends_failed_after_the_last_attempt(c, receiver):
    hook = create(c, receiver.url("/down"))
    receiver.plan("/down", *([503] * MAX_ATTEMPTS))
    done = ended(c, hook["id"], c.post(f"/v1/webhooks/{hook['id']}/test").json()["id"])
    assert done["status"] == "failed" and done["next_attempt_at"] is None
    assert [a["status_code"] for a in done["attempts"]] == [503] * MAX_ATTEMPTS
    assert len(receiver.got("/down")) == MAX_ATTEMPTS


def test_a_replay_sends_the_same_message_again(c, receiver):
    hook = create(c, receiver.url("/replayed"))
    first = ended(c, hook["id"], c.post(f"/v1/webhooks/{hook['id']}/test").json()["id"])
    r = c.post(f"/v1/webhooks/{hook['id']}/deliveries/{first['id']}/replay")
    assert r.status_code == 202, r.text
    again = r.json()
    assert again["id"] != first["id"] and again["replay_of"] == first["id"]
    assert again["message_id"] == first["message_id"] and again["payload"] == first["payload"]
    assert ended(c, hook["id"], again["id"])["status"] == "succeeded"
    got = receiver.got("/replayed")
    assert len(got) == 2 and got[0]["headers"]["webhook-id"] == got[1]["headers"]["webhook-id"] == first["message_id"]
    assert verified(got[0], hook["secret"]) == verified(got[1], hook["secret"])
    assert_error(c.post(f"/v1/webhooks/{hook['id']}/deliveries/whd_000000000000000000000000/replay"), 404,
                 "not_found", "delivery_id")


def test_another_tenant_sees_nothing_and_gets_none_of_our_events(svc, c, ids, receiver):
    ours = create(c, receiver.url("/ours"), events=["job.queued", "job.cancelled"])
    with svc.client(svc.create_key("webhooks-other")) as other:
        theirs = create(other, receiver.url("/theirs"))
        listed = other.get("/v1/webhooks").json()["data"]
        assert [w["id"] for w in listed] == [theirs["id"]] and listed[0]["secret"] is None
        for method, path in (("GET", ""), ("PATCH", ""), ("DELETE", ""), ("GET", "/deliveries"), ("POST", "/test")):
            r = other.request(method, f"/v1/webhooks/{ours['id']}{path}", json={} if method == "PATCH" else None)
            assert_error(r, 404, "not_found")
        job = c.post("/v1/jobs", json=job_body(ids, 30)).json()  # long enough to be cancelled queued or running
        c.post(f"/v1/jobs/{job['id']}/cancel")
        assert wait_job(c, job["id"])["status"] == "cancelled"
        wait_until(lambda: {verified(q, ours["secret"])["type"] for q in receiver.got("/ours")}
                   >= {"job.queued", "job.cancelled"}, 60, "our events at /ours")
        ended(other, theirs["id"], other.post(f"/v1/webhooks/{theirs['id']}/test").json()["id"])
        assert [verified(q, theirs["secret"])["type"] for q in receiver.got("/theirs")] == ["webhook.test"]
        assert all(d["event_type"] == "webhook.test" for d in deliveries(other, theirs["id"]))


def test_the_services_own_port_and_bad_input_are_refused_with_the_error_shape(svc, c, receiver):
    assert_error(c.post("/v1/webhooks", json={"url": f"http://127.0.0.1:{svc.port}/v1/jobs"}), 422,
                 "invalid_request", "url")
    for body, param in (({"url": "ftp://127.0.0.1/x"}, "url"), ({"url": "http://u:p@127.0.0.1:9/"}, "url"),
                        ({"url": "https://no-such-host.invalid/"}, "url"), ({}, "url"),
                        ({"url": receiver.url("/x"), "events": ["job.exploded"]}, "events.0"),
                        ({"url": receiver.url("/x"), "events": []}, "events"),
                        ({"url": receiver.url("/x"), "secret": "whsec_c2hvcnQ="}, "secret"),
                        ({"url": receiver.url("/x"), "secret": "hunter2"}, "secret"),
                        ({"url": receiver.url("/x"), "colour": "blue"}, "colour")):
        assert_error(c.post("/v1/webhooks", json=body), 422, "invalid_request", param)
    hook = create(c, receiver.url("/patched"), secret="whsec_" + "QUJD" * 8)
    assert hook["secret"] == "whsec_" + "QUJD" * 8
    assert_error(c.patch(f"/v1/webhooks/{hook['id']}", json={"url": None}), 422, "invalid_request", "url")
    assert_error(c.patch(f"/v1/webhooks/{hook['id']}", json={"url": "http://169.254.169.254/"}), 422,
                 "invalid_request", "url")
    assert_error(c.get(f"/v1/webhooks/{hook['id']}/deliveries", params={"status": "lost"}), 422, "invalid_request",
                 "status")
    patched = c.patch(f"/v1/webhooks/{hook['id']}", json={"enabled": False, "description": "paused",
                                                           "events": ["model.published"]}).json()
    assert (patched["enabled"], patched["description"], patched["events"]) == (False, "paused", ["model.published"])
    assert_error(c.post(f"/v1/webhooks/{hook['id']}/test"), 409, "conflict")
    assert c.delete(f"/v1/webhooks/{hook['id']}").status_code == 204
    assert_error(c.get(f"/v1/webhooks/{hook['id']}"), 404, "not_found")


def test_the_sdk_and_the_cli_manage_webhooks(svc, receiver):
    with Client(svc.base_url, svc.api_key) as kd:
        hook = kd.webhooks.create(receiver.url("/sdk"), events=["job.failed"], description="sdk")
        assert kd.webhooks.get(hook.id).secret == hook.secret and hook.secret.startswith("whsec_")
        assert hook.id in [w.id for w in kd.webhooks.list(limit=100).data]
        assert kd.webhooks.update(hook.id, events=["job.failed", "job.cancelled"]).events == ["job.failed",
                                                                                             "job.cancelled"]
        test = kd.webhooks.test(hook.id)
        wait_until(lambda: kd.webhooks.deliveries(hook.id, status="succeeded").data, 60, "the SDK's test event")
    cli = subprocess.run([sys.executable, "-m", "kdserve.cli", "--url", svc.base_url, "--api-key", svc.api_key,
                          "webhooks", "deliveries", hook.id, "--json"], cwd=REPO, capture_output=True, text=True)
    assert cli.returncode == 0, cli.stderr
    assert [d["id"] for d in json.loads(cli.stdout)["data"]] == [test.id]

    async def replay_and_delete():
        async with AsyncClient(svc.base_url, svc.api_key) as kd:
            again = await kd.webhooks.replay(hook.id, test.id)
            await kd.webhooks.delete(hook.id)
            with pytest.raises(NotFound):
                await kd.webhooks.get(hook.id)
            return again
    assert asyncio.run(replay_and_delete()).message_id == test.message_id


def test_without_the_allow_list_loopback_is_refused_at_create_and_at_delivery(tmp_path, receiver):
    data = tmp_path / "svc"
    with Service(data, extra_env=SETTINGS) as allowed, allowed.client() as c:
        hook = create(c, receiver.url("/forbidden"))  # allowed here: the operator's allow-list names 127.0.0.1
    strict = {k: v for k, v in SETTINGS.items() if k != "KDSERVE_WEBHOOK_ALLOWED_NETWORKS"}
    with Service(data, extra_env=strict) as svc, svc.client() as c:
        for url in (receiver.url("/new"), "http://localhost:9/", "http://[::1]:9/", "http://[::ffff:127.0.0.1]:9/",
                    "http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/"):
            r = c.post("/v1/webhooks", json={"url": url})
            assert_error(r, 422, "invalid_request", "url")
        assert "KDSERVE_WEBHOOK_ALLOW_PRIVATE" in c.post("/v1/webhooks", json={"url": receiver.url("/n")}).json()[
            "error"]["message"]
        done = ended(c, hook["id"], c.post(f"/v1/webhooks/{hook['id']}/test").json()["id"])
    assert done["status"] == "failed" and len(done["attempts"]) == 1  # refused once, never retried
    [attempt] = done["attempts"]
    assert attempt["status_code"] is None and attempt["error"].startswith("refused, not sent: 127.0.0.1 is a loopback")
    assert receiver.got("/forbidden") == []
