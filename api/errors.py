"""Errors in FastAPI's own shapes: 422 naming the parameter, 503 when the database cannot be reached."""

from __future__ import annotations

import logging
from datetime import datetime

from fastapi import Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

log = logging.getLogger("api")

DATABASE_DOWN = (OperationalError, InterfaceError)


class ValidationIssue(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ValidationErrorBody(BaseModel):
    """FastAPI's 422 body: `loc` names the parameter, e.g. ["query", "page_size"]."""

    detail: list[ValidationIssue]


class ErrorBody(BaseModel):
    """FastAPI's answer to an HTTP error: what went wrong, in words."""

    detail: str


class UserNotServedBody(ErrorBody):
    """A 404 for a user id: unknown (only `detail`), or stored but not current (`status` and since when)."""

    status: str | None = Field(
        None,
        description="invalid (its newest record failed validation) or deleted (absent "
        "from the source); absent for an unknown id",
    )
    status_run_id: str | None = Field(None, description="the run that set the status")
    status_changed_at: datetime | None = None


def query_error(name: str, message: str) -> RequestValidationError:
    """A 422 like FastAPI's own, naming the query parameter."""
    return RequestValidationError([{"type": "value_error", "loc": ("query", name), "msg": message}])


def describe_database_error(exc: BaseException) -> str:
    """What went wrong, without the URL or credentials (the driver's first line only)."""
    first = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return f"{type(getattr(exc, 'orig', None) or exc).__name__}: {first[0][:200] if first else ''}".rstrip(": ")


async def database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    log.warning("database unavailable on %s %s: %s", request.method, request.url.path, describe_database_error(exc))
    return JSONResponse(
        {"detail": "database unavailable, try again later"}, status_code=503, headers={"Retry-After": "5"}
    )


async def http_error(request: Request, exc: Exception) -> Response:
    """FastAPI's own answer, except that a 405 lists in `Allow` every method the path has (Starlette names
    only those of the first route matching the path)."""
    assert isinstance(exc, StarletteHTTPException)  # the handler of that exception alone
    if exc.status_code == 405:
        methods: set[str] = set()
        for route in request.app.router.routes:
            match, _ = route.matches({**request.scope, "method": "OPTIONS"})
            if match is not Match.NONE:
                methods |= getattr(route, "methods", None) or set()
        exc.headers = {**(exc.headers or {}), "Allow": ", ".join(sorted(methods))}
    return await http_exception_handler(request, exc)
