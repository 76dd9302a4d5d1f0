"""GET /v1/methods, /v1/architectures and the teacher refinements, from the specs themselves (no
torch, no generated file): what the API serves is what it validates jobs with."""

from __future__ import annotations

from typing import Any

from kdserve.service.spec.architectures import ARCHITECTURES
from kdserve.service.spec.methods import METHODS, REFINEMENTS


def catalog() -> dict[str, Any]:
    return {
        "methods": [m.catalog_entry() for m in METHODS.values()],
        "architectures": [a.catalog_entry() for a in ARCHITECTURES.values()],
        "refinements": [r.catalog_entry() for r in REFINEMENTS.values()],
    }
