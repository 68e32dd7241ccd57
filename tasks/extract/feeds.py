"""RSS/Atom feeds over conditional GET: one task per feed fetch, items staged as JSONL.

Public entry points: `fetch_feed` (a Prefect task: GET with If-None-Match / If-Modified-Since, parse with
feedparser, stage the items), `load_validators` and `record_outcomes` (each feed's checkpoint row in
`etl_checkpoints`, source `feed:<url>`: status, last error, and in `state` the ETag / Last-Modified).

A feed's new validators are only stored once its items are persisted (`record_outcomes` from the persist
stage): a run that dies in between refetches the whole feed next time instead of being told 304."""

from __future__ import annotations

import hashlib
import io
import logging
import time
import xml.sax
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import feedparser
import httpx
import orjson
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError
from prefect.tasks import exponential_backoff
from sqlalchemy import Engine
from sqlmodel import Session, select

from models.runs import EtlCheckpoint
from tasks.extract.dummyjson import SourceError, TransientSourceError, is_transient
from tasks.extract.feed_constants import (
    ACCEPT,
    CHECKPOINT_PREFIX,
    CHECKPOINT_SOURCE_MAX,
    MAX_FEED_BYTES,
    REQUEST_TIMEOUT_SECONDS,
    USER_AGENT,
)


class FeedError(SourceError):
    """The feed answered in a way retrying will not fix (4xx, not a feed, too big)."""


@dataclass(frozen=True)
class Validators:
    etag: str | None = None
    last_modified: str | None = None

    def headers(self) -> dict[str, str]:
        out = {}
        if self.etag:
            out["If-None-Match"] = self.etag
        if self.last_modified:
            out["If-Modified-Since"] = self.last_modified
        return out

    def state(self, url: str) -> str:
        """`etl_checkpoints.state` for the feed: its URL (the source key may be a hash) and validators."""
        return orjson.dumps({"url": url, "etag": self.etag, "last_modified": self.last_modified}).decode()

    @classmethod
    def from_state(cls, text: str | None) -> Validators:
        try:
            data = orjson.loads(text or "{}")
        except orjson.JSONDecodeError:
            return cls()
        return cls(data.get("etag"), data.get("last_modified")) if isinstance(data, dict) else cls()


def _logger():
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


def checkpoint_source(url: str) -> str:
    source = CHECKPOINT_PREFIX + url
    if len(source) <= CHECKPOINT_SOURCE_MAX:
        return source
    return f"{CHECKPOINT_PREFIX}sha256:{hashlib.sha256(url.encode()).hexdigest()}"


# ---------------------------------------------------------------- HTTP


def _get(client: httpx.Client, url: str, headers: dict[str, str]) -> tuple[httpx.Response, bytes]:
    """One GET: 5xx and network errors are transient, 4xx are not; the body is read up to MAX_FEED_BYTES."""
    try:
        with client.stream("GET", url, headers=headers) as resp:
            if resp.status_code >= 500:
                raise TransientSourceError(f"GET {url} answered HTTP {resp.status_code}")
            if resp.status_code >= 400:
                raise FeedError(f"GET {url} answered HTTP {resp.status_code}")
            if 300 <= resp.status_code < 400 and resp.status_code != 304:
                raise FeedError(f"GET {url} answered HTTP {resp.status_code} without a redirect to follow")
            chunks, size = [], 0
            for chunk in resp.iter_bytes():
                size += len(chunk)
                if size > MAX_FEED_BYTES:
                    raise FeedError(f"GET {url}: the document is larger than {MAX_FEED_BYTES} bytes")
                chunks.append(chunk)
            return resp, b"".join(chunks)
    except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
        raise TransientSourceError(f"GET {url} failed: {type(exc).__name__}: {exc}") from exc
    except httpx.HTTPError as exc:
        raise FeedError(f"GET {url} failed: {type(exc).__name__}: {exc}") from exc


def _describe_bozo(exc: BaseException | None) -> str:
    if isinstance(exc, xml.sax.SAXParseException):
        return f"not well-formed XML: {exc.getMessage()} at line {exc.getLineNumber()}, column {exc.getColumnNumber()}"
    if exc is not None:
        return f"{type(exc).__name__}: {exc}"
    return "the root element is neither RSS nor Atom"


def parse_items(body: bytes, *, url: str, content_type: str | None, base_url: str) -> tuple[list[dict], str | None]:
    """The document's items as staging rows, and a warning when feedparser had to recover from errors.
    A document feedparser does not recognise as RSS or Atom raises FeedError naming the URL."""
    if not body.strip():
        raise FeedError(f"GET {url}: not an RSS or Atom feed: the response body is empty")
    headers = {"content-location": base_url}
    if content_type:
        headers["content-type"] = content_type
    doc = feedparser.parse(io.BytesIO(body), response_headers=headers)
    if not doc.get("version"):
        raise FeedError(f"GET {url}: not an RSS or Atom feed: {_describe_bozo(doc.get('bozo_exception'))}")
    warning = _describe_bozo(doc.get("bozo_exception")) if doc.get("bozo") else None
    return [_item_row(url, entry) for entry in doc.entries], warning


def _item_row(feed: str, entry) -> dict:
    """feedparser's entry -> the staged fields (the one per-item step: feedparser hands out dicts)."""
    when = entry.get("published_parsed") or entry.get("updated_parsed")
    link = entry.get("link")
    if entry.get("guidislink") and link and not link.startswith(("http://", "https://")):
        link = None  # feedparser copied a non-URL id (urn:...) into the link: the item has no link
    return {
        "feed": feed,
        "guid": entry.get("id"),
        "link": link,
        "title": entry.get("title"),
        "summary": entry.get("summary"),
        "author": entry.get("author"),
        "categories": [t["term"] for t in entry.get("tags") or () if t.get("term")],
        "published_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", when) if when else None,
    }


def _check_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise FeedError(f"feed URL {url!r} is not an http(s) URL")


# ---------------------------------------------------------------- task


@task(
    name="fetch-feed",
    task_run_name="fetch-feed {url}",
    retries=4,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_jitter_factor=0.5,
    retry_condition_fn=is_transient,
    cache_policy=NO_CACHE,
)
def fetch_feed(
    url: str, *, validators: dict[str, str | None], part_path: str, timeout: float = REQUEST_TIMEOUT_SECONDS
) -> dict:
    """Conditional GET of one feed. 304: nothing staged. 200: its items written to `part_path` as JSONL
    (a retry rewrites the file). Returns the outcome, with the response's validators to store once the
    items are persisted."""
    started = time.time()
    _check_url(url)
    sent = Validators(**validators)
    headers = {"Accept": ACCEPT, "User-Agent": USER_AGENT} | sent.headers()
    with httpx.Client(timeout=httpx.Timeout(timeout), follow_redirects=True) as client:
        resp, body = _get(client, url, headers)
    if resp.status_code == 304:
        if not sent.headers():
            raise FeedError(f"GET {url} answered 304 Not Modified to an unconditional request")
        _logger().info("GET %s: 304 Not Modified", url)
        return {
            "url": url,
            "status": "not_modified",
            "http_status": 304,
            "items": 0,
            "bytes": 0,
            "path": None,
            "validators": None,
            "warning": None,
            "work_span": [started, time.time()],
        }
    items, warning = parse_items(body, url=url, content_type=resp.headers.get("content-type"), base_url=str(resp.url))
    if warning:
        _logger().warning("GET %s: the feed has errors feedparser recovered from (%s)", url, warning)
    path = Path(part_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(orjson.dumps(item) + b"\n" for item in items))
    got = Validators(resp.headers.get("etag"), resp.headers.get("last-modified"))
    _logger().info(
        "GET %s: HTTP %d, %d items, %d bytes%s",
        url,
        resp.status_code,
        len(items),
        len(body),
        " (no ETag or Last-Modified: next run fetches it whole)" if got == Validators() else "",
    )
    return {
        "url": url,
        "status": "fetched",
        "http_status": resp.status_code,
        "items": len(items),
        "bytes": len(body),
        "path": str(path),
        "validators": {"etag": got.etag, "last_modified": got.last_modified},
        "warning": warning,
        "work_span": [started, time.time()],
    }


# ---------------------------------------------------------------- checkpoints


def _now() -> datetime:
    return datetime.now(UTC)


def load_validators(engine: Engine, urls: list[str]) -> dict[str, dict[str, str | None]]:
    """Each feed's stored ETag / Last-Modified (None where none is stored)."""
    sources = {checkpoint_source(u): u for u in urls}
    with Session(engine) as session:
        rows = session.exec(
            select(EtlCheckpoint.source, EtlCheckpoint.state).where(EtlCheckpoint.source.in_(list(sources)))
        ).all()
    stored = {sources[source]: Validators.from_state(state) for source, state in rows}
    return {u: vars(stored.get(u, Validators())).copy() for u in urls}


def record_outcomes(engine: Engine, *, run_id: str, outcomes: list[dict]) -> None:
    """Checkpoint rows for a set of feeds in one transaction. `fetched`: the new validators and what was
    staged; `not_modified`: the 304 is a success; `failed`: the error, validators kept."""
    if not outcomes:
        return
    now = _now()
    with Session(engine) as session:
        for out in outcomes:
            source = checkpoint_source(out["url"])
            cp = session.get(EtlCheckpoint, source) or EtlCheckpoint(source=source)
            cp.run_id, cp.updated_at = run_id, now
            if out["status"] == "failed":
                cp.status, cp.last_failure_at, cp.last_error = "failed", now, out["error"][:2000]
            else:
                cp.status, cp.last_success_at, cp.last_error = (
                    ("complete" if out["status"] == "fetched" else "not_modified"),
                    now,
                    None,
                )
            if out["status"] == "fetched":
                cp.state = Validators(**out["validators"]).state(out["url"])
                cp.staged_path, cp.staged_records, cp.staged_bytes = out["path"], out["items"], out["bytes"]
                cp.cursor, cp.total = out["items"], out["items"]
            session.add(cp)
        session.commit()
