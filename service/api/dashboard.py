"""The dashboard: `GET /` answers service/web/index.html, and /web/* serves its script and style.

It is a small vanilla-JS app with no build step and nothing fetched from elsewhere at run time:
it talks to the same /v1 API as everyone else, with the API key the user types in (kept in the
browser's localStorage). Pages are addressed by the URL fragment (`/#/jobs/job_…`), so the server
needs no route per page.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

WEB_DIR = Path(__file__).resolve().parents[1] / "web"

router = APIRouter(include_in_schema=False)


@router.get("/")
def index() -> FileResponse:
    # no-cache: a browser revalidates (ETag) instead of keeping an old page after an upgrade
    return FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})


def mount_static(app: FastAPI) -> None:
    app.mount("/web", StaticFiles(directory=WEB_DIR), name="web")
