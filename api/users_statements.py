"""The statements behind the users queries (api/crud_users.py runs them), built once per shape (which filters,
status, sort, order, keyset part, dialect, search plan) with bind parameters and reused: building a 36-column
select and its cache key costs more than running it. On SQLite each row is selected as its JSON, written by the
database.

A search is a case-insensitive substring of first name, last name, email or username (`substring_search`,
tested on each row: the "row" plan), served on PostgreSQL by the pg_trgm index of migration 0004; on SQLite the
"fts" plan asks that migration's FTS5 trigram table instead (the same answers: `search_match`) for a search of
at least SEARCH_MIN_CHARS characters."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from sqlalchemy import (
    ARRAY,
    BigInteger,
    BindParameter,
    ColumnElement,
    Integer,
    Select,
    String,
    any_,
    bindparam,
    func,
    literal,
    literal_column,
    or_,
    select,
    table,
    type_coerce,
)
from sqlalchemy import column as sql_column

from api.crud import like_pattern
from models.db import table_of
from models.users import CURRENT, DELETED, INVALID, SEARCH_INDEX, SEARCHED, ProcessedUser, UserPublic

USERS = table_of(ProcessedUser)
USER_KEYS: tuple[str, ...] = tuple(UserPublic.model_fields)
USER_COLUMNS = tuple(USERS.c[key] for key in USER_KEYS)
SORT_COLUMNS = {"id": USERS.c.id, "age": USERS.c.age, "last_name": USERS.c.last_name, "updated_at": USERS.c.updated_at}
NULLABLE_SORTS = {"last_name"}
SEARCH_COLUMNS = tuple(USERS.c[column] for column in SEARCHED)
NOT_CURRENT = (INVALID, DELETED)
IS_NOT_CURRENT = USERS.c.status.in_([literal(status) for status in NOT_CURRENT])  # a fixed IN (?, ?)
DATETIME_KEYS = ("first_seen_at", "updated_at", "status_changed_at")
SEARCH = table(SEARCH_INDEX, sql_column("rowid", Integer))  # SQLite's FTS5 table, one row per user (rowid = id)
SEARCH_MIN_CHARS = 3  # a trigram index finds nothing shorter: a shorter search takes the "row" plan


def search_match() -> ColumnElement:
    """`processed_users_search MATCH '"text"'`: the search, lower()ed as the triggers lower() what they index,
    as one FTS5 phrase (a double quote in it doubled). The tokenizer is case-sensitive, so the phrase's
    trigrams follow each other in a column's lower()ed text exactly where that text holds the lower()ed
    search: where `substring_search` matches."""
    quote: ColumnElement[str] = literal_column("'\"'", String)
    text = func.replace(func.lower(bindparam("search_text", type_=String)), quote, literal_column("'\"\"'"))
    return literal_column(SEARCH_INDEX).op("MATCH")(quote.concat(text).concat(quote))


def from_search(stmt: Select) -> Select:
    """`stmt` over the FTS5 table's matches joined to their users, the matches read first (`+rowid`: the
    table is not searched by id per user) and, sorted by id, in the order FTS5 keeps them."""
    return stmt.select_from(SEARCH.join(USERS, USERS.c.id == literal_column(f"+{SEARCH_INDEX}.rowid")))


def status_clause(status: str, dialect: str) -> ColumnElement:
    """status = :status. Nearly every user is current, so on SQLite that test is written where no index can
    serve it: without statistics SQLite would walk the status index and sort every current user rather than
    seek the sort column's index (PostgreSQL's statistics tell it). The rare statuses are worth the index."""
    common = status == CURRENT and dialect == "sqlite"
    return (USERS.c.status.concat(literal_column("''")) if common else USERS.c.status) == bindparam("status")


def substring_search(dialect: str, *, indexed: bool = True) -> ColumnElement:
    """Any searched column holds the search text, whatever its case. PostgreSQL: ILIKE '%text%' (the `search`
    pattern), which its trigram index serves; where no index is wanted (`indexed` False: rows found by id),
    `strpos(lower(column), lower(text))`, which is what ILIKE does in a UTF-8 database, text lowered once, in
    a quarter of the time. SQLite: `instr(lower(column), lower(text))`, which is what LIKE '%text%' was there
    (LIKE and lower() both fold ASCII letters only, and no index serves either) in a third of the time."""
    if dialect == "postgresql" and indexed:
        pattern: BindParameter[str] = bindparam("search")
        return or_(*(column.ilike(pattern, escape="\\") for column in SEARCH_COLUMNS))
    text = func.lower(bindparam("search_text", type_=String))
    if dialect == "postgresql":
        once = select(text).scalar_subquery()  # (an InitPlan: lowered once, not per row)
        return or_(*(func.strpos(func.lower(column), once) > 0 for column in SEARCH_COLUMNS))
    return or_(*(func.instr(func.lower(column), text) > 0 for column in SEARCH_COLUMNS))


def filter_clauses(keys: tuple[str, ...], status: str, dialect: str, plan: str = "row") -> list[ColumnElement]:
    """The WHERE clauses for the named filters and the status, bound to parameters of the same names. The
    search: tested on each row ("row"), on rows found by id ("by_id"), or the FTS5 match ("fts": the
    statement reads from `from_search`)."""
    c, where = USERS.c, [status_clause(status, dialect)]
    for key in keys:
        if key == "search":
            where.append(search_match() if plan == "fts" else substring_search(dialect, indexed=plan == "row"))
        elif key in ("min_age", "max_age"):
            where.append(c.age >= bindparam(key) if key == "min_age" else c.age <= bindparam(key))
        else:
            where.append(c[key] == bindparam(key))
    return where


def filter_params(*, filters: dict[str, Any], status: str) -> dict[str, Any]:
    """Bind values for `filter_clauses`: the search text becomes an escaped `%text%` pattern (and stays as
    it is for the FTS5 match)."""
    params = {**filters, "status": status}
    if "search" in params:
        params["search_text"] = params["search"]
        params["search"] = like_pattern(text=params["search"])
    return params


def user_order(*, sort: str, order: str, dialect: str, pk: ColumnElement = USERS.c.id) -> list:
    """Sort column then id (`pk`: the id, or the FTS5 rowid that equals it), both in `order`. NULL last names
    come first ascending and last descending on both databases (SQLite's own rule, spelled out for
    PostgreSQL)."""
    column = pk if sort == "id" else SORT_COLUMNS[sort]
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


def _part(*, sort: str, order: str, part: str, dialect: str, pk: ColumnElement) -> tuple[list[ColumnElement], list]:
    """(conditions, order_by) of one keyset part, on the bind parameters `key` and `last_id`."""
    column, asc = SORT_COLUMNS[sort], order == "asc"
    id_after = pk > bindparam("last_id") if asc else pk < bindparam("last_id")
    by_id = [pk.asc() if asc else pk.desc()]
    parts: dict[str, tuple[list[ColumnElement], list]] = {
        "id": ([id_after], by_id),
        "same": ([column == bindparam("key"), id_after], by_id),
        "beyond": (
            [column > bindparam("key") if asc else column < bindparam("key")],
            user_order(sort=sort, order=order, dialect=dialect, pk=pk),
        ),
        "null_same": ([column.is_(None), id_after], by_id),
        "not_null": ([column.is_not(None)], user_order(sort=sort, order=order, dialect=dialect, pk=pk)),
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
    *, keys: tuple[str, ...], status: str, sort: str, order: str, part: str | None, dialect: str, plan: str = "row"
) -> Select:
    """A page of users under the filters `keys`: by OFFSET when `part` is None, else one keyset part. In the
    "fts" plan the ids come from the FTS5 table's rowids (sorted by id, its matches are read in order and
    only until the page is full)."""
    pk = literal_column(f"{SEARCH_INDEX}.rowid") if plan == "fts" else USERS.c.id
    where = filter_clauses(keys, status, dialect, plan)
    order_by = user_order(sort=sort, order=order, dialect=dialect, pk=pk)
    if part is not None:
        conditions, order_by = _part(sort=sort, order=order, part=part, dialect=dialect, pk=pk)
        where += conditions
    stmt = select(*row_columns(sort=sort, dialect=dialect)).where(*where).order_by(*order_by).limit(bindparam("limit"))
    stmt = from_search(stmt) if plan == "fts" else stmt
    return stmt if part is not None else stmt.offset(bindparam("offset"))


@lru_cache(maxsize=256)
def count_statement(*, keys: tuple[str, ...], status: str, dialect: str, plan: str = "row") -> Select:
    """Unfiltered, current users are counted as every user less the few others (off the status index): testing
    each row's status would read every row, where SQLite counts a whole table off its smallest index. So are
    a search's current users in the "fts" plan: its matches, counted in the FTS5 table alone, less the few
    others that match (tested one by one: found by the status index alone, which holds their ids, then read by id;
    SQLite's statistics only say that the index holds few values, and it would rather read the table)."""
    if plan == "fts" and keys == ("search",) and status == CURRENT:
        matches = select(func.count()).select_from(SEARCH).where(search_match()).scalar_subquery()
        not_current = select(USERS.c.id).where(IS_NOT_CURRENT)
        others = select(func.count()).where(USERS.c.id.in_(not_current), substring_search(dialect)).scalar_subquery()
        return select(matches - others)
    if plan == "fts":
        return from_search(select(func.count()).where(*filter_clauses(keys, status, dialect, plan)))
    if keys or status != CURRENT:
        return select(func.count()).select_from(USERS).where(*filter_clauses(keys, status, dialect))
    every = select(func.count()).select_from(USERS).scalar_subquery()
    return select(every - select(func.count()).select_from(USERS).where(IS_NOT_CURRENT).scalar_subquery())


@lru_cache(maxsize=128)
def ids_statement(*, keys: tuple[str, ...], status: str, dialect: str, plan: str) -> Select:
    """The ids of the users under the filters `keys`, at most :limit of them, in no particular order: the
    database reads its cheapest way to all of them (the index's candidates, or the table when they are
    common), where asking for an order could have it walk an index of that order through every user."""
    stmt = select(USERS.c.id).where(*filter_clauses(keys, status, dialect, plan)).limit(bindparam("limit"))
    return from_search(stmt) if plan == "fts" else stmt


def _among(dialect: str) -> ColumnElement:
    """id is among the ids given (:ids, a JSON array on SQLite, an array on PostgreSQL)."""
    if dialect == "sqlite":
        return USERS.c.id.in_(select(func.json_each(bindparam("ids", type_=String)).table_valued("value").c.value))
    return USERS.c.id == any_(bindparam("ids", type_=ARRAY(BigInteger)))


@lru_cache(maxsize=16)
def sorted_ids_statement(*, sort: str, dialect: str) -> Select:
    """The ids given, in the sort's ascending order (then id), as the database orders them."""
    return select(USERS.c.id).where(_among(dialect)).order_by(*user_order(sort=sort, order="asc", dialect=dialect))


@lru_cache(maxsize=128)
def rows_by_id_statement(*, keys: tuple[str, ...], status: str, sort: str, dialect: str) -> Select:
    """The users whose ids are given that are still under the filters, as `row_columns` selects them, in no
    particular order."""
    return select(*row_columns(sort=sort, dialect=dialect)).where(
        _among(dialect), *filter_clauses(keys, status, dialect, "by_id")
    )


VERSION_STATEMENT = select(func.max(USERS.c.updated_at))
NOT_CURRENT_COUNTS = (
    select(USERS.c.status, func.count()).where(IS_NOT_CURRENT).group_by(USERS.c.status).order_by(USERS.c.status)
)
STATE_COLUMNS = (USERS.c.status, USERS.c.status_run_id, USERS.c.status_changed_at)
USER_BY_ID = {
    "sqlite": select(SQLITE_USER_JSON, *STATE_COLUMNS).where(USERS.c.id == bindparam("id")),
    "other": select(*USER_COLUMNS, *STATE_COLUMNS).where(USERS.c.id == bindparam("id")),
}
