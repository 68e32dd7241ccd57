"""A loopback RSS/Atom peer for tests: feed XML generated at test time, served per path with or without
ETag / Last-Modified (and honouring If-None-Match / If-Modified-Since when it sends them), scripted faults
and delays, and a record of every request's headers and answer."""

from __future__ import annotations

import email.utils
import hashlib
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import ThreadingHTTPServer
from xml.sax.saxutils import escape, quoteattr

from dev.sample_api import Fault, LoopbackServer, QuietHandler  # noqa: F401  (Fault: the users peer's scripted answer)

RSS = "application/rss+xml; charset=utf-8"
ATOM = "application/atom+xml; charset=utf-8"


# ---------------------------------------------------------------- documents


def _el(tag: str, value: object, **attrs: str) -> str:
    if value is None:
        return ""
    attr = "".join(f" {k}={quoteattr(v)}" for k, v in attrs.items())
    return f"<{tag}{attr}>{escape(str(value))}</{tag}>"


def rss_document(items: list[dict], *, title: str = "Test RSS feed", link: str = "http://feeds.test/") -> bytes:
    """RSS 2.0. Item keys (each optional): guid, link, title, summary, author, categories, published (datetime)."""
    out = [
        '<?xml version="1.0" encoding="utf-8"?>',
        '<rss version="2.0"><channel>',
        _el("title", title),
        _el("link", link),
        _el("description", "generated for tests"),
    ]
    for item in items:
        out.append("<item>")
        out.append(_el("guid", item.get("guid"), isPermaLink="false"))
        out.append(_el("title", item.get("title")))
        out.append(_el("link", item.get("link")))
        out.append(_el("description", item.get("summary")))
        out.append(_el("author", item.get("author")))
        out += [_el("category", c) for c in item.get("categories", ())]
        if item.get("published"):
            out.append(_el("pubDate", email.utils.format_datetime(item["published"], usegmt=True)))
        out.append("</item>")
    out.append("</channel></rss>")
    return "\n".join(out).encode()


def atom_document(items: list[dict], *, title: str = "Test Atom feed", feed_id: str = "urn:test:atom") -> bytes:
    """Atom 1.0, same item keys as `rss_document` (guid is the entry id)."""
    out = [
        '<?xml version="1.0" encoding="utf-8"?>',
        '<feed xmlns="http://www.w3.org/2005/Atom">',
        _el("title", title),
        _el("id", feed_id),
        _el("updated", "2026-01-01T00:00:00Z"),
    ]
    for item in items:
        out.append("<entry>")
        out.append(_el("id", item.get("guid")))
        out.append(_el("title", item.get("title")))
        if item.get("link"):
            out.append(f'<link rel="alternate" href={quoteattr(item["link"])}/>')
        out.append(_el("summary", item.get("summary")))
        if item.get("author"):
            out.append(f"<author>{_el('name', item['author'])}</author>")
        out += [f"<category term={quoteattr(c)}/>" for c in item.get("categories", ())]
        if item.get("published"):
            stamp = item["published"].astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            out.append(_el("published", stamp) + _el("updated", stamp))
        out.append("</entry>")
    out.append("</feed>")
    return "\n".join(out).encode()


def make_items(n: int, *, prefix: str, base: datetime = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)) -> list[dict]:
    """`n` complete items, newest first."""
    return [
        {
            "guid": f"urn:{prefix}:{i}",
            "title": f"{prefix} story {i}",
            "link": f"https://news.test/{prefix}/{i}",
            "summary": f"<p>What happened in {prefix} story {i}</p>",
            "author": f"writer{i % 3}@news.test (Writer {i % 3})",
            "categories": [f"topic-{i % 2}", "news"],
            "published": base - timedelta(hours=i),
        }
        for i in range(n)
    ]


# ---------------------------------------------------------------- server


@dataclass
class Route:
    body: bytes
    content_type: str
    validators: tuple[str, ...]  # which of "etag", "last-modified" the route sends and honours
    etag: str = ""
    last_modified: datetime | None = None


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    status: int  # 0 until answered


@dataclass
class _State:
    routes: dict[str, Route] = field(default_factory=dict)
    faults: defaultdict[str, deque] = field(default_factory=lambda: defaultdict(deque))
    delays: defaultdict[str, deque] = field(default_factory=lambda: defaultdict(deque))


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # a client that gave up (timeout tests) is not news
        pass


class FeedServer(LoopbackServer):
    """Feeds on a free loopback port. `set_feed(path, body, content_type, validators=("etag",))`;
    `faults[path]`: Faults answered one per request first; `delays[path]`: seconds to stall before answering;
    `requests`: every request as `Seen(path, headers, status)`."""

    thread_name = "feed-server"

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self._state = _State()
        self._lock = threading.Lock()
        self.requests: list[Seen] = []
        self._httpd = _QuietServer((host, port), self._handler())

    @property
    def faults(self) -> defaultdict[str, deque]:
        return self._state.faults

    @property
    def delays(self) -> defaultdict[str, deque]:
        return self._state.delays

    def url(self, path: str) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}{path}"

    def set_feed(
        self,
        path: str,
        body: bytes,
        content_type: str = RSS,
        *,
        validators: tuple[str, ...] | str | None = ("etag", "last-modified"),
    ) -> None:
        """Serve `body` at `path`. A changed body gets a new ETag and a Last-Modified at least a second later."""
        if isinstance(validators, str):
            validators = (validators,)
        with self._lock:
            old = self._state.routes.get(path)
            now = datetime.now(UTC).replace(microsecond=0)
            if old is not None and old.body == body:
                modified = old.last_modified
            elif old is not None and old.last_modified is not None:
                modified = max(now, old.last_modified + timedelta(seconds=1))
            else:
                modified = now
            self._state.routes[path] = Route(
                body, content_type, tuple(validators or ()), f'"{hashlib.sha256(body).hexdigest()[:20]}"', modified
            )

    def requests_for(self, path: str) -> list[Seen]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    # ---------------------------------------------------------------- HTTP

    @staticmethod
    def _not_modified(route: Route, headers) -> bool:
        """RFC 9110: If-None-Match decides when present; If-Modified-Since only without it."""
        inm = headers.get("If-None-Match")
        if inm is not None:
            if "etag" not in route.validators:
                return False
            tags = {t.strip().removeprefix("W/") for t in inm.split(",")}
            return "*" in tags or route.etag in tags
        ims = headers.get("If-Modified-Since")
        if ims is None or "last-modified" not in route.validators:
            return False
        try:
            since = email.utils.parsedate_to_datetime(ims)
        except (TypeError, ValueError):
            return False
        return since is not None and route.last_modified <= since

    def _handler(self):
        server = self

        class Handler(QuietHandler):
            def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.seen.status = status
                super()._send(status, body, headers)

            def do_GET(self):  # noqa: N802
                self.seen = Seen(self.path, dict(self.headers.items()), 0)  # recorded on arrival, status on answer
                with server._lock:
                    server.requests.append(self.seen)
                    route = server._state.routes.get(self.path)
                    fault = server.faults[self.path].popleft() if server.faults[self.path] else None
                    delay = server.delays[self.path].popleft() if server.delays[self.path] else 0
                if delay:
                    time.sleep(delay)
                if fault is not None:
                    return self._send(fault.status, fault.body, {"Content-Type": "text/plain", **fault.headers})
                if route is None:
                    return self._send(404, b"no such feed", {"Content-Type": "text/plain"})
                headers = {"Content-Type": route.content_type}
                if "etag" in route.validators:
                    headers["ETag"] = route.etag
                if "last-modified" in route.validators:
                    headers["Last-Modified"] = email.utils.format_datetime(route.last_modified, usegmt=True)
                if server._not_modified(route, self.headers):
                    return self._send(304, b"", headers)
                self._send(200, route.body, headers)

        return Handler
