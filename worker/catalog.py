"""`python -m kdserve.worker.catalog` prints the methods and student architectures this worker supports,
with their params JSON schemas, as one JSON object. The API reads it at start (in a child process,
so the API never imports torch) to serve /v1/methods and /v1/architectures and to pre-flight jobs;
an API installed without torch reads the same output from service/catalog.json."""

from __future__ import annotations

import json
import sys


def catalog() -> dict:
    from kdserve.models.zoo import ARCHITECTURES
    from kdserve.worker.losses import METHODS
    from kdserve.worker.losses.mcmi import MCMIParams

    return {
        "methods": [m.catalog_entry() for m in METHODS.values()],
        "architectures": [a.catalog_entry() for a in ARCHITECTURES.values()],
        "refinements": [{"name": "mcmi", "params": MCMIParams.model_json_schema(),
                         "description": "MCMI: fine-tune the teacher on CE − λ·CMI before distilling (METHODS.md §9)",
                         "reference": "Ye et al. 2024, arXiv:2401.08732"}],
    }


if __name__ == "__main__":
    # `python -m kdserve.worker.catalog > service/catalog.json` refreshes the slim API image's copy
    json.dump(catalog(), sys.stdout, indent=1)
    sys.stdout.write("\n")
