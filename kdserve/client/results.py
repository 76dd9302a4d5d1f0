"""Client-side models of answers: lists, the catalogue, downloads and /v2 inference (the server's
own models are imported from kdserve.service.schemas)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    """One page of a list: newest first; pass the last item's id as `after` for the next."""

    object: str = "list"
    data: list[T]
    has_more: bool


class MethodInfo(BaseModel):
    """A distillation method from GET /v1/methods; `params` is its JSON schema with defaults."""

    model_config = ConfigDict(extra="allow")
    name: str
    description: str = ""
    needs_teacher: bool = True
    needs_labels: bool = False
    requires: list[str] = []
    params: dict[str, Any] = {}
    reference: str | None = None


class ArchitectureInfo(BaseModel):
    """A student architecture from GET /v1/architectures."""

    model_config = ConfigDict(extra="allow")
    name: str
    description: str = ""
    params: dict[str, Any] = {}


class DownloadResult(BaseModel):
    path: Path
    sha256: str
    size_bytes: int
    resumed_from: int = 0  # bytes already on disk (a .part file) that did not travel again


class InferOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any]

    def numpy(self):
        """The tensor as a numpy array of its shape."""
        import numpy as np

        return np.asarray(self.data).reshape(self.shape)


class InferResponse(BaseModel):
    """An Open Inference Protocol v2 answer."""

    model_config = ConfigDict(protected_namespaces=())
    model_name: str
    model_version: str | None = None
    id: str | None = None
    outputs: list[InferOutput]

    def output(self, name: str | None = None) -> InferOutput:
        """The output called `name`, or the first one."""
        if name is None:
            return self.outputs[0]
        for out in self.outputs:
            if out.name == name:
                return out
        raise KeyError(f"no output {name!r}; the outputs are {[o.name for o in self.outputs]}")
