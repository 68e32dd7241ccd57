"""A search's matching users, kept in the order of a sort per filter set and data version, as the totals are:
a page of them is then a slice of the list and a read of its users by id, however rare the matches among the
candidates the index finds (the text's, and the filters'). Reading the list costs one index-served query per
filter set, sort and data version (no more than a total did); a set matching more than MATCHES_MAX users is
not kept: its matches are common, and its pages quick to walk in the sort's order.

One list serves both orders (a descending page is the ascending order read backwards: NULL last names first
one way, last the other, on both databases) and offset and cursor pages alike: a cursor's last id is found
in the list by id, never by comparing sort values in Python (PostgreSQL's collation orders names)."""

from __future__ import annotations

import threading
import time
from array import array
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Connection, Row

from api.users_statements import filter_params, ids_statement, rows_by_id_statement, sorted_ids_statement

# users a kept list holds at most: at 1,000,000 users a text more common than this fills a page of 20 from
# about 200 rows read in the sort's order
MATCHES_MAX = 100_000
MATCHES_BUDGET = 1_000_000  # ids kept in all lists together (20 bytes each); the least recently used goes first
MATCHES_TTL_SECONDS = 60.0  # a backstop only, as for the totals: the data version tells when a list is stale


@dataclass(frozen=True)
class Matches:
    order: array  # the ids in the sort's ascending order
    by_id: array  # the same ids ascending (`order` itself when sorted by id)
    at: array | None  # at[i]: where by_id[i] is in `order` (None when sorted by id: i)

    @classmethod
    def of(cls, ids: Sequence[int], *, by_id: bool) -> Matches:
        """The matches of a sort by id (`ids` ascending), or of another sort (`ids` in its order)."""
        order = array("q", ids)
        if by_id:
            return cls(order, order, None)
        ranked = sorted(range(len(order)), key=order.__getitem__)
        return cls(order, array("q", (order[i] for i in ranked)), array("i", ranked))

    def __len__(self) -> int:
        return len(self.order)

    def page(self, *, order: str, limit: int, offset: int = 0, after_id: int | None = None) -> list[int] | None:
        """Up to `limit` ids of the page in `order` (asc or desc): from `offset`, or after the id `after_id`
        (None when that id is not among them: the caller reads the page from the table)."""
        n = len(self.order)
        if after_id is not None:
            i = bisect_left(self.by_id, after_id)
            if i == n or self.by_id[i] != after_id:
                return None
            at = i if self.at is None else self.at[i]
            offset = at + 1 if order == "asc" else n - at
        if order == "asc":
            return self.order[offset : offset + limit].tolist()
        end = max(n - offset, 0)
        return self.order[max(end - limit, 0) : end][::-1].tolist()


_kept: OrderedDict[tuple, tuple[float, Matches | None]] = OrderedDict()
_kept_ids = 0
_lock = threading.Lock()


def kept_matches(
    *, conn: Connection, key: tuple, filters: dict[str, Any], status: str, sort: str, plan: str
) -> Matches | None:
    """The matches of the filter set in `sort`'s order for the data version in `key`: kept, else read (at
    most MATCHES_MAX + 1 ids) and kept; None when there are more than MATCHES_MAX."""
    global _kept_ids
    now, hit = time.monotonic(), _kept.get(key)
    if hit is not None and now - hit[0] < MATCHES_TTL_SECONDS:
        with _lock:
            if key in _kept:
                _kept.move_to_end(key)
        return hit[1]
    dialect = conn.dialect.name
    stmt = ids_statement(keys=tuple(sorted(filters)), status=status, dialect=dialect, plan=plan)
    params = filter_params(filters=filters, status=status) | {"limit": MATCHES_MAX + 1}
    ids = conn.execute(stmt, params).scalars().all()
    matches = None
    if len(ids) <= MATCHES_MAX and sort == "id":
        matches = Matches.of(sorted(ids), by_id=True)
    elif len(ids) <= MATCHES_MAX:
        given = orjson.dumps(ids).decode() if dialect == "sqlite" else ids
        ordered = conn.execute(sorted_ids_statement(sort=sort, dialect=dialect), {"ids": given}).scalars().all()
        matches = Matches.of(ordered, by_id=False)
    with _lock:
        old = _kept.pop(key, None)
        _kept_ids -= len(old[1]) if old is not None and old[1] is not None else 0
        _kept[key] = (now, matches)
        _kept_ids += len(matches) if matches is not None else 0
        while _kept_ids > MATCHES_BUDGET and len(_kept) > 1:
            _, (_, dropped) = _kept.popitem(last=False)
            _kept_ids -= len(dropped) if dropped is not None else 0
    return matches


def rows_by_id(
    *, conn: Connection, ids: list[int], filters: dict[str, Any], status: str, sort: str, id_at: int
) -> list[Row]:
    """The users of `ids` still under the filters (a row changed since the list was read drops out), in the
    order of `ids`; `id_at`: where a row holds its id."""
    if not ids:
        return []
    dialect = conn.dialect.name
    stmt = rows_by_id_statement(keys=tuple(sorted(filters)), status=status, sort=sort, dialect=dialect)
    given = orjson.dumps(ids).decode() if dialect == "sqlite" else ids
    rows = conn.execute(stmt, filter_params(filters=filters, status=status) | {"ids": given}).all()
    found = {row[id_at]: row for row in rows}
    return [found[i] for i in ids if i in found]
