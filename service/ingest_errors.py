"""The one exception the dataset readers raise (service/ingest.py, service/npz_reader.py): what
the client did wrong, as the API will answer it. Its own module so both readers can import it."""

from __future__ import annotations


class DatasetError(Exception):
    def __init__(self, code: str, message: str, param: str | None = "file", status: int = 422):
        super().__init__(message)
        self.code, self.message, self.param, self.status = code, message, param, status

    def as_dict(self) -> dict:
        return {"status": self.status, "code": self.code, "message": self.message, "param": self.param}
