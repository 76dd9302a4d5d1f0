"""The worker's side of a spec: the torch code bound to a torch-free spec (a method's loss, an
architecture's builder), read as the spec it implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Bound:
    spec: Any  # MethodSpec or ArchSpec

    def __getattr__(self, name: str) -> Any:  # name, description, params, ... of the spec
        if name == "spec":  # not set yet (copy, unpickling)
            raise AttributeError(name)
        return getattr(self.spec, name)

    def catalog_entry(self) -> dict[str, Any]:
        return self.spec.catalog_entry()
