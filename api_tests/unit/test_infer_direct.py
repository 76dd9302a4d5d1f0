"""The direct path for /v2 infer requests (inference_v2.infer_direct, called by the app before
FastAPI's router) answers exactly what the routes answer: same status, body and content type for
every error, through the app's own exception handlers. The real server's round trips (results
equal to onnxruntime on the downloaded file) are in api_tests/api/test_inference_v2.py."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.api import inference_v2
from service.app import create_app
from service.settings import Settings

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
