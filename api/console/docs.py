"""/docs (Swagger UI) and /redoc, offline: their scripts and styles come from the fastapi-offline package
(swagger-ui: Apache-2.0, ReDoc: MIT; the licences ride in the bundles' headers), served by this app."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from api.console.render import SECURITY_HEADERS

router = APIRouter(include_in_schema=False)

# the viewers build their pages at run time: they set inline styles and ReDoc searches in a blob: worker
DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; base-uri 'none'; frame-ancestors 'none'"
)

SWAGGER = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sluice API · Swagger UI</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">
<link rel="stylesheet" href="/console/vendor/swagger-ui.css"></head>
<body><div id="swagger-ui" data-openapi="{openapi}"></div>
<script src="/console/vendor/swagger-ui-bundle.js"></script>
<script src="/console/static/swagger-init.js"></script></body></html>"""

REDOC = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sluice API · ReDoc</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,"></head>
<body><div id="redoc" data-openapi="{openapi}"></div>
<script src="/console/vendor/redoc.standalone.js"></script>
<script src="/console/static/redoc-init.js"></script></body></html>"""


def assets_directory() -> Path:
    return Path(str(files("fastapi_offline") / "static"))


def _html(request: Request, template: str) -> HTMLResponse:
    page = template.format(openapi=request.app.openapi_url)
    return HTMLResponse(page, headers={**SECURITY_HEADERS, "Content-Security-Policy": DOCS_CSP})


@router.get("/docs")
def swagger_ui(request: Request) -> HTMLResponse:
    return _html(request, SWAGGER)


@router.get("/redoc")
def redoc(request: Request) -> HTMLResponse:
    return _html(request, REDOC)
