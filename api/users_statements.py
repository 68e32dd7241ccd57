"""The statements behind the users queries (api/crud_users.py runs them), built once per shape (which filters,
status, sort, order, keyset part, dialect) with bind parameters and reused: building a 36-column select and its
cache key costs more than running it. On SQLite each row is selected as its JSON, written by the database."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from sqlalchemy import (
    BindParameter,
    ColumnElement,
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

from api.crud import like_pattern
from models.db import table_of
from models.users import CURRENT, DELETED, INVALID, ProcessedUser, UserPublic

USERS = table_of(ProcessedUser)
USER_KEYS: tuple[str, ...] = tuple(UserPublic.model_fields)
USER_COLUMNS = tuple(USERS.c[key] for key in USER_KEYS)
SORT_COLUMNS = {"id": USERS.c.id, "age": USERS.c.age, "last_name": USERS.c.last_name, "updated_at": USERS.c.updated_at}
NULLABLE_SORTS = {"last_name"}
SEARCH_COLUMNS = (USERS.c.first_name, USERS.c.last_name, USERS.c.email, USERS.c.username)
NOT_CURRENT = (INVALID, DELETED)
IS_NOT_CURRENT = USERS.c.status.in_([literal(status) for status in NOT_CURRENT])  # a fixed IN (?, ?)
DATETIME_KEYS = ("first_seen_at", "updated_at", "status_changed_at")


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
