"""A users API's credentials as httpx applies them to every request: an API key in a header or a query
parameter, a bearer token, HTTP basic. Nothing here logs or shows a secret."""

from __future__ import annotations

import logging
from collections.abc import Generator

import httpx

from models.sources import ApiSourceConfig


class _HeaderAuth(httpx.Auth):
    def __init__(self, name: str, value: str) -> None:
        self._name, self._value = name, value

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers[self._name] = self._value
        yield request


class _QueryAuth(httpx.Auth):
    def __init__(self, name: str, value: str) -> None:
        self._name, self._value = name, value

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.url = request.url.copy_merge_params({self._name: self._value})
        yield request


class _HideQuery(logging.Filter):
    """httpx logs each request's URL at INFO: with a key in the query, the URL is logged without its query."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(isinstance(a, httpx.URL) and a.query for a in record.args):
            record.args = tuple(a.copy_with(query=None) if isinstance(a, httpx.URL) else a for a in record.args)
        return True


def client_auth(config: ApiSourceConfig, secret: str | None) -> httpx.Auth | None:
    """The httpx auth for a source's requests (None without credentials)."""
    if config.auth == "none" or secret is None:
        return None
    if config.auth == "api_key_header":
        return _HeaderAuth(config.api_key_name, secret)
    if config.auth == "bearer":
        return _HeaderAuth("Authorization", f"Bearer {secret}")
    if config.auth == "basic":
        return httpx.BasicAuth(config.username or "", secret)
    logger = logging.getLogger("httpx")
    if not any(isinstance(f, _HideQuery) for f in logger.filters):
        logger.addFilter(_HideQuery())
    return _QueryAuth(config.api_key_name, secret)
