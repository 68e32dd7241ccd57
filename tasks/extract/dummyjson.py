"""DummyJSON-style paginated users API (`GET base?limit=L&skip=S` -> {users, total, skip, limit}).

Public entry points: `fetch_batch` (a Prefect task: fetches a run of pages, each retried on its own when the
source fails it for a moment, appends them to the staged raw file and moves the checkpoint after each),
`walk_findings` (what the totals the source reported say about the walk), `begin_extract` / `finish_extract`
(checkpoint bookkeeping), `CheckpointWriter` (moves the checkpoint from a thread of its own).
"""

from __future__ import annotations

import email.utils
import functools
import itertools
import logging
import random
import ssl
import time
from datetime import UTC, datetime

import httpx
import msgspec
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError

from tasks.extract.checkpoint import (  # noqa: F401  (the extraction's entry points, with fetch_batch)
    CheckpointWriter,
    ExtractPlan,
    begin_extract,
    finish_extract,
)
from tasks.extract.constants import (
    DEFAULT_RETRY_AFTER_SECONDS,
    MAX_429_WAITS,
    RETRY_MAX_SECONDS,
)
from tasks.extract.staging import write_lines
from tasks.retry import retry_when
from tasks.staging import handoff


class SourceError(RuntimeError):
    """The source answered in a way retrying will not fix (4xx, broken contract)."""


class TransientSourceError(RuntimeError):
    """The source is down, slow or overloaded; worth another try."""


# ---------------------------------------------------------------- HTTP


def _logger():
    """The run logger inside Prefect, a plain logger when the function is called on its own."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


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
    and across a long run those bodies piled up (15-30 MB of them between batches)."""
    with client.stream("GET", url, params=params) as resp:
        return resp.status_code, resp.headers, b"".join(resp.iter_bytes())


def _shown(base_url: str) -> str:
    """The URL as logs and errors show it: without credentials or query (a token may ride in either)."""
    return str(httpx.URL(base_url).copy_with(username=None, password=None, query=None))


def fetch_page(client: httpx.Client, base_url: str, *, limit: int, skip: int, max_retry_after: float) -> dict:
    """One page. 429 waits for Retry-After; 5xx and network errors raise TransientSourceError."""
    url = f"{_shown(base_url)}?limit={limit}&skip={skip}"
    for _ in range(MAX_429_WAITS + 1):
        try:
            status, headers, body = _get(client, base_url, {"limit": limit, "skip": skip})
        except (httpx.TimeoutException, httpx.TransportError) as exc:
            raise TransientSourceError(f"GET {url} failed: {type(exc).__name__}: {exc}") from exc
        if status == 429:
            wait = _retry_after_seconds(headers.get("Retry-After"), max_retry_after)
            _logger().warning("GET %s: 429 Too Many Requests, waiting %.1fs (Retry-After)", url, wait)
            time.sleep(wait)
            continue
        if status >= 500:
            raise TransientSourceError(f"GET {url} answered HTTP {status}")
        if status >= 400:
            raise SourceError(f"GET {url} answered HTTP {status}: {body[:200].decode(errors='replace')}")
        return _parse_page(body, url)
    raise TransientSourceError(f"GET {url} still rate-limited (429) after {MAX_429_WAITS} waits")


def _backoff(attempt: int, base_seconds: float) -> float:
    """base * 2**attempt (capped), plus up to half as much again at random: fetchers set back together by one
    outage do not all come back at the same moment."""
    delay = min(base_seconds * 2**attempt, RETRY_MAX_SECONDS)
    return delay + random.uniform(0, delay / 2)


def fetch_page_retried(
    client: httpx.Client,
    base_url: str,
    *,
    limit: int,
    skip: int,
    max_retry_after: float,
    retries: int,
    retry_base_seconds: float,
) -> dict:
    """One page, a transient failure (connection error, timeout, 5xx, 429 past its waits) retried up to
    `retries` times with backoff: every page has a budget of its own and a retry asks for that page alone, so a
    source failing now and then completes however many pages the walk has. Anything else raises at once."""
    for attempt in itertools.count():
        try:
            return fetch_page(client, base_url, limit=limit, skip=skip, max_retry_after=max_retry_after)
        except TransientSourceError as exc:
            if attempt == retries:
                if retries:
                    raise TransientSourceError(f"{exc} (the page failed {retries + 1} times)") from exc
                raise
            wait = _backoff(attempt, retry_base_seconds)
            _logger().warning("%s: retrying this page (%d of %d) in %.1fs", exc, attempt + 1, retries, wait)
            time.sleep(wait)


class _Page(msgspec.Struct):
    """The envelope only: each user stays the raw JSON text the source sent (no Python objects per field)."""

    users: list[msgspec.Raw]
    total: int


_PAGE = msgspec.json.Decoder(_Page)


def _parse_page(body: bytes, url: str) -> dict:
    try:
        page = _PAGE.decode(body)
    except msgspec.ValidationError as exc:
        raise SourceError(f"GET {url} broke the contract: {exc}") from exc
    except (msgspec.DecodeError, RecursionError) as exc:  # (a record nested deeper than ~1,000 levels)
        raise SourceError(f"GET {url} returned invalid JSON: {exc}") from exc
    return {"users": page.users, "total": page.total}


# Prefect retry_condition_fn (the feeds source uses it): a TransientSourceError is worth another try
is_transient = retry_when(lambda exc: isinstance(exc, TransientSourceError))


def walk_findings(totals: list[int], records: int) -> list[str]:
    """What is wrong with a page walk that staged `records` while the source reported `totals` (in order,
    repeats dropped): a total that changed on the way, or a walk that ended short of one (an early empty page).
    Either way the extraction is not a complete picture of the source."""
    found = []
    if len(totals) > 1:
        found.append(f"the source's total changed from {' to '.join(map(str, totals))} during the walk")
    if totals and records < max(totals):
        found.append(f"the walk ended at {records} records, short of the total {max(totals)}")
    return found


# ---------------------------------------------------------------- task


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """httpx's default TLS settings, built once: building them (loading the CA bundle) took about 60 ms of
    CPU, at every batch when each client made its own."""
    return httpx.create_ssl_context()


@task(name="fetch-users-pages", cache_policy=NO_CACHE)  # no task retry: each page has its retries (see below)
def fetch_batch(
    checkpoints: CheckpointWriter,
    *,
    base_url: str,
    page_size: int,
    skip: int,
    max_records: int,
    staged_path: str,
    offset: int,
    records_before: int,
    timeout: float = 30.0,
    max_retry_after: float = 120.0,
    retries: int = 4,
    retry_base_seconds: float = 2.0,
    run_dir: str | None = None,
) -> dict:
    """Fetch pages from `skip` until `max_records` are in hand or the source is exhausted, append them to
    the staged file at `offset`, handing the new position and the total the source reported to `checkpoints`
    after each page: a killed run refetches only the pages in flight.
    Each page is written as it arrives (one page in memory at a time) and flushed to the kernel before its
    position is given, so the process dying cannot lose it. A page the source fails for a moment is retried
    on its own (`fetch_page_retried`); one that fails past its retries fails the task, and the next run
    resumes at it from the checkpoint (retrying the task too would only multiply the same page's tries). The
    flow posts a batch to the later stages only once it returns. With `run_dir` it stops before the next page
    once the run is cancelled (what it staged is checkpointed for the next run)."""
    started = time.time()
    cursor, total, got = skip, None, 0
    with (
        httpx.Client(
            timeout=httpx.Timeout(timeout), headers={"Accept": "application/json"}, verify=_tls_context()
        ) as client,
        open(staged_path, "r+b") as fh,
    ):
        fh.truncate(offset)
        fh.seek(offset)
        while got < max_records:
            handoff.check_cancelled(run_dir, "extract")  # a failed stage or a SIGTERM stops it within a page
            page = fetch_page_retried(
                client,
                base_url,
                limit=page_size,
                skip=cursor,
                max_retry_after=max_retry_after,
                retries=retries,
                retry_base_seconds=retry_base_seconds,
            )
            users, total = page["users"], page["total"]
            if not users:
                break
            write_lines(fh, users)
            fh.flush()
            got += len(users)
            cursor += len(users)
            checkpoints.advance(
                skip=cursor, total=total, offset=fh.tell(), records=records_before + got, staged_path=staged_path
            )
            del page, users  # (the page's body) before the next is read
            if cursor >= total:
                break
        new_offset = fh.tell()
    done = got == 0 or (total is not None and cursor >= total)
    if new_offset == offset and total is not None:  # an empty page: the checkpoint still learns its total
        checkpoints.advance(
            skip=cursor, total=total, offset=new_offset, records=records_before + got, staged_path=staged_path
        )
    _logger().info("pages skip=%d..%d: %d records staged (total %s)", skip, cursor, got, total)
    return {
        "records": got,
        "next_skip": cursor,
        "total": total,
        "offset": new_offset,
        "done": done,
        "work_span": [started, time.time()],
    }
