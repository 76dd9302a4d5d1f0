"""The one error a job-spec rule raises: a message and the spec field (`param`) it is about. The
API answers it as a 422 `invalid_request` with that param; the worker fails the job with it."""

from __future__ import annotations


class SpecError(ValueError):
    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.message, self.param = message, param
