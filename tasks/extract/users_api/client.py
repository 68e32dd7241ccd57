"""The users API's HTTP client: one page (DummyJSON's `GET base?limit=L&skip=S` -> {users, total} by
default; any source's pagination, tasks/extract/users_api/paging.py), a 429 waited out, a transient failure
retried for that page alone, refused credentials failing at once."""

from __future__ import annotations

import email.utils
import functools
import itertools
import random
import ssl
import time
from datetime import UTC, datetime
from urllib.parse import urlencode

import httpx

from tasks.extract.errors import SourceAuthError, SourceError, TransientSourceError
from tasks.extract.errors import source_logger as _logger
from tasks.extract.users_api.constants import DEFAULT_RETRY_AFTER_SECONDS, MAX_429_WAITS, RETRY_MAX_SECONDS
from tasks.extract.users_api.paging import Page, Paging, Position


def _retry_after_seconds(value: str | None, cap: float) -> float:
    if not value:
        return min(DEFAULT_RETRY_AFTER_SECONDS, cap)
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return min(DEFAULT_RETRY_AFTER_SECONDS, cap)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return max(0.0, min(seconds, cap))


def _get(client: httpx.Client, url: str, params: dict) -> tuple[int, httpx.Headers, bytes]:
    """Status, headers and body of one GET, the body read off the stream instead of kept on the response.
    httpx's response objects sit in reference cycles (request, streams, connection) that only Python's
    cyclic garbage collector frees: a response that kept its page body kept it until the next collection,
    and across a long run those bodies piled up (`make bench` checks they do not)."""
    # merged into the URL's own query (httpx's `params=` would replace it: a Link header's next URL, say)
    with client.stream("GET", httpx.URL(url).copy_merge_params(params)) as resp:
        return resp.status_code, resp.headers, b"".join(resp.iter_bytes())


def _shown(base_url: str) -> str:
    """The URL as logs and errors show it: without credentials or query (a token may ride in either)."""
    return str(httpx.URL(base_url).copy_with(username=None, password=None, query=None))


def fetch_page(
    client: httpx.Client, paging: Paging, position: Position, *, max_retry_after: float, secret_setting: str
) -> Page:
    """One page. 429 waits for Retry-After; 5xx and network errors raise TransientSourceError; 401/403 raise
    SourceAuthError naming the setting that holds the credential (never its value)."""
    target, params = paging.request(position)
    url = _shown(target) + (f"?{urlencode(params)}" if params else "")
    for _ in range(MAX_429_WAITS + 1):
        try:
            status, headers, body = _get(client, target, params)
        except (httpx.TimeoutException, httpx.TransportError) as exc:
            raise TransientSourceError(f"GET {url} failed: {type(exc).__name__}: {exc}") from exc
        if status == 429:
            wait = _retry_after_seconds(headers.get("Retry-After"), max_retry_after)
            _logger().warning("GET %s: 429 Too Many Requests, waiting %.1fs (Retry-After)", url, wait)
            time.sleep(wait)
            continue
        if status >= 500:
            raise TransientSourceError(f"GET {url} answered HTTP {status}")
        if status in (401, 403):
            raise SourceAuthError(
                f"GET {url} answered HTTP {status}: the source refused the credentials; check {secret_setting}"
            )
        if status >= 400:
            raise SourceError(f"GET {url} answered HTTP {status}: {body[:200].decode(errors='replace')}")
        return paging.parse(body, headers, url)
    raise TransientSourceError(f"GET {url} still rate-limited (429) after {MAX_429_WAITS} waits")


def _backoff(attempt: int, base_seconds: float) -> float:
    """base * 2**attempt (capped), plus up to half as much again at random: fetchers set back together by one
    outage do not all come back at the same moment."""
    delay = min(base_seconds * 2**attempt, RETRY_MAX_SECONDS)
    return delay + random.uniform(0, delay / 2)


def fetch_page_retried(
    client: httpx.Client,
    paging: Paging,
    position: Position,
    *,
    max_retry_after: float,
    retries: int,
    retry_base_seconds: float,
    secret_setting: str,
) -> Page:
    """One page, a transient failure (connection error, timeout, 5xx, 429 past its waits) retried up to
    `retries` times with backoff: every page has a budget of its own and a retry asks for that page alone, so a
    source failing now and then completes however many pages the walk has. Anything else raises at once."""
    for attempt in itertools.count():
        try:
            return fetch_page(client, paging, position, max_retry_after=max_retry_after, secret_setting=secret_setting)
        except TransientSourceError as exc:
            if attempt == retries:
                if retries:
                    raise TransientSourceError(f"{exc} (the page failed {retries + 1} times)") from exc
                raise
            wait = _backoff(attempt, retry_base_seconds)
            _logger().warning("%s: retrying this page (%d of %d) in %.1fs", exc, attempt + 1, retries, wait)
            time.sleep(wait)
    raise AssertionError("unreachable: itertools.count() never ends")


@functools.cache
def tls_context() -> ssl.SSLContext:
    """httpx's default TLS settings, built once (loading the CA bundle for every batch's client cost CPU)."""
    return httpx.create_ssl_context()
