"""KDSERVE_PROBE=worker, what the slim API image (no torch) does: an uploaded teacher is probed by
a Celery task on a real worker (`kdserve up`'s worker consumes the probe queue too) instead of a
child of the API. Every answer must be the one the API's own probe gives: the same teacher
record for good files, the same 422 for broken ones."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from api_tests.harness import MACHINE_REDIS, Service

SAME_FIELDS = ("format", "input_shape", "input_dtype", "num_classes", "num_parameters", "outputs")


class OneDimensional(nn.Module):
    """Loads and runs, but returns [batch] instead of [batch, num_classes] logits."""

    def forward(self, x):
        return x.sum(1)


@pytest.fixture(scope="module")
def remote(tmp_path_factory):
    with Service(tmp_path_factory.mktemp("svc-probe"), redis_url=MACHINE_REDIS,
                 extra_env={"KDSERVE_PROBE": "worker"}) as svc:
        with svc.client() as c:
            yield svc, c


def post(client, name: str, content: bytes, **form):
    return client.post("/v1/teachers", files={"file": (name, io.BytesIO(content))}, data=form)


def test_good_teachers_are_probed_on_the_worker(remote, client, files):
    svc, c = remote
    for kind in ("torchscript", "onnx"):
        content = files[kind].read_bytes()
        here, there = post(client, files[kind].name, content), post(c, files[kind].name, content)
        assert there.status_code == 201, there.text
        assert here.status_code == 201, here.text
        assert {k: there.json()[k] for k in SAME_FIELDS} == {k: here.json()[k] for k in SAME_FIELDS}
        assert there.json()["format"] == kind
    assert svc.log.read_text().count("probing uploaded teacher") == 2
    staged = svc.data_dir / "blobs" / "tmp" / "probes"  # the copies the worker read are gone
    assert not staged.exists() or not any(staged.iterdir())


def test_broken_teachers_get_the_same_422(remote, client, files, tmp_path):
    _svc, c = remote
    wrong = tmp_path / "wrong.pt"
    torch.jit.script(OneDimensional()).save(str(wrong))
    cases = [
        ("truncated.pt", files["torchscript"].read_bytes()[:3000], {}),
        ("narrow.pt", files["torchscript"].read_bytes(), {"input_shape": "[32]"}),
        ("wrong.pt", wrong.read_bytes(), {"input_shape": "[64]"}),
    ]
    for name, content, form in cases:
        here, there = post(client, name, content, **form), post(c, name, content, **form)
        assert here.status_code == 422, here.text
        assert (there.status_code, there.json()) == (here.status_code, here.json()), name
    stored = {t["name"] for t in c.get("/v1/teachers", params={"limit": 100}).json()["data"]}
    assert not stored & {name for name, _, _ in cases}


def test_no_worker_on_the_probe_queue_is_a_503(tmp_path, files, monkeypatch):
    """Nobody consumes the probe queue: the upload is refused as unavailable (not as a bad file),
    within the probe limit plus the queue allowance, and the staged copy is deleted."""
    from kdserve.service.api import teachers
    from kdserve.service.api.deps import Context
    from kdserve.service.errors import ApiError
    from kdserve.service.queue import make_celery, redis_client
    from kdserve.service.settings import Settings
    from kdserve.service.store.blobs import LocalBlobStore

    monkeypatch.setattr(teachers, "PROBE_QUEUE_WAIT_S", 0.0)
    settings = Settings(data_dir=tmp_path, redis_url=MACHINE_REDIS, queue=f"kdtest-noworker-{tmp_path.name}",
                        probe="worker", probe_timeout_s=1.0)
    blobs = LocalBlobStore(tmp_path / "blobs")
    ctx = Context(settings=settings, db=None, blobs=blobs, celery=make_celery(settings), catalog={})
    try:
        with pytest.raises(ApiError) as raised:
            teachers.probe(ctx, files["onnx"], None, None)
    finally:
        redis_client(MACHINE_REDIS).delete(f"{settings.queue}.probe")  # the message nobody took
    assert raised.value.status == 503 and raised.value.code == "unavailable"
    assert f"{settings.queue}.probe" in raised.value.message
    assert not any((tmp_path / "blobs" / "tmp" / "probes").iterdir())


def test_a_prober_without_secrets_probes_from_a_presigned_url(tmp_path, files, s3_server):
    """What deploy/ runs: `kdserve worker --queues probe` given the broker and nothing else — no
    database URL, no S3 credentials. The API stages the upload in the bucket and sends a presigned
    URL; the prober fetches that one file, probes it in the jail, answers, and never opens a
    database (a worker that takes jobs would start its reaper on one)."""
    import os
    import subprocess
    import sys

    from api_tests.s3server import CREDENTIALS
    from kdserve.service.queue import PROBE_TEACHER, make_celery, probe_queue, redis_client
    from kdserve.service.settings import Settings
    from kdserve.service.store.s3 import S3BlobStore

    queue = f"kdtest-prober-{tmp_path.name[-12:]}"
    bare = {k: v for k, v in os.environ.items() if not k.startswith(("KDSERVE_", "AWS_"))}
    prober_env = dict(bare, KDSERVE_REDIS_URL=MACHINE_REDIS, KDSERVE_QUEUE=queue,
                      KDSERVE_DATA_DIR=str(tmp_path / "prober"), PYTHONUNBUFFERED="1")
    bucket = s3_server.new_bucket()
    os.environ.update(CREDENTIALS)  # only this test process (the API's side) signs
    try:
        store = S3BlobStore(bucket, cache_dir=tmp_path / "api-cache", endpoint_url=s3_server.url)
        store.put_file("tmp/probes/x/teacher.pt", files["torchscript"])
        url = store.fetch_url("tmp/probes/x/teacher.pt", 120)
    finally:
        for key in CREDENTIALS:
            os.environ.pop(key, None)
    settings = Settings(data_dir=tmp_path, redis_url=MACHINE_REDIS, queue=queue)
    with open(tmp_path / "prober.log", "wb") as log:
        prober = subprocess.Popen([sys.executable, "-I", "-u", "-m", "kdserve.cli", "worker", "--queues", "probe"],
                                  env=prober_env, stdout=log, stderr=subprocess.STDOUT)
    try:
        answer = make_celery(settings).send_task(PROBE_TEACHER, args=["tmp/probes/x/teacher.pt", None, None, None, url],
                                                 queue=probe_queue(settings)).get(timeout=180)
    finally:
        prober.terminate()
        prober.wait(timeout=60)
        redis_client(MACHINE_REDIS).delete(probe_queue(settings))
    assert answer["ok"] and answer["format"] == "torchscript" and answer["num_classes"] == 10, answer
    assert not list((tmp_path / "prober").glob("*.db")), "the prober opened a database"
