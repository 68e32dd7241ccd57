"""How a users API pages, for each style a source may use: where a page's request goes, what its body says,
and where the walk goes on. A walk's position is what its checkpoint stores."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
import msgspec

from models.sources import ApiSourceConfig
from tasks.extract.errors import SourceError


@dataclass(frozen=True)
class Position:
    """Where a walk goes on: the next offset (`offset`) or page number (`page`), or the source's token for the
    next page (`cursor`: its cursor; `link`: the URL its Link header gave) with the pages walked so far."""

    number: int
    token: str | None = None


START = Position(0)


@dataclass(frozen=True)
class Page:
    """One page as the source sent it: its records as raw JSON texts, and what it says about the rest."""

    records: list[msgspec.Raw]
    total: int | None = None
    total_pages: int | None = None
    next_token: str | None = None


_OBJECT = msgspec.json.Decoder(dict[str, msgspec.Raw])
_LIST = msgspec.json.Decoder(list[msgspec.Raw])
_COUNT = msgspec.json.Decoder(int | None)
_TOKEN = msgspec.json.Decoder(str | int | None)


class _Body:
    """A page's body, its top-level object decoded once (values kept as raw JSON) for every path read from it."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self._top: dict[str, msgspec.Raw] | None = None

    def at(self, path: str) -> msgspec.Raw | bytes | None:
        """The raw JSON at a dotted path (None where a step is missing); the body itself for ""."""
        if not path:
            return self.body
        if self._top is None:
            self._top = _OBJECT.decode(self.body)
        head, *rest = path.split(".")
        node: msgspec.Raw | None = self._top.get(head)
        for key in rest:
            node = _OBJECT.decode(node).get(key) if node is not None else None
        return node


@dataclass(frozen=True)
class WalkRange:
    """A shard's part of an offset walk: the records from `start` up to `stop` (None: to the source's end)."""

    start: int
    stop: int | None = None

    def expected(self, total: int) -> int:
        """How many records of a source of `total` the range holds."""
        return max(0, min(total, self.stop if self.stop is not None else total) - self.start)


class Paging:
    """A source's pagination (ApiSourceConfig's style and parameter names); with `part`, an offset walk's range
    of it (a shard's)."""

    def __init__(self, config: ApiSourceConfig, part: WalkRange | None = None) -> None:
        if part is not None and config.pagination != "offset":
            raise ValueError(f"only an offset walk can be cut into ranges, not a {config.pagination} walk")
        self.config, self.part = config, part

    def first(self) -> Position:
        if self.part is not None:
            return Position(self.part.start)
        return Position(self.config.first_page if self.config.pagination == "page" else 0)

    def request(self, position: Position) -> tuple[str, dict[str, Any]]:
        """The URL and query parameters of the page at `position` (credentials are added by the client)."""
        c = self.config
        size = {c.limit_param: c.page_size}
        if c.pagination == "offset":
            return c.base_url, {**size, c.offset_param: position.number}
        if c.pagination == "page":
            return c.base_url, {c.page_param: position.number, **size}
        if c.pagination == "cursor":
            return c.base_url, {**size, **({c.cursor_param: position.token} if position.token else {})}
        return (position.token, {}) if position.token else (c.base_url, size)  # link: the next URL as given

    def after(self, position: Position, page: Page) -> Position | None:
        """Where the walk goes on after `page`, or None when that page was its last."""
        c, got = self.config, len(page.records)
        if not got:
            return None
        short = got < c.page_size
        if c.pagination == "offset":
            reached = position.number + got
            done = reached >= page.total if page.total is not None else short
            done = done or (self.part is not None and self.part.stop is not None and reached >= self.part.stop)
            return None if done else Position(reached)
        if c.pagination == "page":
            last = page.total_pages is not None and position.number >= c.first_page + page.total_pages - 1
            return None if short or last else Position(position.number + 1)
        return Position(position.number + 1, page.next_token) if page.next_token else None

    def last(self, position: Position, page: Page) -> Position:
        """Where a walk that ended with `page` stands (its checkpoint's last position)."""
        if self.config.pagination == "offset":
            return Position(position.number + len(page.records))
        return Position(position.number + 1)

    def parse(self, body: bytes, headers: httpx.Headers, url: str) -> Page:
        """A page's body (records at `records_path`, the counts and cursor where configured) and Link header."""
        c, page = self.config, _Body(body)
        try:
            records = page.at(c.records_path)
            if records is None:
                raise SourceError(f"GET {url} broke the contract: no records at {c.records_path!r}")
            total = _count(page, c.total_path, url) if c.pagination in ("offset", "page") else None
            pages = _count(page, c.total_pages_path, url) if c.pagination == "page" else None
            token = None
            if c.pagination == "cursor":
                raw = page.at(c.cursor_path)
                value = _TOKEN.decode(raw) if raw is not None else None
                token = str(value) if value not in (None, "") else None
            elif c.pagination == "link":
                token = httpx.Response(200, headers=headers).links.get("next", {}).get("url")
                if token and c.auth == "api_key_query":  # the key is added to every request: never stored
                    token = str(httpx.URL(token).copy_remove_param(c.api_key_name))
            return Page(_LIST.decode(records), total, pages, token)
        except msgspec.ValidationError as exc:
            raise SourceError(f"GET {url} broke the contract: {exc}") from exc
        except (msgspec.DecodeError, RecursionError) as exc:  # (a record nested deeper than ~1,000 levels)
            raise SourceError(f"GET {url} returned invalid JSON: {exc}") from exc


def _count(page: _Body, path: str | None, url: str) -> int | None:
    """A count the source gives at `path` (required there when configured), or None without a path."""
    if not path:
        return None
    raw = page.at(path)
    if raw is None:
        raise SourceError(f"GET {url} broke the contract: no {path!r} in the body")
    return _COUNT.decode(raw)
