"""The users queries: the hot path of GET /users and GET /users/{id}, and the user counts of /stats.

Statements are built once per shape and reused, rows never become ORM objects (on SQLite the database writes
each row's JSON itself), and the total is cached per filter set and data version (max(updated_at), which every
insert and update of the pipeline moves, and the number of users per status other than current). Only users of the status asked for are served: `current` unless
the caller names another."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

import orjson
from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Connection,
    Engine,
    Row,
    Select,
    String,
    bindparam,
    func,
    literal,
    literal_column,
    or_,
    select,
    type_coerce,
)
from sqlmodel import Session

from api.crud import as_utc, like_pattern
from models.db import table_of
from models.runs import DepartmentCount
from models.users import CURRENT, DELETED, INVALID, ProcessedUser, UserPublic

USERS = table_of(ProcessedUser)
USER_KEYS: tuple[str, ...] = tuple(UserPublic.model_fields)
USER_COLUMNS = tuple(USERS.c[key] for key in USER_KEYS)
SORT_COLUMNS = {"id": USERS.c.id, "age": USERS.c.age, "last_name": USERS.c.last_name, "updated_at": USERS.c.updated_at}
NULLABLE_SORTS = {"last_name"}
SEARCH_COLUMNS = (USERS.c.first_name, USERS.c.last_name, USERS.c.email, USERS.c.username)
NOT_CURRENT = (INVALID, DELETED)
IS_NOT_CURRENT = USERS.c.status.in_([literal(status) for status in NOT_CURRENT])  # a fixed IN (?, ?)

TOTALS_TTL_SECONDS = 60.0  # a backstop only: the data version already tells when a cached total is stale
TOTALS_MAX = 512
DATETIME_KEYS = ("first_seen_at", "updated_at", "status_changed_at")
JSON_OPTIONS = orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z  # naive datetimes are UTC; "Z" as pydantic writes it
VERSION_CHECK_SECONDS = 1.0
_totals: dict[tuple, tuple[float, int]] = {}
_versions: dict[Engine, tuple[float, Any]] = {}
_totals_lock = threading.Lock()


# Statements are built once per shape (which filters, status, sort, order, keyset part, dialect) with bind
# parameters and reused: building a 36-column select and its cache key costs more than running it.


def status_clause(status: str, dialect: str) -> ColumnElement:
    """status = :status. Nearly every user is current, so on SQLite that test is written where no index can
    serve it: without statistics SQLite would walk the status index and sort every current user rather than
    seek the sort column's index (PostgreSQL's statistics tell it). The rare statuses are worth the index."""
    common = status == CURRENT and dialect == "sqlite"
    return (USERS.c.status.concat(literal_column("''")) if common else USERS.c.status) == bindparam("status")


def filter_clauses(keys: tuple[str, ...], status: str, dialect: str) -> list[ColumnElement]:
    """The WHERE clauses for the named filters and the status, bound to parameters of the same names. Search
    is ILIKE on PostgreSQL; SQLite's LIKE already ignores (ASCII) case, as its lower() would, so it goes
    without."""
    c, where = USERS.c, [status_clause(status, dialect)]
    for key in keys:
        if key == "search":
            pattern: BindParameter[str] = bindparam("search")
            ilike = dialect == "postgresql"
            where.append(
                or_(
                    *(
                        column.ilike(pattern, escape="\\") if ilike else column.like(pattern, escape="\\")
                        for column in SEARCH_COLUMNS
                    )
                )
            )
        elif key in ("min_age", "max_age"):
            where.append(c.age >= bindparam(key) if key == "min_age" else c.age <= bindparam(key))
        else:
            where.append(c[key] == bindparam(key))
    return where


def filter_params(*, filters: dict[str, Any], status: str) -> dict[str, Any]:
    """Bind values for `filter_clauses`: the search text becomes an escaped `%text%` pattern."""
    params = {**filters, "status": status}
    if "search" in params:
        params["search"] = like_pattern(text=params["search"])
    return params


def user_order(*, sort: str, order: str, dialect: str) -> list:
    """Sort column then id, both in `order`. NULL last names come first ascending and last descending on
    both databases (SQLite's own rule, spelled out for PostgreSQL)."""
    column, pk = SORT_COLUMNS[sort], USERS.c.id
    first = column.asc() if order == "asc" else column.desc()
    if sort in NULLABLE_SORTS and dialect == "postgresql":
        first = first.nulls_first() if order == "asc" else first.nulls_last()
    return [first] if sort == "id" else [first, pk.asc() if order == "asc" else pk.desc()]


def keyset_parts(*, sort: str, order: str, value_is_null: bool) -> list[str]:
    """What follows (value, last_id) in the sort order, as disjoint parts in that order. Each part is one
    exact index seek; together they replace `(col, id) > (value, id)`, which SQLite only seeks on `col`."""
    if sort == "id":
        return ["id"]
    if order == "asc":
        return ["null_same", "not_null"] if value_is_null else ["same", "beyond"]
    if value_is_null:
        return ["null_same"]
    return ["same", "beyond", "null"] if sort in NULLABLE_SORTS else ["same", "beyond"]


def _part(*, sort: str, order: str, part: str, dialect: str) -> tuple[list[ColumnElement], list]:
    """(conditions, order_by) of one keyset part, on the bind parameters `key` and `last_id`."""
    column, pk, asc = SORT_COLUMNS[sort], USERS.c.id, order == "asc"
    id_after = pk > bindparam("last_id") if asc else pk < bindparam("last_id")
    by_id = [pk.asc() if asc else pk.desc()]
    parts: dict[str, tuple[list[ColumnElement], list]] = {
        "id": ([id_after], by_id),
        "same": ([column == bindparam("key"), id_after], by_id),
        "beyond": (
            [column > bindparam("key") if asc else column < bindparam("key")],
            user_order(sort=sort, order=order, dialect=dialect),
        ),
        "null_same": ([column.is_(None), id_after], by_id),
        "not_null": ([column.is_not(None)], user_order(sort=sort, order=order, dialect=dialect)),
        "null": ([column.is_(None)], by_id),
    }
    return parts[part]


def _sqlite_user_json() -> ColumnElement:
    """A row as its JSON object, built by SQLite in C (no Python object per column). SQLite holds datetimes
    as 'YYYY-MM-DD HH:MM:SS.ffffff' UTC text: written out as RFC 3339 (a NULL stays null)."""
    pairs: list = []
    for key, column in zip(USER_KEYS, USER_COLUMNS):  # noqa: B905
        value = func.replace(type_coerce(column, String), " ", "T") + "Z" if key in DATETIME_KEYS else column
        pairs += [literal_column(f"'{key}'"), value]
    return func.json_object(*pairs)


SQLITE_USER_JSON = _sqlite_user_json()


def row_columns(*, sort: str, dialect: str) -> list:
    """What a page selects: on SQLite each row's JSON and its keyset key (sort value, id); elsewhere the
    columns in USER_KEYS order."""
    return [SQLITE_USER_JSON, SORT_COLUMNS[sort], USERS.c.id] if dialect == "sqlite" else list(USER_COLUMNS)


@lru_cache(maxsize=512)
def page_statement(
    *, keys: tuple[str, ...], status: str, sort: str, order: str, part: str | None, dialect: str
) -> Select:
    """A page of users under the filters `keys`: by OFFSET when `part` is None, else one keyset part."""
    where = filter_clauses(keys, status, dialect)
    order_by = user_order(sort=sort, order=order, dialect=dialect)
    if part is not None:
        conditions, order_by = _part(sort=sort, order=order, part=part, dialect=dialect)
        where += conditions
    stmt = select(*row_columns(sort=sort, dialect=dialect)).where(*where).order_by(*order_by).limit(bindparam("limit"))
    return stmt if part is not None else stmt.offset(bindparam("offset"))


@lru_cache(maxsize=256)
def count_statement(*, keys: tuple[str, ...], status: str, dialect: str) -> Select:
    """Unfiltered, current users are counted as every user less the few others (off the status index): testing
    each row's status would read every row, where SQLite counts a whole table off its smallest index."""
    if keys or status != CURRENT:
        return select(func.count()).select_from(USERS).where(*filter_clauses(keys, status, dialect))
    every = select(func.count()).select_from(USERS).scalar_subquery()
    return select(every - select(func.count()).select_from(USERS).where(IS_NOT_CURRENT).scalar_subquery())


VERSION_STATEMENT = select(func.max(USERS.c.updated_at))
NOT_CURRENT_COUNTS = (
    select(USERS.c.status, func.count()).where(IS_NOT_CURRENT).group_by(USERS.c.status).order_by(USERS.c.status)
)
STATE_COLUMNS = (USERS.c.status, USERS.c.status_run_id, USERS.c.status_changed_at)
USER_BY_ID = {
    "sqlite": select(SQLITE_USER_JSON, *STATE_COLUMNS).where(USERS.c.id == bindparam("id")),
    "other": select(*USER_COLUMNS, *STATE_COLUMNS).where(USERS.c.id == bindparam("id")),
}


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
    """Rows as `row_columns` says (no ORM objects): by OFFSET, or the keyset parts after `after`."""
    conn, dialect, keys = session.connection(), session.get_bind().dialect.name, tuple(sorted(filters))
    params = filter_params(filters=filters, status=status)
    shape = {"keys": keys, "status": status, "sort": sort, "order": order, "dialect": dialect}
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


def count_users(*, session: Session, filters: dict[str, Any], status: str = CURRENT) -> int:
    """count(*) under the filters and status, cached per filter set for the current data version."""
    conn = session.connection()
    cache_key = (conn.engine, status, tuple(sorted(filters.items())), data_version(conn=conn))
    now, hit = time.monotonic(), _totals.get(cache_key)
    if hit is not None and now - hit[0] < TOTALS_TTL_SECONDS:
        return hit[1]
    stmt = count_statement(keys=tuple(sorted(filters)), status=status, dialect=conn.dialect.name)
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
