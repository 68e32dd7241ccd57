"""Queries behind the routes other than the users hot path (api/crud_users.py): small keyword-only helpers,
all parameterised (SQLite and PostgreSQL alike)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, overload

import orjson
from sqlalchemy import ColumnElement, Float, String, Subquery, cast, func, literal, null, or_, select, union_all
from sqlmodel import Session, col
from sqlmodel import select as sm_select

from models.db import table_of
from models.runs import CheckpointPublic, EtlCheckpoint, EtlRun, EtlRunPublic, RunBrief
from models.users import CURRENT, DlqPublic, DlqUser, ProcessedUser, RawUser

USERS = table_of(ProcessedUser)
FAILED_STATUSES = ("failed", "crashed")
MAX_OFFSET = 2**31 - 1  # PostgreSQL binds LIMIT/OFFSET as INTEGER: a page past this is past any table's end


@overload
def as_utc(value: datetime) -> datetime: ...
@overload
def as_utc(value: datetime | None) -> datetime | None: ...
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


# ---------------------------------------------------------------- DLQ


def count_rows(*, session: Session, model: type, where: Sequence[ColumnElement] = ()) -> int:
    return session.exec(sm_select(func.count()).select_from(model).where(*where)).one()


def fetch_dlq(*, session: Session, where: Sequence[ColumnElement], limit: int, offset: int) -> list[DlqUser]:
    """Newest first."""
    stmt = sm_select(DlqUser).where(*where).order_by(col(DlqUser.id).desc()).limit(limit).offset(offset)
    return list(session.exec(stmt).all())


def dlq_public(*, row: DlqUser) -> DlqPublic:
    """The record parsed back into an object, the rule names as a list, open or resolved."""
    try:
        record = orjson.loads(row.data)
    except orjson.JSONDecodeError:
        record = {"unparsed": row.data}
    assert row.id is not None  # a row read from the table has its key
    return DlqPublic(
        id=row.id,
        run_id=row.run_id,
        last_run_id=row.last_run_id,
        source=row.source,
        user_id=row.user_id,
        error_reason=row.error_reason,
        reasons=[r for r in row.error_reason.split("; ") if r],
        data=record if isinstance(record, dict) else {"value": record},
        inserted_at=as_utc(row.inserted_at),
        last_seen_at=as_utc(row.last_seen_at),
        status="open" if row.resolved_at is None else "resolved",
        resolved_at=as_utc(row.resolved_at),
        resolved_run_id=row.resolved_run_id,
        resolution=row.resolution,
    )


# ---------------------------------------------------------------- runs


def run_public(*, run: EtlRun) -> EtlRunPublic:
    """The row with its JSON text columns parsed (anything unparseable reads as empty)."""
    data = run.model_dump(
        exclude={"stage_seconds", "delivered", "files", "dlq_reasons", "sources", "observed_schema", "shards"}
    )
    data.update(started_at=as_utc(run.started_at), finished_at=as_utc(run.finished_at))
    stages = loads(run.stage_seconds, default={})
    files = loads(run.files, default={})
    return EtlRunPublic(
        **data,
        stage_seconds={k: v for k, v in stages.items() if isinstance(v, int | float)},
        delivered=[d for d in loads(run.delivered, default=[]) if isinstance(d, dict)],
        files={k: v for k, v in files.items() if isinstance(v, str)},
        dlq_reasons={k: v for k, v in loads(run.dlq_reasons, default={}).items() if isinstance(v, int)},
        sources={
            k: {n: c for n, c in v.items() if isinstance(c, int)}
            for k, v in loads(run.sources, default={}).items()
            if isinstance(v, dict)
        },
        observed_schema={
            k: {f: t for f, t in v.items() if isinstance(t, str)}
            for k, v in loads(run.observed_schema, default={}).items()
            if isinstance(v, dict)
        },
        shards=[s for s in loads(run.shards, default=[]) if isinstance(s, dict)],
    )


@overload
def run_brief(*, run: EtlRun) -> RunBrief: ...
@overload
def run_brief(*, run: EtlRun | None) -> RunBrief | None: ...
def run_brief(*, run: EtlRun | None) -> RunBrief | None:
    if run is None:
        return None
    return RunBrief(
        id=run.id,
        flow_name=run.flow_name,
        status=run.status,
        started_at=as_utc(run.started_at),
        finished_at=as_utc(run.finished_at),
        duration_seconds=run.duration_seconds,
        failed_stage=run.failed_stage,
        error=run.error,
        extracted=run.extracted,
        inserted=run.inserted,
        updated=run.updated,
        unchanged=run.unchanged,
        invalid=run.invalid,
        anomalies=run.anomalies,
    )


def checkpoints(*, session: Session) -> list[CheckpointPublic]:
    rows = session.exec(sm_select(EtlCheckpoint).order_by(EtlCheckpoint.source)).all()
    return [
        CheckpointPublic(
            **r.model_dump(exclude={"state"})
            | {k: as_utc(getattr(r, k)) for k in ("last_success_at", "last_failure_at", "updated_at")}
        )
        for r in rows
    ]


def fetch_runs(*, session: Session, where: Sequence[ColumnElement], limit: int, offset: int) -> list[EtlRun]:
    """Newest first."""
    stmt = (
        sm_select(EtlRun)
        .where(*where)
        .order_by(col(EtlRun.started_at).desc(), col(EtlRun.id).desc())
        .limit(limit)
        .offset(offset)
    )
    return list(session.exec(stmt).all())


def latest_run(*, session: Session, statuses: tuple[str, ...] | None = None, finished: bool = False) -> EtlRun | None:
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
    return {
        model.__tablename__: count_rows(session=session, model=model)
        for model in (RawUser, ProcessedUser, DlqUser, EtlRun)
    }


def database_ping(*, session: Session) -> None:
    session.connection().execute(select(1)).scalar_one()


# ---------------------------------------------------------------- unified view


def unified_rows() -> Subquery:
    """Current users and feed items as (source, source_id, title, description, category, value, timestamp)."""
    from models.feeds import FeedItem

    items = table_of(FeedItem).c
    users = select(
        USERS.c.source.label("source"),
        cast(USERS.c.id, String).label("source_id"),
        (func.coalesce(USERS.c.first_name, "") + " " + func.coalesce(USERS.c.last_name, "")).label("title"),
        (func.coalesce(USERS.c.company_title, "") + " at " + func.coalesce(USERS.c.company_name, "")).label(
            "description"
        ),
        USERS.c.department.label("category"),
        cast(USERS.c.age, Float).label("value"),
        USERS.c.updated_at.label("timestamp"),
    ).where(USERS.c.status == CURRENT)
    feeds = select(
        literal("feed").label("source"),
        items.item_id,
        items.title,
        items.summary,
        items.feed,
        cast(null(), Float),
        func.coalesce(items.published_at, items.updated_at),
    )
    return union_all(users, feeds).subquery("data")


def unified_page(
    *,
    session: Session,
    limit: int,
    offset: int | None,
    source: str | None = None,
    category: str | None = None,
    search: str | None = None,
) -> tuple[int, list[dict]]:
    """(total, rows) of the unified view, newest first; `search` is plain text in title or description."""
    data = unified_rows()
    where = [data.c.source == source] if source else []
    if category:
        where.append(data.c.category == category)
    if search:
        pattern = like_pattern(text=search.lower())
        where.append(
            or_(
                func.lower(data.c.title).like(pattern, escape="\\"),
                func.lower(data.c.description).like(pattern, escape="\\"),
            )
        )
    conn = session.connection()
    total = conn.execute(select(func.count()).select_from(data).where(*where)).scalar_one()
    if offset is None:
        return total, []
    stmt = (
        select(data)
        .where(*where)
        .order_by(data.c.timestamp.desc().nulls_last(), data.c.source, data.c.source_id)
        .limit(limit)
        .offset(offset)
    )
    return total, [dict(r._mapping) | {"timestamp": as_utc(r.timestamp)} for r in conn.execute(stmt)]
