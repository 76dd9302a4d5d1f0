"""The API's limits as parts: the probe limiter, the zip member count from the end records, the
body parser's child process, and that no route lets FastAPI read a body before the key. The same
limits through the running service: api_tests/faults/test_api_limits.py."""

from __future__ import annotations

import asyncio
import io
import json
import struct
import threading
import zipfile

import numpy as np
import pytest
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute

from kdserve.service.serving.v2 import InferRequest, to_array
from kdserve.service.app import create_app
from kdserve.service.bodies import PARSE_ON_LOOP_BYTES, BodyParser, validate
from kdserve.service.errors import ApiError
from kdserve.service.probe_limits import ProbeLimiter
from kdserve.service.schemas import JobCreate, PredictIn
from kdserve.service.settings import Settings
from kdserve.service.uploads import check_member_count


# ---- the probe limiter ------------------------------------------------------------------------


def test_probe_limiter_refuses_past_a_tenants_share_then_past_the_total():
    async def scenario():
        limiter = ProbeLimiter(max_total=3, max_per_tenant=2)
        release = threading.Event()
        held = [asyncio.create_task(limiter.run(t, release.wait, 30)) for t in ("a", "a", "b")]
        while limiter.running < 3:  # the three probes are in their threads
            await asyncio.sleep(0.01)
        with pytest.raises(ApiError) as tenant:
            await limiter.run("a", int)
        with pytest.raises(ApiError) as total:
            await limiter.run("c", int)
        release.set()
        assert await asyncio.gather(*held) == [True, True, True]
        after = await limiter.run("c", int, "7")  # every slot given back
        return tenant.value, total.value, after, limiter.running, dict(limiter.by_tenant)

    tenant, total, after, running, by_tenant = asyncio.run(scenario())
    assert (tenant.status, tenant.code) == (429, "rate_limited") and "KDSERVE_PROBE_MAX_PER_TENANT" in tenant.message
    assert (total.status, total.code) == (503, "unavailable") and "KDSERVE_PROBE_MAX_CONCURRENT" in total.message
    assert (after, running, by_tenant) == (7, 0, {})


def test_a_cancelled_upload_keeps_its_slot_until_its_probe_thread_ends():
    async def scenario():
        limiter = ProbeLimiter(max_total=1, max_per_tenant=1)
        release = threading.Event()
        task = asyncio.create_task(limiter.run("a", release.wait, 30))
        while not limiter.running:
            await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.sleep(0.1)
        still_counted = limiter.running
        with pytest.raises(asyncio.CancelledError):
            await task
        release.set()
        for _ in range(500):  # the thread ends, then hands the slot back to the loop
            if not limiter.running:
                break
            await asyncio.sleep(0.01)
        return still_counted, limiter.running

    assert asyncio.run(scenario()) == (1, 0)


# ---- zip member count from the end records ---------------------------------------------------


def empty_members_zip(n: int) -> io.BytesIO:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for i in range(n):
            zf.writestr(f"{i}", b"")
    return buf


def with_declared_count(buf: io.BytesIO, count: int) -> io.BytesIO:
    """The same zip with its end record claiming `count` members (a plain, non-zip64 record)."""
    raw = bytearray(buf.getvalue())
    at = raw.rfind(b"PK\x05\x06")
    raw[at + 8:at + 12] = struct.pack("<HH", count, count)
    return io.BytesIO(bytes(raw))


def test_member_count_is_read_from_the_end_record_before_any_listing():
    big = empty_members_zip(70_000)  # past 65535: zipfile writes zip64 end records
    with pytest.raises(ApiError) as err:
        check_member_count(big, 10_000)
    assert err.value.status == 413 and "declares 70000 members" in err.value.message
    check_member_count(empty_members_zip(100), 100)  # at the limit: fine
    npz = io.BytesIO()
    np.savez(npz, x=np.zeros(3), y=np.ones(2))
    check_member_count(npz, 2)


def test_a_lying_end_record_does_not_hide_members():
    """zipfile reads every entry of the central directory, whatever count the end record states."""
    liar = with_declared_count(empty_members_zip(3000), 5)
    assert len(zipfile.ZipFile(liar).infolist()) == 3000
    with pytest.raises(ApiError) as err:
        check_member_count(liar, 1000)
    assert err.value.status == 413 and "more than 1000 members" in err.value.message
    check_member_count(with_declared_count(empty_members_zip(1000), 5), 1000)


def test_damaged_end_records_are_left_to_zipfile():
    check_member_count(io.BytesIO(b"PK\x03\x04" + b"\0" * 100), 10)  # no end record: zipfile refuses it later
    truncated = io.BytesIO(empty_members_zip(50).getvalue()[:-10])
    check_member_count(truncated, 10)
    with pytest.raises(zipfile.BadZipFile):
        zipfile.ZipFile(truncated)


# ---- the body parser ---------------------------------------------------------------------------


def infer_body(rows: int, data=None) -> bytes:
    return json.dumps({"inputs": [{"name": "input", "shape": [rows, 64], "datatype": "FP32",
                                   "data": data if data is not None else [0.25] * rows * 64}]}).encode()


@pytest.fixture(scope="module")
def parser():
    parser = BodyParser(1)
    yield parser
    parser.close()


def parse(parser: BodyParser, model, raw: bytes):
    async def run():
        try:
            return await parser.parse(model, raw)
        except RequestValidationError as exc:
            return exc.errors()
    return asyncio.run(run())


def test_large_bodies_parse_in_a_child_to_what_small_ones_parse_to(parser):
    big = infer_body(200)
    assert len(big) > PARSE_ON_LOOP_BYTES
    in_child, on_loop = parse(parser, InferRequest, big), InferRequest.model_validate_json(big)
    assert isinstance(in_child.inputs[0].data, np.ndarray) and isinstance(on_loop.inputs[0].data, list)
    assert np.array_equal(to_array(in_child.inputs[0].data, "FP32", "x"), to_array(on_loop.inputs[0].data, "FP32", "x"))
    # what cannot be an array stays what it was: the handler then refuses it as it would have
    ragged = parse(parser, InferRequest, infer_body(200, [[1.0, 2.0], [3.0]] * 4000))
    assert ragged.inputs[0].data == [[1.0, 2.0], [3.0]] * 4000
    texts = parse(parser, PredictIn, json.dumps({"inputs": ["a sentence"] * 20_000}).encode())
    assert texts.inputs == ["a sentence"] * 20_000
    samples = parse(parser, PredictIn, json.dumps({"inputs": [[1, 2, 3]] * 20_000}).encode())
    assert samples.inputs.shape == (20_000, 3)


def test_validation_errors_are_the_same_from_the_child(parser):
    """What a large invalid body gets from the child is what validate() gives on the loop (the
    errors the app's handler turns into a 422, or a 400 on /v2)."""
    bad = json.dumps({"inputs": [[0.5] * 64] * 250, "unknown": 1}).encode()
    not_json = b'{"inputs": [' + b"1," * 50_000
    job = json.dumps({"dataset_id": "ds_x", "student": {"architecture": "mlp"}, "method": {"name": "kd"},
                      "training": {"epochs": "many"}, "metadata": {"pad": "x" * 100_000}}).encode()
    for model, raw, first in ((PredictIn, bad, "extra_forbidden"), (PredictIn, not_json, "json_invalid"),
                              (JobCreate, job, "int_parsing")):
        assert len(raw) > PARSE_ON_LOOP_BYTES
        errors = parse(parser, model, raw)
        assert errors == validate(model, raw) and errors[0]["type"] == first


# ---- no body is read by FastAPI before the key --------------------------------------------------


def test_no_route_has_a_body_parameter(tmp_path):
    """FastAPI reads a declared body parameter before it solves any dependency, the key's
    included: the JSON routes read theirs through deps.json_body, the uploads through
    service/uploads.py, /v2 infer through inference_v2.infer_body."""
    app = create_app(Settings(data_dir=tmp_path))
    routes = [r for r in app.router.routes if isinstance(r, APIRoute)]
    for included in (r for r in app.router.routes if hasattr(r, "original_router")):  # FastAPI keeps included routers
        routes += [r for r in included.original_router.routes if isinstance(r, APIRoute)]
    posts = {r.path_format for r in routes if "POST" in r.methods}
    assert {"/v1/jobs", "/v1/models/{model_id}/predict", "/v1/teachers", "/v2/models/{model}/infer"} <= posts
    assert [r.path_format for r in routes if r.body_field is not None] == []
    schema = app.openapi()
    for path, model in (("/v1/jobs", "JobCreate"), ("/v1/models/{model_id}/predict", "PredictIn")):
        body = schema["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body == {"$ref": f"#/components/schemas/{model}"} and model in schema["components"]["schemas"]
