"""The Python SDK (kdserve/client/) against the real service: typed results, errors with the
API's code, a job followed over Server-Sent Events (also across a cut connection), and model
downloads that resume an interrupted transfer and check the sha256."""

from __future__ import annotations

import asyncio
import hashlib

import httpx
import numpy as np
import pytest

from api_tests.netfaults import CuttingProxy
from kdserve.client import (APIConnectionError, AsyncClient, ChecksumMismatch, Client, Conflict, InvalidRequest,
                            NotFound, Unauthorized, WaitTimeout)
from kdserve.service.schemas import DatasetOut, EventOut, JobOut, ModelOut, TeacherOut

STUDENT = {"architecture": "mlp", "params": {"hidden_sizes": [32]}}
METHOD = {"name": "kd", "params": {"temperature": 4.0, "alpha": 0.9}}


@pytest.fixture(scope="module")
def kd(service):
    with Client(service.base_url, service.api_key) as c:
        yield c


@pytest.fixture(scope="module")
def uploaded(kd, files):
    return {"teacher": kd.teachers.create(files["torchscript"], name="sdk-teacher"),
            "dataset": kd.datasets.create(files["csv"], label_column="digit", name="sdk-digits")}


@pytest.fixture(scope="module")
def finished(kd, uploaded):
    """A succeeded job and the events `wait` delivered while following it."""
    seen: list[EventOut] = []
    job = kd.jobs.create(teacher_id=uploaded["teacher"].id, dataset_id=uploaded["dataset"].id, student=STUDENT,
                         method=METHOD, training={"epochs": 8, "learning_rate": 0.005}, metadata={"via": "sdk"})
    final = kd.jobs.wait(job.id, on_event=seen.append, timeout=300)
    return final, seen


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_uploads_are_typed(kd, uploaded, files):
    teacher, dataset = uploaded["teacher"], uploaded["dataset"]
    assert isinstance(teacher, TeacherOut) and teacher.format == "torchscript" and teacher.input_shape == [64]
    assert teacher.sha256 == sha256(files["torchscript"].read_bytes())
    assert isinstance(dataset, DatasetOut) and dataset.format == "csv" and dataset.labeled and dataset.num_classes == 10
    assert kd.teachers.get(teacher.id) == teacher
    assert kd.datasets.get(dataset.id) == dataset
    assert teacher.id in [t.id for t in kd.teachers.list(limit=100).data]
    assert dataset.id in [d.id for d in kd.datasets.iter(page_size=1)]  # pages through has_more/after
    assert {m.name for m in kd.methods.list().data} >= {"kd", "ce"}
    assert "mlp" in {a.name for a in kd.architectures.list().data}


def test_errors_carry_the_api_code(service, kd, uploaded, files):
    with pytest.raises(NotFound) as e:
        kd.teachers.get("tch_doesnotexist")
    assert e.value.status == 404 and e.value.code == "not_found" and "tch_doesnotexist" in e.value.message

    with pytest.raises(InvalidRequest) as e:
        kd.jobs.create(teacher_id=uploaded["teacher"].id, dataset_id=uploaded["dataset"].id, student="mlp",
                       method="no-such-method")
    assert e.value.status == 422 and e.value.param == "method.name" and "kd" in e.value.message

    with pytest.raises(InvalidRequest) as e:
        kd.jobs.create(dataset_id=uploaded["dataset"].id, student="mlp", method="kd", training={"epochs": 0})
    assert e.value.param == "training.epochs"

    with pytest.raises(InvalidRequest) as e:
        kd.teachers.create(files["npz"])  # data is not a teacher
    assert e.value.code == "unsupported_format" and e.value.param == "file"

    with pytest.raises(InvalidRequest) as e:
        kd.teachers.get("../datasets")  # never reaches another route
    assert e.value.code == "invalid_request"

    with Client(service.base_url, "kd_" + "x" * 43) as bad:
        with pytest.raises(Unauthorized) as e:
            bad.teachers.list()
    assert e.value.status == 401 and e.value.code == "unauthorized"

    with Client("http://127.0.0.1:9", "kd_x", max_retries=0) as nowhere:
        with pytest.raises(APIConnectionError) as e:
            nowhere.jobs.list()
    assert e.value.status is None and "127.0.0.1:9" in e.value.message


def test_idempotency_key(kd, uploaded):
    spec = dict(teacher_id=uploaded["teacher"].id, dataset_id=uploaded["dataset"].id, student=STUDENT, method=METHOD,
                training={"epochs": 1})
    first = kd.jobs.create(**spec, idempotency_key="sdk-idem-1")
    assert isinstance(first, JobOut) and first.status == "queued"
    assert kd.jobs.create(**spec, idempotency_key="sdk-idem-1").id == first.id
    with pytest.raises(Conflict) as e:
        kd.jobs.create(**{**spec, "training": {"epochs": 2}}, idempotency_key="sdk-idem-1")
    assert e.value.status == 409 and e.value.code == "conflict"
    assert kd.jobs.wait(first.id, timeout=300).status == "succeeded"


def test_wait_follows_every_event_once(kd, finished):
    job, seen = finished
    assert job.status == "succeeded", job.error
    assert job.metadata == {"via": "sdk"} and job.model_id
    ids = [e.id for e in seen]
    assert ids == sorted(set(ids))
    assert ids == [e.id for e in kd.jobs.events(job.id, limit=1000).data]
    assert [e.data["epoch"] for e in seen if e.type == "metrics"] == list(range(1, 9))
    assert {"status": "succeeded"} in [e.data for e in seen if e.type == "stage"]


def test_wait_polls_when_told_and_times_out(kd, uploaded, finished):
    job, seen = finished
    polled: list[EventOut] = []
    assert kd.jobs.wait(job.id, on_event=polled.append, use_sse=False).status == "succeeded"
    assert [e.id for e in polled] == [e.id for e in seen]

    long = kd.jobs.create(teacher_id=uploaded["teacher"].id, dataset_id=uploaded["dataset"].id, student=STUDENT,
                          method=METHOD, training={"epochs": 5000})
    with pytest.raises(WaitTimeout):
        kd.jobs.wait(long.id, timeout=1.5)
    assert kd.jobs.cancel(long.id).id == long.id
    assert kd.jobs.wait(long.id, timeout=60).status == "cancelled"


def test_wait_resumes_a_cut_event_stream_with_last_event_id(service, kd, uploaded):
    job = kd.jobs.create(teacher_id=uploaded["teacher"].id, dataset_id=uploaded["dataset"].id, student=STUDENT,
                         method=METHOD, training={"epochs": 10})
    seen: list[EventOut] = []
    with CuttingProxy(service.port, match="/events", cut_after=1200, times=2) as proxy:
        with Client(proxy.base_url, service.api_key) as through_proxy:
            final = through_proxy.jobs.wait(job.id, on_event=seen.append, timeout=300)
    assert final.status == "succeeded" and proxy.cuts == 2
    streams = [r for r in proxy.requests if "/events" in r.split("\r\n")[0]]
    assert len(streams) >= 3
    assert "last-event-id" not in streams[0].lower()
    assert all("last-event-id:" in r.lower() for r in streams[1:3])
    ids = [e.id for e in seen]
    assert ids == [e.id for e in kd.jobs.events(job.id, limit=1000).data]  # all of them, once, in order


def test_download_checks_sha256_and_renames_atomically(kd, finished, tmp_path):
    job, _ = finished
    card = kd.models.get(job.model_id)
    assert isinstance(card, ModelOut) and card.job_id == job.id
    (fp32,) = [a for a in card.artifacts if a.precision == "fp32"]
    result = kd.models.download(card.id, tmp_path)
    assert result.path == tmp_path / f"{card.name}.fp32.onnx" and result.resumed_from == 0
    assert sha256(result.path.read_bytes()) == fp32.sha256 == result.sha256
    assert not list(tmp_path.glob("*.part"))
    again = kd.models.download(card.id, result.path)  # already there and verified: nothing travels
    assert again.resumed_from == fp32.size_bytes
    with pytest.raises(NotFound) as e:
        kd.models.download(card.id, tmp_path, precision="fp64")
    assert e.value.param == "precision"


def test_download_resumes_a_part_file(service, kd, finished, tmp_path):
    job, _ = finished
    card = kd.models.get(job.model_id)
    (fp32,) = [a for a in card.artifacts if a.precision == "fp32"]
    with service.client() as raw:
        whole = raw.get(f"/v1/models/{card.id}/download").content
    dest = tmp_path / "student.onnx"

    # a .part holding the first 3000 bytes, as an interrupted earlier call leaves it
    dest.with_name("student.onnx.part").write_bytes(whole[:3000])
    result = kd.models.download(card.id, dest)
    assert result.resumed_from == 3000 and dest.read_bytes() == whole and result.sha256 == fp32.sha256

    # interrupted by the caller (e.g. Ctrl-C) after the first chunk: the .part stays, a new call resumes it
    dest.unlink()

    class Interrupt(Exception):
        pass

    def stop_after_first_chunk(done, total):
        raise Interrupt

    with pytest.raises(Interrupt):
        kd.models.download(card.id, dest, chunk_size=1024, on_progress=stop_after_first_chunk)
    part = dest.with_name("student.onnx.part")
    assert part.stat().st_size == 1024 and not dest.exists()
    progress: list[tuple[int, int]] = []
    result = kd.models.download(card.id, dest, chunk_size=1024, on_progress=lambda d, t: progress.append((d, t)))
    assert result.resumed_from == 1024 and progress[0] == (2048, len(whole)) and progress[-1] == (len(whole),) * 2
    assert sha256(dest.read_bytes()) == fp32.sha256 and not part.exists()

    # a .part that is not a prefix of this file: the checksum catches it and the file is fetched whole
    dest.unlink()
    part.write_bytes(b"\0" * 2000)
    result = kd.models.download(card.id, dest)
    assert dest.read_bytes() == whole and result.resumed_from == 0


def test_download_survives_a_connection_cut_midway(service, finished, tmp_path):
    job, _ = finished
    with CuttingProxy(service.port, match="/download", cut_after=4096, times=1) as proxy:
        with Client(proxy.base_url, service.api_key) as through_proxy:
            result = through_proxy.models.download(job.model_id, tmp_path / "m.onnx", chunk_size=512)
    downloads = [r for r in proxy.requests if "/download" in r.split("\r\n")[0]]
    assert proxy.cuts == 1 and len(downloads) == 2
    assert "range: bytes=" in downloads[1].lower() and "if-range:" in downloads[1].lower()
    assert result.resumed_from > 0
    with Client(service.base_url, service.api_key) as kd:
        assert result.sha256 == kd.models.get(job.model_id).artifacts[0].sha256
    assert hashlib.sha256(result.path.read_bytes()).hexdigest() == result.sha256


def test_checksum_mismatch_is_an_error_and_leaves_nothing(service, kd, finished, tmp_path):
    """A server whose file does not match its card (here: a job's artifact rewritten on disk)."""
    job, _ = finished
    other = kd.jobs.create(teacher_id=job.teacher_id, dataset_id=job.dataset_id, student=STUDENT, method=METHOD,
                           training={"epochs": 1})
    other = kd.jobs.wait(other.id, timeout=300)
    card = kd.models.get(other.model_id)
    blob = next((service.data_dir / "blobs" / "models" / card.id).rglob("*.onnx"))
    blob.write_bytes(blob.read_bytes()[:-1] + b"\x00")
    with pytest.raises(ChecksumMismatch) as e:
        kd.models.download(card.id, tmp_path / "bad.onnx")
    assert e.value.code == "checksum_mismatch"
    assert not list(tmp_path.iterdir())


def test_predict_and_v2_infer(kd, finished, digits):
    job, _ = finished
    x = digits.x_test[:5]
    out = kd.models.predict(job.model_id, x)
    assert len(out.predictions) == 5 and np.asarray(out.logits).shape == (5, 10)
    assert np.mean(np.asarray(out.predictions) == digits.y_test[:5]) >= 0.6
    inferred = kd.models.infer(job.model_id, x, request_id="r-1")
    assert inferred.id == "r-1" and inferred.model_name
    logits = inferred.output().numpy()
    assert logits.shape == (5, 10) and np.allclose(logits, np.asarray(out.logits), atol=1e-5)
    with pytest.raises(InvalidRequest) as e:
        kd.models.predict(job.model_id, [[1.0, 2.0]])
    assert e.value.param == "inputs"
    with pytest.raises(NotFound):
        kd.models.infer("mdl_doesnotexist", x)


def test_async_client(service, uploaded, tmp_path):
    async def scenario():
        async with AsyncClient(service.base_url, service.api_key) as kd:
            teacher = await kd.teachers.get(uploaded["teacher"].id)
            job = await kd.jobs.create(teacher_id=teacher.id, dataset_id=uploaded["dataset"].id, student=STUDENT,
                                       method=METHOD, training={"epochs": 3})
            seen: list[int] = []

            async def on_event(event: EventOut) -> None:
                await asyncio.sleep(0)
                seen.append(event.id)

            final = await kd.jobs.wait(job.id, on_event=on_event, timeout=300)
            listed = [j.id async for j in kd.jobs.iter(page_size=2)]
            download = await kd.models.download(final.model_id, tmp_path / "async.onnx")
            card = await kd.models.get(final.model_id)
            with pytest.raises(NotFound):
                await kd.datasets.get("ds_missing")
            return final, seen, listed, download, card

    final, seen, listed, download, card = asyncio.run(scenario())
    assert final.status == "succeeded" and final.id in listed
    assert seen == sorted(set(seen)) and len(seen) >= 3 + 7
    assert download.sha256 == card.artifacts[0].sha256 == hashlib.sha256(download.path.read_bytes()).hexdigest()


def test_key_and_url_from_environment(service, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no ./.kdserve here
    monkeypatch.delenv("KDSERVE_API_KEY", raising=False)
    monkeypatch.setenv("KDSERVE_URL", service.base_url)
    monkeypatch.setenv("KDSERVE_DATA_DIR", str(service.data_dir))  # the key `kdserve up` wrote
    with Client() as kd:
        assert kd.base_url == service.base_url and kd.api_key == service.api_key
        assert kd.jobs.list(limit=1).object == "list"
    monkeypatch.setenv("KDSERVE_API_KEY", "kd_" + "y" * 43)  # the environment wins over the file
    with Client() as kd, pytest.raises(Unauthorized):
        kd.jobs.list()
    monkeypatch.delenv("KDSERVE_DATA_DIR")
    monkeypatch.delenv("KDSERVE_API_KEY")
    with Client() as kd:  # nothing anywhere: no Authorization header at all
        assert kd.api_key is None
        with pytest.raises(Unauthorized) as e:
            kd.jobs.list()
        assert "missing API key" in e.value.message
    assert httpx.get(service.base_url + "/healthz").status_code == 200
