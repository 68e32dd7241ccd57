"""The users queries: the hot path of GET /users and GET /users/{id}, and the user counts of /stats.

Rows never become ORM objects (on SQLite the database writes each row's JSON itself; the statements are in
api/users_statements.py), and the total is cached per filter set and data version (max(updated_at), which every
insert and update of the pipeline moves, and the number of users per status other than current); so are a
search's matches, when they are few enough to keep (api/users_matches.py): a page of them is read by id. Only
users of the status asked for are served: `current` unless the caller names another."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, Row, func, select
from sqlmodel import Session

from api.crud import as_utc
from api.users_matches import Matches, kept_matches, rows_by_id
from api.users_statements import (
    IS_NOT_CURRENT,
    NOT_CURRENT,
    NOT_CURRENT_COUNTS,
    SEARCH_MIN_CHARS,
    USER_BY_ID,
    USER_KEYS,
    USERS,
    VERSION_STATEMENT,
    count_statement,
    filter_params,
    keyset_parts,
    page_statement,
)
from models.runs import DepartmentCount
from models.users import CURRENT

TOTALS_TTL_SECONDS = 60.0  # a backstop only: the data version already tells when a cached total is stale
TOTALS_MAX = 512
JSON_OPTIONS = orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z  # naive datetimes are UTC; "Z" as pydantic writes it
VERSION_CHECK_SECONDS = 1.0
_totals: dict[tuple, tuple[float, int]] = {}
_versions: dict[Engine, tuple[float, Any]] = {}
_totals_lock = threading.Lock()


def fetch_users(
    *,
    session: Session,
    filters: dict[str, Any],
    status: str,
    sort: str,
    order: str,
    limit: int,
    offset: int = 0,
    after: tuple[Any, int] | None = None,
) -> Sequence[Row]:
    """Rows as `row_columns` says (no ORM objects): by OFFSET, or the keyset parts after `after`. Nothing is
    read when the cached total already says the page is empty (a search that matches nothing, above all); a
    search's page is read by id from its kept matches (api/users_matches.py) when they are few enough."""
    conn, dialect, keys = session.connection(), session.get_bind().dialect.name, tuple(sorted(filters))
    known = cached_total(conn=conn, filters=filters, status=status)
    if known is not None and (known == 0 or (after is None and offset >= known)):
        return []
    matches = search_matches(conn=conn, filters=filters, status=status, sort=sort)
    if matches is not None:
        ids = matches.page(order=order, limit=limit, offset=offset, after_id=None if after is None else after[1])
        if ids is not None:
            at = 2 if dialect == "sqlite" else USER_KEYS.index("id")
            return rows_by_id(conn=conn, ids=ids, filters=filters, status=status, sort=sort, id_at=at)
    plan = search_plan(dialect=dialect, filters=filters, status=status, sort=sort)
    params = filter_params(filters=filters, status=status)
    shape = {"keys": keys, "status": status, "sort": sort, "order": order, "dialect": dialect, "plan": plan}
    if after is None:
        stmt = page_statement(**shape, part=None)
        return conn.execute(stmt, {**params, "limit": limit, "offset": offset}).all()
    rows: list[Row] = []
    for part in keyset_parts(sort=sort, order=order, value_is_null=after[0] is None):
        stmt = page_statement(**shape, part=part)
        rows += conn.execute(stmt, {**params, "key": after[0], "last_id": after[1], "limit": limit - len(rows)}).all()
        if len(rows) >= limit:
            break
    return rows


def search_matches(*, conn: Connection, filters: dict[str, Any], status: str, sort: str) -> Matches | None:
    """A search's matches in `sort`'s order, kept for the data version (None: no search, or too many)."""
    if "search" not in filters:
        return None
    key = (*_totals_key(conn=conn, filters=filters, status=status), sort)
    plan = "fts" if fts_searchable(dialect=conn.dialect.name, filters=filters, status=status) else "row"
    return kept_matches(conn=conn, key=key, filters=filters, status=status, sort=sort, plan=plan)


def fts_searchable(*, dialect: str, filters: dict[str, Any], status: str) -> bool:
    """Whether SQLite's FTS5 table can serve the search: current users (the other statuses are few, read off
    the status index) and a search of at least a trigram."""
    search = filters.get("search")
    return dialect == "sqlite" and status == CURRENT and search is not None and len(search) >= SEARCH_MIN_CHARS


def search_plan(*, dialect: str, filters: dict[str, Any], status: str, sort: str) -> str:
    """ "fts" or "row" for a page of a search read from the table (its matches too many to keep: common) on
    SQLite; PostgreSQL's planner chooses for itself, by its statistics. Sorted by id, FTS5 hands its matches
    over in that order and the page reads them until it is full, never more rows than walking the table
    would; sorted otherwise, walking the sort column's index and testing each row finds a page of a common
    text soon, where every match would be read and sorted."""
    return "fts" if sort == "id" and fts_searchable(dialect=dialect, filters=filters, status=status) else "row"


def data_version(*, conn: Connection) -> Any:
    """max(updated_at) of processed_users (every insert and update of the pipeline moves it) and how many users
    are in each status but current (a change of status moves those), read off their indexes at most once a
    second per database: totals may trail a commit by up to that second."""
    now, hit = time.monotonic(), _versions.get(conn.engine)
    if hit is not None and now - hit[0] < VERSION_CHECK_SECONDS:
        return hit[1]
    version = (conn.execute(VERSION_STATEMENT).scalar(), *map(tuple, conn.execute(NOT_CURRENT_COUNTS).all()))
    _versions[conn.engine] = (now, version)
    return version


def _totals_key(*, conn: Connection, filters: dict[str, Any], status: str) -> tuple:
    return (conn.engine, status, tuple(sorted(filters.items())), data_version(conn=conn))


def cached_total(*, conn: Connection, filters: dict[str, Any], status: str) -> int | None:
    """The total `count_users` cached for the current data version, else None (nothing is counted)."""
    hit = _totals.get(_totals_key(conn=conn, filters=filters, status=status))
    return hit[1] if hit is not None and time.monotonic() - hit[0] < TOTALS_TTL_SECONDS else None


def count_users(*, session: Session, filters: dict[str, Any], status: str = CURRENT) -> int:
    """count(*) under the filters and status, cached per filter set for the current data version."""
    conn = session.connection()
    cache_key = _totals_key(conn=conn, filters=filters, status=status)
    now, hit = time.monotonic(), _totals.get(cache_key)
    if hit is not None and now - hit[0] < TOTALS_TTL_SECONDS:
        return hit[1]
    matches = search_matches(conn=conn, filters=filters, status=status, sort="id")
    if matches is not None:
        total = len(matches)
    else:
        plan = "fts" if fts_searchable(dialect=conn.dialect.name, filters=filters, status=status) else "row"
        stmt = count_statement(keys=tuple(sorted(filters)), status=status, dialect=conn.dialect.name, plan=plan)
        total = conn.execute(stmt, filter_params(filters=filters, status=status)).scalar_one()
    with _totals_lock:
        if len(_totals) >= TOTALS_MAX:
            _totals.clear()
        _totals[cache_key] = (now, total)
    return total


def user_dict(*, row: Sequence[Any]) -> dict[str, Any]:
    return dict(zip(USER_KEYS, row))  # noqa: B905  (rows come from USER_COLUMNS: same length)


@dataclass(frozen=True)
class UsersPage:
    data: bytes  # the page's users as a JSON array, in UserPublic's shape
    has_more: bool
    last: tuple[Any, int] | None  # (sort value, id) of the page's last user: where a next cursor starts


def users_page(
    *,
    session: Session,
    filters: dict[str, Any],
    status: str,
    sort: str,
    order: str,
    page_size: int,
    offset: int = 0,
    after: tuple[Any, int] | None = None,
) -> UsersPage:
    rows = fetch_users(
        session=session,
        filters=filters,
        status=status,
        sort=sort,
        order=order,
        limit=page_size + 1,
        offset=offset,
        after=after,
    )
    has_more, rows = len(rows) > page_size, rows[:page_size]
    if session.get_bind().dialect.name == "sqlite":
        last = (rows[-1][1], rows[-1][2]) if rows else None
        return UsersPage(("[" + ",".join(row[0] for row in rows) + "]").encode(), has_more, last)
    users = [user_dict(row=row) for row in rows]
    return UsersPage(
        orjson.dumps(users, option=JSON_OPTIONS), has_more, (users[-1][sort], users[-1]["id"]) if users else None
    )


@dataclass(frozen=True)
class StoredUser:
    body: bytes  # the user as JSON, in UserPublic's shape
    status: str
    status_run_id: str | None  # the run that set the status
    status_changed_at: datetime | None


def stored_user(*, session: Session, user_id: int) -> StoredUser | None:
    """One stored user, whatever its status, written the way `users_page` writes them; None when absent."""
    dialect = session.get_bind().dialect.name
    stmt = USER_BY_ID["sqlite" if dialect == "sqlite" else "other"]
    row = session.connection().execute(stmt, {"id": user_id}).first()
    if row is None:
        return None
    *user, status, run_id, changed_at = row
    body = user[0].encode() if dialect == "sqlite" else orjson.dumps(user_dict(row=user), option=JSON_OPTIONS)
    return StoredUser(body, status, run_id, as_utc(changed_at))


# ---------------------------------------------------------------- counts for /stats


def users_not_current(*, session: Session) -> dict[str, int]:
    """Stored users per status other than current (few: counted off the status index)."""
    return {status: 0 for status in NOT_CURRENT} | dict(session.connection().execute(NOT_CURRENT_COUNTS).all())


def department_counts(*, session: Session) -> list[DepartmentCount]:
    """Current users per department: every user counted off the department index, less those not current
    (few, found off the status index); each department's code looked up once (grouping by both columns, or
    testing every row's status, would read every row of the table)."""
    c, other = USERS.c, USERS.alias("code_of")
    counts = select(c.department, func.count().label("users")).group_by(c.department).subquery()
    code = select(other.c.department_code).where(other.c.department == counts.c.department).limit(1)
    stmt = select(counts.c.department, code.scalar_subquery(), counts.c.users)
    gone = select(c.department, func.count()).where(IS_NOT_CURRENT).group_by(c.department)
    conn = session.connection()
    less: dict[str, int] = dict(conn.execute(gone).all())
    rows = [(d, code, n - less.get(d, 0)) for d, code, n in conn.execute(stmt).all()]
    return [
        DepartmentCount(department=d, department_code=code or "", users=n)
        for d, code, n in sorted(rows, key=lambda r: (-r[2], r[0]))
        if n > 0
    ]
