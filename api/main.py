"""The FastAPI app: routers, CORS, request ids, metrics, and errors that never leak a stack trace."""

from __future__ import annotations

import gc
import logging
import random
import re
import time
import uuid
from contextlib import asynccontextmanager

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.console import mount_console
from api.errors import DATABASE_DOWN, database_unavailable, http_error
from api.metrics import HttpMetrics
from api.ratelimit import add_rate_limits
from api.routes import data, dlq, health, metrics, runs, stats, users
from models.logs import ACCESS_LOGGER, REQUEST_ID
from models.migrate import SchemaOutOfDate
from models.settings import get_settings

log = logging.getLogger("api")
access = logging.getLogger(ACCESS_LOGGER)

REQUEST_ID_HEADER = b"x-request-id"
VALID_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:@/+=-]{1,128}$")
UNMATCHED_ROUTE = "<unmatched>"


def new_request_id() -> str:
    """A random (version 4) UUID from the non-cryptographic generator: an id needs no secrecy, and
    uuid4()'s os.urandom system call per request was a tenth of the hot path's time."""
    return uuid.UUID(int=random.getrandbits(128), version=4).hex


class RequestContextMiddleware:
    """Outermost: gives every request an id (the caller's X-Request-ID when it is sane, else a new uuid),
    echoes it on every response and puts it on the request's log lines, times the request into the metrics by
    route template, and turns an unhandled exception into a JSON 500 that still carries the id. With
    `access_log` (LOG_FORMAT=json, where uvicorn's own is off) it writes one access line per request."""

    def __init__(self, app: ASGIApp, *, metrics: HttpMetrics, access_log: bool = False) -> None:
        self.app, self.metrics, self.access_log = app, metrics, access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        given = next((v for k, v in scope["headers"] if k == REQUEST_ID_HEADER), None)
        rid = given.decode("ascii") if given and VALID_REQUEST_ID.match(given) else new_request_id()
        scope.setdefault("state", {}).update(request_id=rid, started_at=started)
        context = REQUEST_ID.set(rid)
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status, response_started = message["status"], True
                message = {**message, "headers": [*message.get("headers", ()), (REQUEST_ID_HEADER, rid.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error on %s %s (request %s)", scope["method"], scope["path"], rid)
            if not response_started:
                body = orjson.dumps({"detail": "internal error", "request_id": rid})
                await send_with_id(
                    {
                        "type": "http.response.start",
                        "status": 500,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
        finally:
            elapsed = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", None) or UNMATCHED_ROUTE
            self.metrics.observe(scope["method"], route, status, elapsed)
            if self.access_log and access.isEnabledFor(logging.INFO):
                self.log_access(scope, rid, status, elapsed)
            REQUEST_ID.reset(context)

    @staticmethod
    def log_access(scope: Scope, rid: str, status: int, elapsed: float) -> None:
        method, path, ms = scope["method"], scope["path"], round(elapsed * 1000, 3)
        fields = {"request_id": rid, "method": method, "path": path, "status": status, "duration_ms": ms}
        access.info("%s %s %d %.1f ms", method, path, status, ms, extra=fields)


async def schema_out_of_date(_request: Request, exc: Exception) -> JSONResponse:
    """The database is not at the code's schema revision: every route (and /health) says so, naming `make
    migrate`, until it is migrated (each request checks again)."""
    log.error("%s", exc)
    return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "30"})


_heap_frozen = False


@asynccontextmanager
async def lifespan(_app: FastAPI):
    """Once per process, after the imports: collect, then freeze what is left, so later collections walk only
    what requests allocate (a full collection of the startup heap would land on some request's latency)."""
    global _heap_frozen
    if not _heap_frozen:
        gc.collect()
        gc.freeze()
        _heap_frozen = True
    yield


def create_app() -> FastAPI:
    settings = get_settings()
    app = FastAPI(
        lifespan=lifespan,
        title="Sluice API",
        version="1.0.0",
        description="Processed users, the dead-letter queue, pipeline runs and health of the users-etl pipeline.",
        docs_url=None,  # the console serves /docs and /redoc with their assets from this process
        redoc_url=None,
    )
    app.state.metrics = HttpMetrics()
    for module in (users, dlq, runs, stats, health, metrics, data):
        app.include_router(module.router)
    app.add_exception_handler(StarletteHTTPException, http_error)
    for exc_type in DATABASE_DOWN:
        app.add_exception_handler(exc_type, database_unavailable)
    app.add_exception_handler(SchemaOutOfDate, schema_out_of_date)
    mount_console(app)
    if settings.cors_origins:  # no origins, no cross-origin answers: the middleware would only cost time
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Content-Type", "X-API-Key", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After", "RateLimit", "RateLimit-Policy"],
        )
    add_rate_limits(app, settings)
    app.add_middleware(RequestContextMiddleware, metrics=app.state.metrics, access_log=settings.log_format == "json")
    return app


app = create_app()
