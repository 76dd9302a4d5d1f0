"""Webhooks without a server: the Standard Webhooks signature against the spec's published example
and the reference verifier, which addresses a webhook may reach (IPv4, IPv6, IPv4 carried in
IPv6, the operator's allow-list, the service's own port), the outbox writing deliveries in the
transaction of the change they announce (and none when it rolls back), and the claim that lets
one sender only make an attempt, with its backoff."""

from __future__ import annotations

import ipaddress
import json
import time

import pytest
from standardwebhooks import Webhook as ReferenceVerifier
from standardwebhooks.webhooks import WebhookVerificationError

from kdserve.service.settings import Settings
from kdserve.service.store.db import Database, Job, JobEvent, Model, Search, SearchEvent, Webhook, WebhookDelivery
from kdserve.service.vocab import WEBHOOK_EVENTS
from kdserve.service.webhooks import signing
from kdserve.service.webhooks.addresses import Policy, Refused, Unresolvable, check, non_public, parse
from kdserve.service.webhooks.sender import Attempt, claim, due_ids, record, retry_delay

# The example of the Standard Webhooks spec (and of Svix's documentation, where it comes from)
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID, SPEC_TS, SPEC_BODY = "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


# ---- signing ------------------------------------------------------------------------------------


def test_the_signature_is_the_specs_example():
    assert signing.signature(SPEC_SECRET, SPEC_ID, SPEC_TS, SPEC_BODY) == SPEC_SIGNATURE


def test_the_reference_verifier_accepts_our_headers_and_refuses_a_changed_body():
    secret = signing.new_secret()
    body = json.dumps({"type": "job.succeeded", "data": {"id": "job_1", "name": "é"}}, ensure_ascii=False).encode()
    headers = signing.headers(secret, "msg_1", int(time.time()), body)
    assert ReferenceVerifier(secret).verify(body, headers)["data"]["name"] == "é"
    with pytest.raises(WebhookVerificationError):
        ReferenceVerifier(secret).verify(body.replace(b"job_1", b"job_2"), headers)
    with pytest.raises(WebhookVerificationError):
        ReferenceVerifier(signing.new_secret()).verify(body, headers)


def test_a_made_secret_is_whsec_and_24_bytes_and_a_given_one_is_checked():
    secret = signing.new_secret()
    assert secret.startswith("whsec_") and len(signing.secret_key(secret)) == 24
    assert signing.new_secret() != secret
    for bad, says in (("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "starts with"), ("whsec_not base64!", "base64"),
                      ("whsec_c2hvcnQ=", "must be 24 to 64")):
        with pytest.raises(ValueError, match=says):
            signing.secret_key(bad)


# ---- addresses ----------------------------------------------------------------------------------


@pytest.mark.parametrize("address, kind", [
    ("127.0.0.1", "loopback"), ("10.0.0.5", "private"), ("172.16.3.4", "private"), ("192.168.1.1", "private"),
    ("169.254.169.254", "link-local"), ("224.0.0.251", "multicast"), ("0.0.0.0", "unspecified"),
    ("240.0.0.1", "reserved"), ("100.64.0.1", "not a public"),
    ("::1", "loopback"), ("::", "unspecified"), ("fe80::1", "link-local"), ("fd12:3456::1", "private"),
    ("ff02::1", "multicast"),
    ("::ffff:127.0.0.1", "loopback"), ("::ffff:10.0.0.1", "private"), ("::ffff:169.254.169.254", "link-local"),
    ("2002:a00:1::1", "private"), ("64:ff9b::7f00:1", "loopback"),
])
def test_non_public_addresses_are_named(address, kind):
    assert kind in non_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.215.14", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_pass(address):
    assert non_public(ipaddress.ip_address(address)) is None


def fixed(*addresses: str):
    return lambda host, port: list(addresses)


def test_a_name_is_refused_when_any_of_its_addresses_is_not_public():
    with pytest.raises(Refused, match=r"hooks\.example \(10\.0\.0\.7\) is a private address"):
        check("https://hooks.example/in", Policy(), fixed("93.184.215.14", "10.0.0.7"))
    dest = check("https://hooks.example/in?x=1", Policy(), fixed("93.184.215.14"))
    assert dest.pinned_url() == "https://93.184.215.14:443/in?x=1" and dest.host_header() == "hooks.example"


def test_the_operator_may_allow_named_hosts_cidrs_or_every_private_address():
    loop = fixed("127.0.0.1")
    for policy in (Policy(allowed_networks=(ipaddress.ip_network("127.0.0.0/8"),)),
                   Policy(allowed_hosts=frozenset({"receiver.local"})), Policy(allow_private=True)):
        assert str(check("http://receiver.local:9000/", policy, loop).address) == "127.0.0.1"
    mapped = check("http://receiver.local:9000/", Policy(allowed_networks=(ipaddress.ip_network("127.0.0.0/8"),)),
                   fixed("::ffff:127.0.0.1"))
    assert mapped.pinned_url() == "http://[::ffff:7f00:1]:9000/"
    with pytest.raises(Refused, match="private"):
        check("http://receiver.local:9000/", Policy(allowed_networks=(ipaddress.ip_network("127.0.0.0/8"),)),
              fixed("10.1.1.1"))


def test_the_services_own_port_is_refused_whatever_is_allowed():
    policy = Policy(allow_private=True, own_port=8000, own_addresses=frozenset({"192.168.5.5"}))
    for address in ("127.0.0.1", "::1", "::ffff:127.0.0.1", "0.0.0.0", "192.168.5.5"):
        with pytest.raises(Refused, match="own API"):
            check("http://me:8000/v1/jobs", policy, fixed(address))
    assert check("http://me:8001/", policy, fixed("127.0.0.1"))


def test_settings_make_the_policy():
    policy = Policy.from_settings(Settings(webhook_allowed_networks=" 127.0.0.1/32, hooks.Internal. ,fd00::/8",
                                           port=8123))
    assert policy.allowed_hosts == {"hooks.internal"} and policy.own_port == 8123
    assert [str(n) for n in policy.allowed_networks] == ["127.0.0.1/32", "fd00::/8"]


@pytest.mark.parametrize("url, says", [("ftp://example.com/x", "http:// or https://"), ("example.com/x", "http"),
                                       ("http:///x", "no host"), ("http://u:p@example.com/", "credentials"),
                                       ("http://example.com:99999/", "valid URL"), ("http://exa mple.com/", "whitespace")])
def test_urls_that_are_not_plain_http_are_refused(url, says):
    with pytest.raises(Refused, match=says):
        parse(url)


def test_a_name_that_does_not_resolve_is_unresolvable():
    def nothing(host, port):
        raise Unresolvable(f"the host {host!r} does not resolve")
    with pytest.raises(Unresolvable):
        check("https://nowhere.invalid/", Policy(), nothing)


# ---- the outbox ---------------------------------------------------------------------------------


@pytest.fixture()
def db(tmp_path):
    database = Database(f"sqlite:///{tmp_path / 'kd.db'}")
    database.migrate()
    announced: list[str] = []
    database.on_deliveries = announced.extend
    database.announced = announced
    yield database
    database.engine.dispose()


def add_hook(db, tenant="acme", events=None, enabled=True, id_="wh_1") -> None:
    with db.session() as s:
        s.add(Webhook(id=id_, tenant=tenant, url="https://hooks.example/in", events=events or list(WEBHOOK_EVENTS),
                      secret=signing.new_secret(), enabled=enabled))


def add_job(db, tenant="acme", id_="job_1") -> None:
    with db.session() as s:
        s.add(Job(id=id_, tenant=tenant, status="queued", dataset_id="ds_1", spec={"metadata": {"name": "x"}}))


def deliveries(db) -> list[WebhookDelivery]:
    with db.session() as s:
        return list(s.query(WebhookDelivery).order_by(WebhookDelivery.seq))


def test_a_status_event_writes_a_delivery_in_its_transaction_and_announces_it_after_commit(db):
    add_hook(db)
    add_hook(db, events=["job.failed"], id_="wh_2")
    add_hook(db, tenant="other", id_="wh_3")
    add_job(db)  # no event row: nothing announced
    assert deliveries(db) == []
    with db.session() as s:
        s.add(JobEvent(job_id="job_1", type="stage", message="running (attempt 1)", data={"status": "running"}))
        s.flush()
        assert db.announced == []  # not before the commit
    [d] = deliveries(db)
    assert (d.webhook_id, d.tenant, d.event_type, d.subject_id, d.status, d.attempts) == (
        "wh_1", "acme", "job.running", "job_1", "pending", [])
    assert d.payload["type"] == "job.running" and d.payload["timestamp"].endswith("Z")
    assert d.payload["data"] | {} == {"id": "job_1", "object": "job", "status": "running", "teacher_id": None,
                                      "dataset_id": "ds_1", "search_id": None, "model_id": None, "error": None,
                                      "metadata": {"name": "x"}, "message": "running (attempt 1)"}
    assert db.announced == [d.id]


def test_a_rolled_back_change_writes_and_announces_nothing(db):
    add_hook(db)
    add_job(db)
    with pytest.raises(RuntimeError):
        with db.session() as s:
            s.add(JobEvent(job_id="job_1", type="stage", message="x", data={"status": "failed"}))
            s.flush()
            raise RuntimeError("the job's transaction fails after the flush")
    assert deliveries(db) == [] and db.announced == []


def test_other_events_metrics_and_disabled_endpoints_write_nothing(db):
    add_hook(db, enabled=False)
    add_hook(db, events=["job.succeeded"], id_="wh_2")
    add_job(db)
    db.add_event("job_1", "epoch 1/3", type="metrics", data={"epoch": 1})
    db.add_event("job_1", "training", type="stage", data={"stage": "training"})
    db.add_event("job_1", "running", type="stage", data={"status": "running"})
    assert deliveries(db) == []
    db.add_event("job_1", "succeeded", type="stage", data={"status": "succeeded"})
    assert [(d.webhook_id, d.event_type) for d in deliveries(db)] == [("wh_2", "job.succeeded")]


def test_models_withheld_variants_and_searches_are_announced(db):
    add_hook(db)
    add_job(db)
    db.add_event("job_1", "int8 not published: too far", level="warning",
                 data={"warning": "variant_withheld", "precision": "int8", "accuracy_delta": -0.2})
    with db.session() as s:
        s.add(Model(id="mdl_1", tenant="acme", name="m", job_id="job_1",
                    card={"num_parameters": 10, "metrics": {"agreement": 0.9}, "artifacts": [{"precision": "fp32"}]}))
    with db.session() as s:  # a search created with its first event, in one flush
        s.add(Search(id="search_1", tenant="acme", status="queued", teacher_id="t", dataset_id="d", spec={}, result={}))
        s.add(SearchEvent(search_id="search_1", type="stage", message="queued", data={"status": "queued"}))
    assert {d.event_type: d.subject_id for d in deliveries(db)} == {
        "model.variant_withheld": "job_1", "model.published": "mdl_1", "search.queued": "search_1"}
    got = {d.event_type: d.payload["data"] for d in deliveries(db)}
    assert got["model.variant_withheld"] == {"job_id": "job_1", "precision": "int8", "accuracy_delta": -0.2,
                                             "message": "int8 not published: too far"}
    assert got["model.published"] == {"id": "mdl_1", "object": "model", "name": "m", "job_id": "job_1",
                                      "num_parameters": 10, "metrics": {"agreement": 0.9}, "precisions": ["fp32"]}
    assert got["search.queued"]["id"] == "search_1" and got["search.queued"]["status"] == "queued"


def test_one_message_id_for_every_endpoint_of_an_event(db):
    add_hook(db)
    add_hook(db, id_="wh_2")
    add_job(db)
    db.add_event("job_1", "cancelled", type="stage", data={"status": "cancelled"})
    first, second = deliveries(db)
    assert first.message_id == second.message_id and first.id != second.id


# ---- claiming and recording ----------------------------------------------------------------------


def test_one_claim_wins_until_the_lease_ends_and_failures_back_off(db):
    settings = Settings(webhook_max_attempts=3, webhook_retry_base_s=5)
    add_hook(db)
    add_job(db)
    db.add_event("job_1", "queued", type="stage", data={"status": "queued"})
    [row] = deliveries(db)
    t = time.time()
    assert due_ids(db, t, 10) == [row.id]
    assert claim(db, row.id, "a", t, lease=60) and not claim(db, row.id, "b", t, lease=60)
    assert due_ids(db, t, 10) == []  # leased
    assert claim(db, row.id, "b", t + 61, lease=60)  # the first sender died: its lease ended
    record(db, settings, row, "a", Attempt(t, 500, None, 3.0), retry=True)  # the dead one's late record: ignored
    assert deliveries(db)[0].attempts == []
    record(db, settings, row, "b", Attempt(t, 500, None, 3.0), retry=True)
    row = deliveries(db)[0]
    assert row.status == "pending" and len(row.attempts) == 1 and row.next_attempt_at >= t + 5
    assert claim(db, row.id, "c", row.next_attempt_at, lease=60)
    record(db, settings, row, "c", Attempt(t, None, "timed out after 10 s", 10000.0), retry=True)
    row = deliveries(db)[0]
    assert row.next_attempt_at >= t + 30 and row.attempts[1]["error"] == "timed out after 10 s"
    assert claim(db, row.id, "d", row.next_attempt_at, lease=60)
    record(db, settings, row, "d", Attempt(t, 503, None, 1.0), retry=True)
    row = deliveries(db)[0]
    assert row.status == "failed" and row.next_attempt_at is None and len(row.attempts) == 3  # max attempts


def test_the_backoff_grows_to_an_hour():
    settings = Settings()
    assert [retry_delay(settings, n) for n in range(1, 9)] == [5, 30, 120, 600, 1800, 3600, 3600, 3600]
