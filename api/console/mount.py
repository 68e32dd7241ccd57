"""The console's routes, templates and static files on an app; /docs and /redoc served from this process; the
console's errors as pages, the JSON routes' unchanged."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from api.console import docs, pages_data, pages_runs
from api.console.render import HERE, error_page, make_templates
from api.errors import DATABASE_DOWN, describe_database_error
from models.migrate import SchemaOutOfDate

log = logging.getLogger("api")
Handler = Callable[[Request, Exception], Awaitable[Response] | Response]


def is_console(request: Request) -> bool:
    path = request.url.path
    return path == "/" or (
        path.startswith("/console/") and not path.startswith(("/console/static/", "/console/vendor/"))
    )


def _as_page(request: Request, exc: Exception) -> Response:
    if isinstance(exc, SchemaOutOfDate):
        return error_page(request, status=503, title="Database out of date", message=str(exc))
    if isinstance(exc, RequestValidationError):
        problems = "; ".join(f"{'.'.join(map(str, e['loc'][1:]))}: {e['msg']}" for e in exc.errors())
        return error_page(request, status=422, title="Cannot show this", message=problems)
    if isinstance(exc, StarletteHTTPException):
        return error_page(request, status=exc.status_code, title="Cannot show this", message=str(exc.detail))
    log.warning("database unavailable on %s %s: %s", request.method, request.url.path, describe_database_error(exc))
    response = error_page(request, status=503, title="Unavailable", message="The database is unavailable; try again.")
    response.headers["Retry-After"] = "5"
    return response


def _console_aware(json_handler: Handler) -> Handler:
    async def handler(request: Request, exc: Exception) -> Response:
        if is_console(request):
            return _as_page(request, exc)
        answer = json_handler(request, exc)
        return await answer if isinstance(answer, Awaitable) else answer

    return handler


def mount_console(app: FastAPI) -> None:
    """Call after the app's own exception handlers are in place: the console wraps them."""
    app.state.console_templates = make_templates()
    app.mount("/console/static", StaticFiles(directory=HERE / "static"), name="console-static")
    app.mount("/console/vendor", StaticFiles(directory=docs.assets_directory()), name="console-vendor")
    for module in (pages_runs, pages_data, docs):
        app.include_router(module.router)
    for exc_type in (*DATABASE_DOWN, SchemaOutOfDate, RequestValidationError, StarletteHTTPException):
        app.add_exception_handler(exc_type, _console_aware(app.exception_handlers[exc_type]))
