"""Per-client request limits: a pure ASGI middleware counting each client's requests per route group (reads,
writes) in the `limits` library's async storage, in this process or in Redis so several API workers share them.

A limited request gets 429 with a JSON reason, `Retry-After` and the rate-limit headers; every counted response
carries the headers too. /health, /metrics and the console's static files are never counted."""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from limits import parse_many
from limits.aio.storage import Storage
from limits.errors import ConfigurationError, StorageError
from limits.storage import storage_from_string
from pydantic import SecretStr
from starlette.middleware import Middleware
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import ErrorBody
from models.settings import ConfigError, Settings, get_settings

log = logging.getLogger("api")

EXEMPT_PATHS = frozenset({"/health", "/metrics"})
EXEMPT_PREFIXES = ("/console/static/", "/console/vendor/")  # what a page load fetches besides the page
# safe methods count as reads; OPTIONS too, as a CORS preflight precedes cross-origin reads as well as writes
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
REDIS_SCHEMES = ("redis", "rediss", "redis+unix")
REDIS_KEY_PREFIX = "sluice:ratelimit"
# bound what an unreachable or stalled Redis costs a request; one quick retry covers a dropped idle connection
REDIS_TIMEOUT_SECONDS = 0.5
STORAGE_PAUSE_SECONDS = 5.0  # after a storage failure, requests pass uncounted this long before it is tried again
WARN_EVERY_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class Policy:
    """One group's limit, with what its headers say precomputed."""

    name: str  # read or write: the policy's name in the headers
    amount: int
    period: int  # seconds
    text: str  # e.g. "600 per 1 minute"
    # IETF draft-ietf-httpapi-ratelimit-headers-11 (the current draft; the syntax of drafts 08 to 11):
    # `RateLimit-Policy: "read";q=600;w=60` and `RateLimit: "read";r=599;t=42` (remaining, seconds to reset)
    header: bytes

    def state(self, remaining: int, reset: int) -> bytes:
        return f'"{self.name}";r={remaining};t={reset}'.encode()


@dataclass(frozen=True, slots=True)
class Limits:
    read: Policy | None
    write: Policy | None
    api_key: bytes | None  # the configured key: a client sending it is counted by the key, not its address
    key_client: str


def key_identity(api_key: str) -> str:
    """How a client holding `api_key` is named in the counters' keys: a digest, never the key itself."""
    return "key:" + hashlib.sha256(api_key.encode()).hexdigest()[:32]


def parse_policy(setting: str, name: str, value: str) -> Policy | None:
    """`value` in the `limits` notation ("600/minute", "10 per 2 hours"); "" turns the group's limit off."""
    if not value.strip():
        return None
    try:
        items = parse_many(value)
    except ValueError:
        raise ConfigError(f"{setting}: not a rate limit like '600/minute' (got {value!r})") from None
    if len(items) != 1 or items[0].amount < 1:
        raise ConfigError(f"{setting}: one limit of at least 1 request, like '600/minute' (got {value!r})")
    item = items[0]
    period = item.get_expiry()
    return Policy(name, item.amount, period, str(item), f'"{name}";q={item.amount};w={period}'.encode())


def limits_from(settings: Settings) -> Limits:
    key = settings.api_key.get_secret_value() if settings.api_key else ""
    return Limits(
        read=parse_policy("RATE_LIMIT_READ", "read", settings.rate_limit_read),
        write=parse_policy("RATE_LIMIT_WRITE", "write", settings.rate_limit_write),
        api_key=key.encode() if key else None,
        key_client=key_identity(key) if key else "",
    )


def storage_for(url: SecretStr | None) -> Storage:
    """In-process counters, or Redis's for redis://, rediss:// and redis+unix:// URLs (through redis-py's
    asyncio client: `limits` would otherwise pick coredis, which is not installed)."""
    value = url.get_secret_value().strip() if url else ""
    scheme = value.split("://", 1)[0].lower() if "://" in value else ""
    if not value or scheme in ("memory", "async+memory"):
        storage = storage_from_string("async+memory://", wrap_exceptions=True)
    elif scheme.removeprefix("async+") in REDIS_SCHEMES:
        from redis.asyncio.retry import Retry  # only with Redis: the default keeps the API's imports light
        from redis.backoff import NoBackoff

        options: dict[str, Any] = {
            "implementation": "redispy",
            "key_prefix": REDIS_KEY_PREFIX,
            "wrap_exceptions": True,
            "socket_connect_timeout": REDIS_TIMEOUT_SECONDS,
            "socket_timeout": REDIS_TIMEOUT_SECONDS,
            "retry": Retry(NoBackoff(), 1),
        }
        try:
            storage = storage_from_string("async+" + value.removeprefix("async+"), **options)
        except (ConfigurationError, ValueError):  # its message repeats the URL, password and all
            raise ConfigError("RATE_LIMIT_STORAGE_URL: not a Redis URL like redis://host:6379/0") from None
    else:  # the URL may carry a password: name its scheme only
        raise ConfigError(f"RATE_LIMIT_STORAGE_URL: expected redis://host:port/db or rediss://..., not {scheme!r}")
    assert isinstance(storage, Storage)
    return storage


class RateLimitMiddleware:
    """Counts each request of a limited group against its client and answers 429 beyond the limit.

    Fixed windows aligned to the clock, counted with the storage's `incr` (what `limits`' FixedWindowRateLimiter
    does, keeping the count it discards): one storage call per request gives the remaining quota, and the reset
    time is the window's end, known without asking. A moving window costs a log entry per request (a list of up
    to the limit in memory, a sorted set in Redis) and a second call for the headers; the price of fixed
    windows, up to twice the limit across a window's boundary, is no matter against runaway scripts.

    The limits follow the settings like the API key and the database do; the storage stays the one made here."""

    def __init__(self, app: ASGIApp, *, storage: Storage, settings: Settings, routes: list[BaseRoute]) -> None:
        self.app, self.storage, self.routes = app, storage, routes
        self.settings, self.limits = settings, limits_from(settings)
        self.paused_until = 0.0
        self.last_warning = -math.inf

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        if path in EXEMPT_PATHS or path.startswith(EXEMPT_PREFIXES):
            return await self.app(scope, receive, send)
        settings = get_settings()
        if settings is not self.settings:
            self.settings, self.limits = settings, limits_from(settings)
        limits = self.limits
        policy = limits.read if scope["method"] in READ_METHODS else limits.write
        now = time.time()
        if policy is None or now < self.paused_until:
            return await self.app(scope, receive, send)
        window, elapsed = divmod(now, policy.period)
        try:
            count = await self.storage.incr(f"{policy.name}/{int(window)}/{client_of(scope, limits)}", policy.period)
        except StorageError as exc:
            self.storage_failed(exc.storage_error, now)
            return await self.app(scope, receive, send)
        if self.paused_until:
            self.paused_until = 0.0
            log.info("rate limits: their storage answers again; counting requests")
        reset = max(1, math.ceil(policy.period - elapsed))
        if count > policy.amount:
            return await self.reject(scope, send, policy, reset)
        headers = ((b"ratelimit-policy", policy.header), (b"ratelimit", policy.state(policy.amount - count, reset)))

        async def send_with_limits(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *headers]}
            await send(message)

        await self.app(scope, receive, send_with_limits)

    def storage_failed(self, error: Exception, now: float) -> None:
        """Fail open: an unreachable Redis must not turn every request into an error; warn once a minute."""
        self.paused_until = now + STORAGE_PAUSE_SECONDS
        if now - self.last_warning >= WARN_EVERY_SECONDS:
            self.last_warning = now
            log.warning(
                "rate limits: their storage failed (%s: %s); requests pass uncounted, retrying every %.0f s",
                type(error).__name__,
                str(error).splitlines()[0][:200] if str(error) else "",
                STORAGE_PAUSE_SECONDS,
            )

    async def reject(self, scope: Scope, send: Send, policy: Policy, reset: int) -> None:
        # name the route for the request metrics, as the router would have (only a refused request pays this)
        if (route := route_of(self.routes, scope)) is not None:
            scope["route"] = route
        kind = "reads" if policy.name == "read" else "writes"
        body = orjson.dumps(
            {"detail": f"too many requests: the limit is {policy.text} for {kind} per client; retry in {reset} s"}
        )
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", str(reset).encode()),
            (b"ratelimit-policy", policy.header),
            (b"ratelimit", policy.state(0, reset)),
        ]
        await send({"type": "http.response.start", "status": 429, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def client_of(scope: Scope, limits: Limits) -> str:
    """The configured API key's digest when the request carries that key, else the client's address: a made-up
    key must not buy a fresh allowance."""
    if limits.api_key is not None:
        for name, value in scope["headers"]:
            if name == b"x-api-key":
                if hmac.compare_digest(value, limits.api_key):
                    return limits.key_client
                break
    client = scope.get("client")
    return client[0] if client else "unknown"


def route_of(routes: list[BaseRoute], scope: Scope) -> BaseRoute | None:
    """The route the router would name `scope` by in the metrics: the path's and method's, else the path's (as
    for a 405)."""
    path, method = scope["path"], scope["method"]
    by_path = None
    for context in iter_route_contexts(routes):
        regex = getattr(context, "path_regex", None)
        if regex is None or not regex.match(path):
            continue
        if not context.methods or method in context.methods:
            return context.original_route
        by_path = by_path or context.original_route
    return by_path


HTTP_METHODS = frozenset({"get", "head", "post", "put", "patch", "delete", "options"})
TOO_MANY_REQUESTS = {
    "description": "too many requests from this client: wait `Retry-After` seconds",
    "content": {"application/json": {"schema": ErrorBody.model_json_schema()}},
    "headers": {
        "Retry-After": {"description": "seconds until the limit resets", "schema": {"type": "integer"}},
        "RateLimit-Policy": {
            "description": 'the limit (IETF draft): `"read";q=600;w=60` is 600 requests per 60 seconds',
            "schema": {"type": "string"},
        },
        "RateLimit": {
            "description": 'this client\'s quota (IETF draft): `"read";r=0;t=42`, none left for 42 seconds',
            "schema": {"type": "string"},
        },
    },
}


def document_429(app: FastAPI, limits: Limits) -> None:
    """The 429 in the OpenAPI description of every limited operation (FastAPI's way of extending it)."""
    make_schema = app.openapi

    def openapi() -> dict[str, Any]:
        schema = make_schema()
        for path, operations in schema.get("paths", {}).items():
            if path in EXEMPT_PATHS:
                continue
            for method, operation in operations.items():
                policy = limits.read if method.upper() in READ_METHODS else limits.write
                if method in HTTP_METHODS and policy is not None:
                    operation.setdefault("responses", {}).setdefault("429", TOO_MANY_REQUESTS)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def add_rate_limits(app: FastAPI, settings: Settings) -> None:
    """Adds the limiter to `app` (inside the request-id middleware, so a 429 carries the request id).

    Innermost of the app's middleware: inside CORS, which then answers preflights itself and lets a
    cross-origin page read a 429. Raises ConfigError naming the setting for a malformed limit or storage URL."""
    limits = limits_from(settings)
    storage = storage_for(settings.rate_limit_storage_url)  # once per app: each app has its own counters
    document_429(app, limits)
    app.user_middleware.append(
        Middleware(RateLimitMiddleware, storage=storage, settings=settings, routes=app.router.routes)
    )
