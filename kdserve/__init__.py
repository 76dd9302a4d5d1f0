"""kdserve: knowledge distillation as a service.

One installed package. Its parts (see the README's architecture section):

- `kdserve.client`   the Python SDK (`from kdserve import Client`): httpx only, no torch
- `kdserve.cli`      the `kdserve` command: operator commands (up, worker, keys, db) and resource commands
- `kdserve.service`  the HTTP server (folder service/): API, store, serving, the teacher sandbox; never torch
- `kdserve.worker`   the Celery worker (folder worker/): job pipeline, trainer, losses
- `kdserve.models`   networks and their export (folder models/): the student zoo, teacher loaders, ONNX

`Client` and `AsyncClient` are imported on first use, so `import kdserve.service…` (and the teacher
jail's runner) pays nothing for the SDK.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["AsyncClient", "Client", "__version__"]

if TYPE_CHECKING:
    from kdserve.client import AsyncClient, Client


def __getattr__(name: str) -> Any:
    if name in ("Client", "AsyncClient"):
        from kdserve import client

        return getattr(client, name)
    raise AttributeError(f"module 'kdserve' has no attribute {name!r}")
