"""`python -m worker.catalog` prints the methods and student architectures this worker supports,
with their params JSON schemas, as one JSON object. The API reads it at start (in a child process,
so the API never imports torch) to serve /v1/methods and /v1/architectures and to pre-flight jobs."""

from __future__ import annotations

import json
import sys


def catalog() -> dict:
    from models.zoo import ARCHITECTURES
    from worker.losses import METHODS

    return {
        "methods": [m.catalog_entry() for m in METHODS.values()],
        "architectures": [a.catalog_entry() for a in ARCHITECTURES.values()],
    }


if __name__ == "__main__":
    json.dump(catalog(), sys.stdout)
