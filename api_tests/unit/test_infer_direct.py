"""The direct path for /v2 infer requests (inference_v2.infer_direct, called by the app before
FastAPI's router) answers exactly what the routes answer: same status, body and content type for
every error, through the app's own exception handlers. The real server's round trips (results
equal to onnxruntime on the downloaded file) are in api_tests/api/test_inference_v2.py."""

from __future__ import annotations

import json

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from kdserve.service import auth
from kdserve.service.api import inference_v2
from kdserve.service.app import create_app
from kdserve.service.settings import Settings

REQUESTS = [  # (path, body, content type, headers)
    ("/v2/models/mdl_nope/infer", b'{"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", '
                                  b'"data": [1, 2]}]}', "application/json", {}),
    ("/v2/models/by-name/versions/int8/infer", b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", '
                                               b'"data": [1]}]}', "application/json", {}),
    ("/v2/models/mdl_nope/infer", b"{not json", "application/json", {}),
    ("/v2/models/mdl_nope/infer", b'{"inputs": []}', "application/json", {}),
    ("/v2/models/mdl_nope/infer", b'{"inputs": [{"name": "x"}]}', "application/json", {}),
    ("/v2/models/mdl_nope/infer", b'{"inputs": []}', "text/plain", {}),
    ("/v2/models/mdl_nope/infer", b'{}xx', "application/octet-stream", {"Inference-Header-Content-Length": "9"}),
]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    app = create_app(Settings(data_dir=tmp_path_factory.mktemp("data"), auth="disabled"))
    with TestClient(app):  # runs the lifespan: database, serving state
        yield app


def answers(client: TestClient) -> list[tuple[int, str, object]]:
    out = []
    for path, body, content_type, headers in REQUESTS:
        r = client.post(path, content=body, headers={"Content-Type": content_type, **headers})
        out.append((r.status_code, r.headers["content-type"], r.json()))
    return out


def routed(app: FastAPI):
    """The same app reached through FastAPI's own __call__ (router and middleware) only."""
    async def call(scope, receive, send):
        await FastAPI.__call__(app, scope, receive, send)
    return call


def test_direct_answers_equal_the_routes(app):
    direct, via_router = answers(TestClient(app)), answers(TestClient(routed(app)))
    assert direct == via_router
    assert [status for status, _, _ in direct] == [404, 404, 400, 400, 400, 400, 400]
    assert all(isinstance(body["error"], str) for _, _, body in direct)


def test_infer_requests_do_not_reach_the_router(app, monkeypatch):
    """Without the infer routes in the router, the direct path still answers (the model lookup's
    404), while the router alone gives its own bare 404; other requests still go to the router."""
    monkeypatch.setattr(app.router, "routes", [r for r in app.router.routes  # FastAPI keeps included routers
                                               if getattr(r, "original_router", None) is not inference_v2.router])
    r = TestClient(app).post("/v2/models/mdl_nope/infer", json={"inputs": [{"name": "x", "shape": [1],
                                                                             "datatype": "FP32", "data": [1]}]})
    assert r.status_code == 404 and "no model 'mdl_nope'" in r.json()["error"]
    assert TestClient(routed(app)).post("/v2/models/mdl_nope/infer", json={}).json() == {"error": "Not Found"}
    assert TestClient(app).get("/v2/models/mdl_nope/infer").json() == {"error": "Not Found"}  # GET: the router's
    assert TestClient(app).get("/v1/methods").status_code == 200


@pytest.fixture(scope="module")
def authed(tmp_path_factory):
    """An app with keys on, a 64 KiB body cap and 8 rows per request, and a key of its own."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("authed"), max_request_bytes=64 * 1024, max_request_rows=8)
    app = create_app(settings)
    with TestClient(app):
        key, _ = auth.create_key(app.state.ctx.db, "t")
        yield app, key


def tensor_request(rows: int, key: str | None = None, **headers) -> tuple:
    body = json.dumps({"inputs": [{"name": "input", "shape": [rows, 2], "datatype": "FP32", "data": [0.5] * rows * 2}]})
    return body.encode(), {**({"Authorization": f"Bearer {key}"} if key else {}), **headers}


def test_the_key_is_checked_before_the_body_on_both_paths(authed):
    """Without a valid key every infer request is a 401, whatever its body: malformed JSON, binary
    tensors that do not add up, a body over the cap. With one, the body's own errors: 413 for
    the cap (on Content-Length) and for too many rows, 400 for the rest."""
    app, key = authed
    good = {"Authorization": f"Bearer {key}"}
    binary = {"Inference-Header-Content-Length": "500", "Content-Type": "application/octet-stream"}
    over_cap = b"x" * (65 * 1024)
    cases = [(b"{not json", {}), (b"\0" * 100, binary), tensor_request(2), tensor_request(2, "kd_nope"),
             (over_cap, {}),  # without a valid key: all 401
             (b"{not json", good), (b"\0" * 100, {**binary, **good}), (over_cap, good), tensor_request(9, key),
             tensor_request(8, key)]
    results = []
    for client in (TestClient(app), TestClient(routed(app))):
        results.append([])
        for body, headers in cases:
            r = client.post("/v2/models/mdl_nope/infer", content=body,
                            headers={"Content-Type": "application/json", **headers})
            results[-1].append((r.status_code, r.json()))
    assert results[0] == results[1]
    assert [status for status, _ in results[0]] == [401, 401, 401, 401, 401, 400, 400, 413, 413, 404]
    assert "65536-byte limit" in results[0][7][1]["error"] and "9 rows" in results[0][8][1]["error"]
