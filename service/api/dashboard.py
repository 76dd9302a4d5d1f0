"""The dashboard: `GET /` answers service/web/index.html, and /web/* serves its script and style;
`GET /docs` is Swagger UI for the OpenAPI document, its files from the swagger-ui-bundle-v2 package.

It is a small vanilla-JS app with no build step and nothing fetched from elsewhere at run time:
it talks to the same /v1 API as everyone else, with the API key the user types in (kept in the
browser's localStorage). Pages are addressed by the URL fragment (`/#/jobs/job_…`), so the server
needs no route per page.
"""

from __future__ import annotations

from pathlib import Path

import swagger_ui_bundle
from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

WEB_DIR = Path(__file__).resolve().parents[1] / "web"

router = APIRouter(include_in_schema=False)

# Both pages hold an API key in the browser (the dashboard in localStorage, Swagger UI once it is
# typed in): a script from anywhere else running on their origin could read it. So scripts and
# connections are this origin's only, no inline script, no framing (clickjacking). Styles may be
# inline (the dashboard's progress bars and Swagger UI set style attributes): they run no code.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                               "img-src 'self' data:; connect-src 'self'; font-src 'self'; base-uri 'none'; "
                               "form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # no-cache: a browser revalidates (ETag) instead of keeping an old page after an upgrade
    "Cache-Control": "no-cache",
}


@router.get("/")
def index() -> FileResponse:
    return FileResponse(WEB_DIR / "index.html", headers=PAGE_HEADERS)


@router.get("/docs")
def docs() -> FileResponse:
    """Swagger UI, started by /web/docs.js (a file, so that the page needs no inline script)."""
    return FileResponse(WEB_DIR / "docs.html", headers=PAGE_HEADERS)


def mount_static(app: FastAPI) -> None:
    app.mount("/web", StaticFiles(directory=WEB_DIR), name="web")
    app.mount("/docs/assets", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="docs-assets")
