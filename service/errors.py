"""One error shape for every /v1 route: {"error": {"code", "message", "param"}}.

/v2 routes (Open Inference Protocol) answer `{"error": "<message>"}` instead, as that protocol
says, and a request body that does not validate there is a 400, not a 422."""

from __future__ import annotations

import logging
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("kdserve.api")

_STATUS_CODES = {400: "invalid_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                 405: "method_not_allowed", 409: "conflict", 413: "payload_too_large", 415: "unsupported_media_type",
                 422: "invalid_request", 429: "rate_limited", 503: "unavailable"}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.param = status, code, message, param


def not_found(kind: str, id_: str, param: str | None = None) -> ApiError:
    return ApiError(404, "not_found", f"no {kind} with id {id_!r}", param)


def error_response(status: int, code: str, message: str, param: str | None = None, headers=None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, "param": param}}, status_code=status,
                        headers=headers)


def is_v2(request: Request) -> bool:
    path = request.url.path
    return path == "/v2" or path.startswith("/v2/")


def v2_error_response(status: int, message: str, headers=None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


_UNION_TAGS = {"int", "float", "str", "bool", "none", "list", "dict"}


def loc_to_param(loc) -> str | None:
    """A pydantic error location as the API's dotted `param`: without where the value came from
    (body, query, ...) and without the union member pydantic tried ("constrained-int",
    "literal['auto']"): `epochs: int | "auto"` reports `training.epochs`."""
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header", "form")]
    parts = [p for p in parts if re.fullmatch(r"\w+", p) and p not in _UNION_TAGS]
    return ".".join(parts) or None


def first_error(errors: list[dict]) -> tuple[str | None, str]:
    """The param and message of a validation failure's first error; the errors of every member of
    a union on that param are joined ("greater than or equal to 1, or input should be 'auto'")."""
    if not errors:
        return None, "invalid request"
    param = loc_to_param(errors[0].get("loc", ()))
    msgs = [e.get("msg", "invalid") for e in errors if loc_to_param(e.get("loc", ())) == param]
    msgs = list(dict.fromkeys(msgs))
    return param, ", or ".join([msgs[0], *(m[:1].lower() + m[1:] for m in msgs[1:])])


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        if is_v2(request):
            return v2_error_response(exc.status, exc.message)
        return error_response(exc.status, exc.code, exc.message, exc.param)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        param, msg = first_error(errors)
        if errors and errors[0].get("type") == "json_invalid":  # loc is ("body", <character offset>): not a field
            msg, param = "the request body is not valid JSON", None
        if is_v2(request):
            return v2_error_response(400, f"{param}: {msg}" if param else msg)
        return error_response(422, "invalid_request", f"{param}: {msg}" if param else msg, param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        if is_v2(request):
            return v2_error_response(exc.status_code, str(exc.detail), getattr(exc, "headers", None))
        if exc.status_code == 400 and "parsing the body" in str(exc.detail):
            # FastAPI's answer when the JSON decoder itself gives up (e.g. an integer of 5000 digits)
            return error_response(422, "invalid_request", "the request body could not be parsed as JSON "
                                  "(malformed, or a number beyond what JSON parsers accept)")
        code = _STATUS_CODES.get(exc.status_code, "error")
        return error_response(exc.status_code, code, str(exc.detail), None, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        if is_v2(request):
            return v2_error_response(500, "an unexpected error occurred; it has been logged")
        return error_response(500, "internal_error", "an unexpected error occurred; it has been logged")
