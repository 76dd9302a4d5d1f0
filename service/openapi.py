"""The OpenAPI document says what the API really answers: every /v1 error is the
`{"error": {"code", "message", "param"}}` shape (FastAPI's default documents a `{"detail": [...]}`
422 that this API never sends), and /v2 errors are `{"error": "<message>"}` as the protocol says.
Clients generated from /openapi.json, and the schemathesis run in CI, rely on it."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from kdserve.service.serving.v2 import InferRequest
from kdserve.service.schemas import ErrorResponse, JobCreate, ModelEvaluate, ModelPatch, PredictIn, SearchCreate
from kdserve.service.webhooks.schemas import WebhookCreate, WebhookPatch

V1_ERRORS = {"401": "missing or invalid API key", "404": "no such resource (or another tenant's)",
             "409": "conflicts with the resource's state", "413": "over a size limit or quota",
             "415": "wrong content type", "422": "invalid request", "429": "over a tenant limit",
             "503": "a dependency (broker, database) is unavailable"}
V2_ERRORS = {"400": "invalid inference request", "401": "missing or invalid API key", "404": "no such model",
             "413": "over a size limit (body bytes, rows, characters of text)", "503": "the model cannot be loaded now"}


def install(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for name, sub in ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}").get("$defs", {}).items():
            components[name] = sub
        components["ErrorResponse"] = {k: v for k, v in ErrorResponse.model_json_schema(
            ref_template="#/components/schemas/{model}").items() if k != "$defs"}
        # bodies the routes read themselves, after the key (deps.json_body, inference_v2.infer_body)
        for model in (InferRequest, JobCreate, ModelEvaluate, ModelPatch, PredictIn, SearchCreate, WebhookCreate,
                      WebhookPatch):
            body = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(body.pop("$defs", {}))
            components[model.__name__] = body
        components["V2Error"] = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)
        for path, operations in schema.get("paths", {}).items():
            errors, ref = ((V2_ERRORS, "V2Error") if path.startswith("/v2")
                           else (V1_ERRORS, "ErrorResponse") if path.startswith("/v1") else ({}, None))
            for op in operations.values():
                responses = op.setdefault("responses", {})
                if ref != "ErrorResponse":  # only /v1 has FastAPI's request-validation 422, in our shape
                    responses.pop("422", None)
                if ref is None:
                    continue
                for code, text in errors.items():
                    responses[code] = {"description": text, "content": {"application/json": {
                        "schema": {"$ref": f"#/components/schemas/{ref}"}}}}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi
