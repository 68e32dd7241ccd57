"""Queries behind the routes: small keyword-only helpers, all parameterised (SQLite and PostgreSQL alike).

The users list is the hot path: statements are built once per shape and reused, rows never become ORM objects
(on SQLite the database writes each row's JSON itself), and the total is cached per filter set and data version
(max(updated_at), which every insert and update of the pipeline moves)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import orjson
from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Float,
    Select,
    String,
    bindparam,
    cast,
    func,
    literal,
    literal_column,
    null,
    or_,
    select,
    type_coerce,
    union_all,
)
from sqlmodel import Session, col
from sqlmodel import select as sm_select

from models.runs import CheckpointPublic, DepartmentCount, EtlCheckpoint, EtlRun, EtlRunPublic, RunBrief
from models.users import DlqPublic, DlqUser, ProcessedUser, RawUser, UserPublic

USERS = ProcessedUser.__table__
USER_KEYS: tuple[str, ...] = tuple(UserPublic.model_fields)
USER_COLUMNS = tuple(USERS.c[key] for key in USER_KEYS)
SORT_COLUMNS = {"id": USERS.c.id, "age": USERS.c.age, "last_name": USERS.c.last_name, "updated_at": USERS.c.updated_at}
NULLABLE_SORTS = {"last_name"}
SEARCH_COLUMNS = (USERS.c.first_name, USERS.c.last_name, USERS.c.email, USERS.c.username)
FAILED_STATUSES = ("failed", "crashed")

MAX_OFFSET = 2**31 - 1  # PostgreSQL binds LIMIT/OFFSET as INTEGER: a page past this is past any table's end
INT4 = (-(2**31), 2**31 - 1)  # processed_users.id is INTEGER (4 bytes on PostgreSQL)
TOTALS_TTL_SECONDS = 60.0  # a backstop only: the data version already tells when a cached total is stale
TOTALS_MAX = 512
DATETIME_KEYS = ("first_seen_at", "updated_at")
JSON_OPTIONS = orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z  # naive datetimes are UTC; "Z" as pydantic writes it
VERSION_CHECK_SECONDS = 1.0
_totals: dict[tuple, tuple[float, int]] = {}
_versions: dict[Engine, tuple[float, Any]] = {}
_totals_lock = threading.Lock()


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; the pipeline stores UTC."""
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def loads(text: str | None, *, default: Any) -> Any:
    """A JSON text column, parsed; `default` when empty, malformed or of another shape."""
    try:
        value = orjson.loads(text) if text else default
    except orjson.JSONDecodeError:
        return default
    return value if isinstance(value, type(default)) else default


def page_offset(*, page: int, page_size: int) -> int | None:
    """OFFSET of a 1-based page; None when it lies past anything a table can hold (the page is empty)."""
    offset = (page - 1) * page_size
    return offset if offset <= MAX_OFFSET else None


def like_pattern(*, text: str) -> str:
    """`%text%` with LIKE's wildcards and the escape character taken literally (ESCAPE '\\')."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


# ---------------------------------------------------------------- users
#
# Statements are built once per shape (which filters, sort, order, keyset part, dialect) with bind parameters
# and reused: building a 34-column select and its cache key costs more than running it.


def filter_clauses(keys: tuple[str, ...], dialect: str) -> list[ColumnElement]:
    """The WHERE clauses for the named filters, bound to parameters of the same names. Search is ILIKE on
    PostgreSQL; SQLite's LIKE already ignores (ASCII) case, as its lower() would, so it goes without."""
    c, where = USERS.c, []
    for key in keys:
        if key == "search":
            pattern, ilike = bindparam("search"), dialect == "postgresql"
            where.append(or_(*(column.ilike(pattern, escape="\\") if ilike else column.like(pattern, escape="\\")
                               for column in SEARCH_COLUMNS)))
        elif key in ("min_age", "max_age"):
            where.append(c.age >= bindparam(key) if key == "min_age" else c.age <= bindparam(key))
        else:
            where.append(c[key] == bindparam(key))
    return where


def filter_params(*, filters: dict[str, Any]) -> dict[str, Any]:
    """Bind values for `filter_clauses`: the search text becomes an escaped `%text%` pattern."""
    params = dict(filters)
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
    return {
        "id": ([id_after], by_id),
        "same": ([column == bindparam("key"), id_after], by_id),
        "beyond": ([column > bindparam("key") if asc else column < bindparam("key")],
                   user_order(sort=sort, order=order, dialect=dialect)),
        "null_same": ([column.is_(None), id_after], by_id),
        "not_null": ([column.is_not(None)], user_order(sort=sort, order=order, dialect=dialect)),
        "null": ([column.is_(None)], by_id),
    }[part]


def _sqlite_user_json() -> ColumnElement:
    """A row as its JSON object, built by SQLite in C (no Python object per column). SQLite holds datetimes
    as 'YYYY-MM-DD HH:MM:SS.ffffff' UTC text: written out as RFC 3339."""
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
def page_statement(*, keys: tuple[str, ...], sort: str, order: str, part: str | None, dialect: str) -> Select:
    """A page of users under the filters `keys`: by OFFSET when `part` is None, else one keyset part."""
    where = filter_clauses(keys, dialect)
    order_by = user_order(sort=sort, order=order, dialect=dialect)
    if part is not None:
        conditions, order_by = _part(sort=sort, order=order, part=part, dialect=dialect)
        where += conditions
    stmt = select(*row_columns(sort=sort, dialect=dialect)).where(*where).order_by(*order_by).limit(bindparam("limit"))
    return stmt if part is not None else stmt.offset(bindparam("offset"))


@lru_cache(maxsize=256)
def count_statement(*, keys: tuple[str, ...], dialect: str) -> Select:
    return select(func.count()).select_from(USERS).where(*filter_clauses(keys, dialect))


VERSION_STATEMENT = select(func.max(USERS.c.updated_at))
USER_BY_ID = {"sqlite": select(SQLITE_USER_JSON).where(USERS.c.id == bindparam("id")),
              "other": select(*USER_COLUMNS).where(USERS.c.id == bindparam("id"))}


def fetch_users(*, session: Session, filters: dict[str, Any], sort: str, order: str, limit: int, offset: int = 0,
                after: tuple[Any, int] | None = None) -> list[tuple]:
    """Rows as `row_columns` says (no ORM objects): by OFFSET, or the keyset parts after `after`."""
    conn, dialect, keys = session.connection(), session.get_bind().dialect.name, tuple(sorted(filters))
    params = filter_params(filters=filters)
    if after is None:
        stmt = page_statement(keys=keys, sort=sort, order=order, part=None, dialect=dialect)
        return conn.execute(stmt, {**params, "limit": limit, "offset": offset}).all()
    rows: list[tuple] = []
    for part in keyset_parts(sort=sort, order=order, value_is_null=after[0] is None):
        stmt = page_statement(keys=keys, sort=sort, order=order, part=part, dialect=dialect)
        rows += conn.execute(stmt, {**params, "key": after[0], "last_id": after[1], "limit": limit - len(rows)}).all()
        if len(rows) >= limit:
            break
    return rows


def data_version(*, conn: Connection) -> Any:
    """max(updated_at) of processed_users (every insert and update of the pipeline moves it), read off its
    index at most once a second per database: totals may trail a commit by up to that second."""
    now, hit = time.monotonic(), _versions.get(conn.engine)
    if hit is not None and now - hit[0] < VERSION_CHECK_SECONDS:
        return hit[1]
    version = conn.execute(VERSION_STATEMENT).scalar()
    _versions[conn.engine] = (now, version)
    return version


def count_users(*, session: Session, filters: dict[str, Any]) -> int:
    """count(*) under the filters, cached per filter set for the current data version."""
    conn = session.connection()
    cache_key, now = (conn.engine, tuple(sorted(filters.items())), data_version(conn=conn)), time.monotonic()
    hit = _totals.get(cache_key)
    if hit is not None and now - hit[0] < TOTALS_TTL_SECONDS:
        return hit[1]
    stmt = count_statement(keys=tuple(sorted(filters)), dialect=conn.dialect.name)
    total = conn.execute(stmt, filter_params(filters=filters)).scalar_one()
    with _totals_lock:
        if len(_totals) >= TOTALS_MAX:
            _totals.clear()
        _totals[cache_key] = (now, total)
    return total


def user_dict(*, row: tuple) -> dict[str, Any]:
    return dict(zip(USER_KEYS, row))  # noqa: B905  (rows come from USER_COLUMNS: same length)


@dataclass(frozen=True)
class UsersPage:
    data: bytes  # the page's users as a JSON array, in UserPublic's shape
    has_more: bool
    last: tuple[Any, int] | None  # (sort value, id) of the page's last user: where a next cursor starts


def users_page(*, session: Session, filters: dict[str, Any], sort: str, order: str, page_size: int,
               offset: int = 0, after: tuple[Any, int] | None = None) -> UsersPage:
    rows = fetch_users(session=session, filters=filters, sort=sort, order=order, limit=page_size + 1, offset=offset,
                       after=after)
    has_more, rows = len(rows) > page_size, rows[:page_size]
    if session.get_bind().dialect.name == "sqlite":
        last = (rows[-1][1], rows[-1][2]) if rows else None
        return UsersPage(("[" + ",".join(row[0] for row in rows) + "]").encode(), has_more, last)
    users = [user_dict(row=row) for row in rows]
    return UsersPage(orjson.dumps(users, option=JSON_OPTIONS), has_more,
                     (users[-1][sort], users[-1]["id"]) if users else None)


def user_json(*, session: Session, user_id: int) -> bytes | None:
    """One user as JSON in UserPublic's shape, written the way `users_page` writes them; None when absent."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql" and not INT4[0] <= user_id <= INT4[1]:
        return None  # cannot be stored there, and binding it would fail
    stmt = USER_BY_ID["sqlite" if dialect == "sqlite" else "other"]
    row = session.connection().execute(stmt, {"id": user_id}).first()
    if row is None:
        return None
    return row[0].encode() if dialect == "sqlite" else orjson.dumps(user_dict(row=row), option=JSON_OPTIONS)


# ---------------------------------------------------------------- DLQ


def dlq_filters(*, run_id: str | None = None, reason: str | None = None) -> list[ColumnElement]:
    """`reason` is one rule name among the '; '-joined names of error_reason (matched as a whole name)."""
    where: list[ColumnElement] = []
    if run_id is not None:
        where.append(col(DlqUser.run_id) == run_id)
    if reason is not None:
        escaped = reason.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        padded = "; " + col(DlqUser.error_reason) + "; "
        where.append(padded.like(f"%; {escaped}; %", escape="\\"))
    return where


def count_rows(*, session: Session, model: type, where: list[ColumnElement] | None = None) -> int:
    return session.exec(sm_select(func.count()).select_from(model).where(*(where or []))).one()


def fetch_dlq(*, session: Session, where: list[ColumnElement], limit: int, offset: int) -> list[DlqUser]:
    """Newest first."""
    stmt = sm_select(DlqUser).where(*where).order_by(col(DlqUser.id).desc()).limit(limit).offset(offset)
    return list(session.exec(stmt).all())


def dlq_public(*, row: DlqUser) -> DlqPublic:
    """The record parsed back into an object, and the rule names as a list."""
    try:
        record = orjson.loads(row.data)
    except orjson.JSONDecodeError:
        record = {"unparsed": row.data}
    return DlqPublic(id=row.id, run_id=row.run_id, source=row.source, error_reason=row.error_reason,
                     reasons=[r for r in row.error_reason.split("; ") if r],
                     data=record if isinstance(record, dict) else {"value": record},
                     inserted_at=as_utc(row.inserted_at), last_seen_at=as_utc(row.last_seen_at))


# ---------------------------------------------------------------- runs


def run_public(*, run: EtlRun) -> EtlRunPublic:
    """The row with its JSON text columns parsed (anything unparseable reads as empty)."""
    data = run.model_dump(exclude={"stage_seconds", "delivered", "files", "dlq_reasons", "sources",
                                    "observed_schema"})
    data.update(started_at=as_utc(run.started_at), finished_at=as_utc(run.finished_at))
    stages = loads(run.stage_seconds, default={})
    files = loads(run.files, default={})
    return EtlRunPublic(
        **data,
        stage_seconds={k: v for k, v in stages.items() if isinstance(v, int | float)},
        delivered=[d for d in loads(run.delivered, default=[]) if isinstance(d, dict)],
        files={k: v for k, v in files.items() if isinstance(v, str)},
        dlq_reasons={k: v for k, v in loads(run.dlq_reasons, default={}).items() if isinstance(v, int)},
        sources={k: {n: c for n, c in v.items() if isinstance(c, int)}
                 for k, v in loads(run.sources, default={}).items() if isinstance(v, dict)},
        observed_schema={k: {f: t for f, t in v.items() if isinstance(t, str)}
                         for k, v in loads(run.observed_schema, default={}).items() if isinstance(v, dict)},
    )


def run_brief(*, run: EtlRun | None) -> RunBrief | None:
    if run is None:
        return None
    return RunBrief(id=run.id, flow_name=run.flow_name, status=run.status, started_at=as_utc(run.started_at),
                    finished_at=as_utc(run.finished_at), duration_seconds=run.duration_seconds,
                    failed_stage=run.failed_stage, error=run.error, extracted=run.extracted, inserted=run.inserted,
                    updated=run.updated, unchanged=run.unchanged, invalid=run.invalid, anomalies=run.anomalies)


def checkpoints(*, session: Session) -> list[CheckpointPublic]:
    rows = session.exec(sm_select(EtlCheckpoint).order_by(EtlCheckpoint.source)).all()
    return [CheckpointPublic(**r.model_dump(exclude={"state"}) | {
        k: as_utc(getattr(r, k)) for k in ("last_success_at", "last_failure_at", "updated_at")}) for r in rows]


def fetch_runs(*, session: Session, where: list[ColumnElement], limit: int, offset: int) -> list[EtlRun]:
    """Newest first."""
    stmt = (sm_select(EtlRun).where(*where).order_by(col(EtlRun.started_at).desc(), col(EtlRun.id).desc())
            .limit(limit).offset(offset))
    return list(session.exec(stmt).all())


def latest_run(*, session: Session, statuses: tuple[str, ...] | None = None,
               finished: bool = False) -> EtlRun | None:
    """The most recently started run (among `statuses`; only finished ones when `finished`)."""
    where = [col(EtlRun.status).in_(statuses)] if statuses else []
    if finished:
        where.append(col(EtlRun.finished_at).is_not(None))
    runs = fetch_runs(session=session, where=where, limit=1, offset=0)
    return runs[0] if runs else None


def runs_by_status(*, session: Session) -> dict[str, int]:
    rows = session.exec(sm_select(EtlRun.status, func.count()).group_by(EtlRun.status)).all()
    return {status: count for status, count in rows}


def mean_duration(*, session: Session) -> float | None:
    stmt = sm_select(func.avg(EtlRun.duration_seconds)).where(EtlRun.status == "completed")
    value = session.exec(stmt).one()
    return round(float(value), 3) if value is not None else None


# ---------------------------------------------------------------- tables


def table_counts(*, session: Session) -> dict[str, int]:
    return {model.__tablename__: count_rows(session=session, model=model)
            for model in (RawUser, ProcessedUser, DlqUser, EtlRun)}


def department_counts(*, session: Session) -> list[DepartmentCount]:
    """Users per department: counted off the department index, each department's code looked up once
    (grouping by both columns would read every row of the table)."""
    c, other = USERS.c, USERS.alias("code_of")
    counts = select(c.department, func.count().label("users")).group_by(c.department).subquery()
    code = select(other.c.department_code).where(other.c.department == counts.c.department).limit(1)
    stmt = (select(counts.c.department, code.scalar_subquery(), counts.c.users)
            .order_by(counts.c.users.desc(), counts.c.department))
    rows = session.connection().execute(stmt).all()
    return [DepartmentCount(department=d, department_code=code or "", users=n) for d, code, n in rows]


def database_ping(*, session: Session) -> None:
    session.connection().execute(select(1)).scalar_one()


# ---------------------------------------------------------------- unified view


def unified_rows() -> Select:
    """Users and feed items as (source, source_id, title, description, category, value, timestamp)."""
    from models.feeds import FeedItem

    items = FeedItem.__table__.c
    users = select(
        USERS.c.source.label("source"),
        cast(USERS.c.id, String).label("source_id"),
        (func.coalesce(USERS.c.first_name, "") + " " + func.coalesce(USERS.c.last_name, "")).label("title"),
        (func.coalesce(USERS.c.company_title, "") + " at " + func.coalesce(USERS.c.company_name, "")).label(
            "description"),
        USERS.c.department.label("category"),
        cast(USERS.c.age, Float).label("value"),
        USERS.c.updated_at.label("timestamp"),
    )
    feeds = select(
        literal("feed").label("source"), items.item_id, items.title, items.summary, items.feed,
        cast(null(), Float), func.coalesce(items.published_at, items.updated_at),
    )
    return union_all(users, feeds).subquery("data")


def unified_page(*, session: Session, limit: int, offset: int | None, source: str | None = None,
                 category: str | None = None, search: str | None = None) -> tuple[int, list[dict]]:
    """(total, rows) of the unified view, newest first; `search` is plain text in title or description."""
    data = unified_rows()
    where = [data.c.source == source] if source else []
    if category:
        where.append(data.c.category == category)
    if search:
        pattern = like_pattern(text=search.lower())
        where.append(or_(func.lower(data.c.title).like(pattern, escape="\\"),
                         func.lower(data.c.description).like(pattern, escape="\\")))
    conn = session.connection()
    total = conn.execute(select(func.count()).select_from(data).where(*where)).scalar_one()
    if offset is None:
        return total, []
    stmt = (select(data).where(*where)
            .order_by(data.c.timestamp.desc().nulls_last(), data.c.source, data.c.source_id)
            .limit(limit).offset(offset))
    return total, [dict(r._mapping) | {"timestamp": as_utc(r.timestamp)} for r in conn.execute(stmt)]
