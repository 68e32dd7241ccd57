"""Feeds over HTTP: a conditional GET (ETag / Last-Modified validators), the document parsed by feedparser
into item rows."""

from __future__ import annotations

import io
import time
import xml.sax
from dataclasses import dataclass
from urllib.parse import urlsplit

import feedparser
import httpx
import orjson

from tasks.extract.errors import SourceError, TransientSourceError
from tasks.extract.feeds.constants import MAX_FEED_BYTES


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


def get_document(client: httpx.Client, url: str, headers: dict[str, str]) -> tuple[httpx.Response, bytes]:
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


def check_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise FeedError(f"feed URL {url!r} is not an http(s) URL")
