"""The SDK's errors: every error answer of the API becomes a `KdserveError` subclass carrying
the API's `code`, `message`, `param` and HTTP `status`."""

from __future__ import annotations

import httpx


class KdserveError(Exception):
    """An error answer of the API (or no answer at all): `code` is the API's machine code
    (`not_found`, `invalid_request`, …), `param` the request field at fault, `status` the HTTP
    status (None when the service could not be reached)."""

    def __init__(self, message: str, *, code: str = "error", param: str | None = None, status: int | None = None,
                 response: httpx.Response | None = None):
        super().__init__(message)
        self.message, self.code, self.param, self.status, self.response = message, code, param, status, response

    def __str__(self) -> str:
        where = f" (param: {self.param})" if self.param else ""
        status = f"{self.status} " if self.status else ""
        return f"{status}{self.code}: {self.message}{where}"

    def to_dict(self) -> dict:
        """The API's error shape, plus the status: what `kdserve … --json` prints."""
        return {"error": {"code": self.code, "message": self.message, "param": self.param}, "status": self.status}


class APIConnectionError(KdserveError):
    """The service did not answer (down, wrong URL, network)."""


class InvalidRequest(KdserveError):
    """400/422: the request is wrong; `param` names the field."""


class Unauthorized(KdserveError):
    """401: missing, invalid or revoked API key."""


class PermissionDenied(KdserveError):
    """403."""


class NotFound(KdserveError):
    """404: no such resource (or it belongs to another tenant)."""


class Conflict(KdserveError):
    """409: e.g. the resource is in use, the job already ended, an Idempotency-Key reused."""


class PayloadTooLarge(KdserveError):
    """413: the upload is over the server's limit."""


class RateLimited(KdserveError):
    """429."""


class ServiceUnavailable(KdserveError):
    """503 (and 502/504): a dependency such as the job queue is down; retry later."""


class ServerError(KdserveError):
    """Any other 5xx: a bug in the service."""


class ChecksumMismatch(KdserveError):
    """A downloaded file's sha256 is not the one the model card and ETag announce."""


class WaitTimeout(KdserveError, TimeoutError):
    """`jobs.wait(timeout=…)` ran out before the job ended."""


_ERRORS_BY_STATUS: dict[int, type[KdserveError]] = {
    400: InvalidRequest, 401: Unauthorized, 403: PermissionDenied, 404: NotFound, 409: Conflict,
    413: PayloadTooLarge, 422: InvalidRequest, 429: RateLimited, 502: ServiceUnavailable, 503: ServiceUnavailable,
    504: ServiceUnavailable,
}


def error_from_response(response: httpx.Response) -> KdserveError:
    """/v1 errors are `{"error": {"code", "message", "param"}}`; /v2 (Open Inference Protocol)
    errors are `{"error": "<message>"}`; anything else (a proxy's HTML page) keeps its text."""
    status = response.status_code
    cls = _ERRORS_BY_STATUS.get(status) or (ServerError if status >= 500 else KdserveError)
    code, message, param = f"http_{status}", response.text[:500] or response.reason_phrase, None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        code, message, param = err.get("code") or code, err.get("message") or message, err.get("param")
    elif isinstance(body, dict) and isinstance(body.get("error"), str):
        message = body["error"]
        code = {400: "invalid_request", 401: "unauthorized", 404: "not_found"}.get(status, code)
    return cls(message, code=code, param=param, status=status, response=response)
