"""What the pages show, computed from the API's own queries: a run's stage bars and flags, the DLQ's open
reasons with their counts, a rule's meaning."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from sqlalchemy import func, select
from sqlmodel import Session, col

from api import crud
from api.routes.runs import ui_link
from models.dlq import dlq_filters
from models.rules import message
from models.runs import EtlRun, EtlRunPublic
from models.settings import get_settings
from models.users import DlqUser

STAGES = ("extract", "transform", "persist", "deliver")
# the DLQ's aggregates (per-rule counts, filtered totals) scan the open entries: they are kept per data version
# (the newest entry, the newest resolution) for a few seconds, so a reopened or re-reasoned entry shows late
DLQ_CACHE_SECONDS = 5.0
CACHE_MAX = 256
# a page of runs is read again at most once a second: the list refreshes itself every few seconds, and a
# console left open by many people (or a script polling it) costs one query a second, not one per request
RUNS_CACHE_SECONDS = 1.0
T = TypeVar("T")
_dlq_cache: dict[Hashable, tuple[float, object]] = {}
_cache_lock = threading.Lock()
SEPARATOR = "; "


@dataclass(frozen=True)
class Bar:
    """One stage's share of a bar drawn on a 0-100 axis."""

    name: str
    seconds: float
    x: float
    width: float


@dataclass(frozen=True)
class RunView:
    run: EtlRunPublic
    bars: list[Bar]  # the stages side by side, each its share of the stages' total
    timeline: list[Bar]  # each stage from 0, against the run's duration (stages overlap)
    anomalies: list[str]
    drift: list[str]
    prefect_url: str | None
    reasons: list[tuple[str, int, float]]  # reason, records, bar width on a 0-100 axis


def _split(text: str | None) -> list[str]:
    return [part for part in (text or "").split(SEPARATOR) if part]


def stage_bars(stage_seconds: dict[str, float]) -> list[Bar]:
    known = [(name, stage_seconds[name]) for name in STAGES if stage_seconds.get(name)]
    total, x, bars = sum(s for _, s in known), 0.0, []
    for name, s in known:
        width = 100 * s / total
        bars.append(Bar(name, s, round(x, 3), round(width, 3)))
        x += width
    return bars


def timeline(stage_seconds: dict[str, float], duration: float | None) -> list[Bar]:
    known = [(name, stage_seconds.get(name, 0.0)) for name in STAGES if name in stage_seconds]
    longest = max([duration or 0.0, *(s for _, s in known)]) or 1.0
    return [Bar(name, s, 0.0, round(100 * s / longest, 3)) for name, s in known]


def scaled(counts: list[tuple[str, int]]) -> list[tuple[str, int, float]]:
    top = max((n for _, n in counts), default=0) or 1
    return [(name, n, round(100 * n / top, 3)) for name, n in counts]


def prefect_url(run_id: str) -> str | None:
    settings = get_settings()
    base = settings.prefect_api_url or settings.prefect_ui_url
    return ui_link(base, run_id) if base else None


def run_view(run: EtlRun) -> RunView:
    public = crud.run_public(run=run)
    reasons = sorted(public.dlq_reasons.items(), key=lambda kv: (-kv[1], kv[0]))
    return RunView(
        run=public,
        bars=stage_bars(public.stage_seconds),
        timeline=timeline(public.stage_seconds, public.duration_seconds),
        anomalies=_split(public.anomalies),
        drift=_split(public.schema_drift),
        prefect_url=prefect_url(public.id),
        reasons=scaled(reasons),
    )


def remembered(cache: dict, key: Hashable, seconds: float, compute: Callable[[], T]) -> T:
    """`compute()`, reused for `seconds` under `key` (the cache emptied when it holds CACHE_MAX entries)."""
    now, hit = time.monotonic(), cache.get(key)
    if hit is not None and now - hit[0] < seconds:
        return hit[1]
    value = compute()
    with _cache_lock:
        if len(cache) >= CACHE_MAX:
            cache.clear()
        cache[key] = (now, value)
    return value


def dlq_cached(*, session: Session, key: Hashable, compute: Callable[[], T]) -> T:
    """`compute()`, reused while the DLQ's version is unchanged and for at most DLQ_CACHE_SECONDS."""
    conn = session.connection()
    # two scalar subqueries: each max() is then one index lookup (one statement of two aggregates scans)
    newest = select(func.max(col(DlqUser.id))).scalar_subquery()
    resolved = select(func.max(col(DlqUser.resolved_at))).scalar_subquery()
    version = tuple(conn.execute(select(newest, resolved)).one())
    return remembered(_dlq_cache, (conn.engine.url, key, version), DLQ_CACHE_SECONDS, compute)


def dlq_total(*, session: Session, key: Hashable, where: list) -> int:
    return dlq_cached(
        session=session,
        key=("total", key),
        compute=lambda: crud.count_rows(session=session, model=DlqUser, where=where),
    )


@dataclass(frozen=True)
class RecentRuns:
    views: list[RunView]
    has_more: bool
    total: int


_runs_cache: dict[Hashable, tuple[float, RecentRuns]] = {}


def recent_runs(*, session: Session, page: int, per_page: int) -> RecentRuns:
    """The runs of a page of the list, newest first, as they were at most RUNS_CACHE_SECONDS ago."""

    def read() -> RecentRuns:
        runs = crud.fetch_runs(session=session, where=[], limit=per_page + 1, offset=(page - 1) * per_page)
        total = crud.count_rows(session=session, model=EtlRun)
        return RecentRuns([run_view(r) for r in runs[:per_page]], len(runs) > per_page, total)

    key = (session.connection().engine.url, page, per_page)
    return remembered(_runs_cache, key, RUNS_CACHE_SECONDS, read)


def open_reasons(*, session: Session) -> list[tuple[str, int]]:
    return dlq_cached(session=session, key="open reasons", compute=lambda: _open_reasons(session=session))


def _open_reasons(*, session: Session) -> list[tuple[str, int]]:
    """Open DLQ entries per rule, most first: an entry failing two rules counts under both. Grouped by the
    joined reasons in the database (few distinct combinations), split here."""
    stmt = (
        select(col(DlqUser.error_reason), func.count())
        .where(*dlq_filters(status="open"))
        .group_by(col(DlqUser.error_reason))
    )
    counts: Counter[str] = Counter()
    for joined, n in session.connection().execute(stmt).all():
        for reason in _split(joined):
            counts[reason] += n
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


@dataclass(frozen=True)
class DlqLine:
    """An entry as the DLQ list shows it: no record (a list page need not read or parse the records)."""

    id: int | None  # never null for a stored entry (the model's key is optional before an insert)
    user_id: int | None
    reasons: list[str]
    source: str
    last_seen_at: datetime
    status: str
    resolution: str | None


def dlq_lines(*, session: Session, where: list, limit: int, offset: int) -> list[DlqLine]:
    """Newest first, as GET /dlq lists them."""
    c = DlqUser
    stmt = (
        select(
            col(c.id),
            col(c.user_id),
            col(c.error_reason),
            col(c.source),
            col(c.last_seen_at),
            col(c.resolved_at),
            col(c.resolution),
        )
        .where(*where)
        .order_by(col(c.id).desc())
        .limit(limit)
        .offset(offset)
    )
    lines = []
    for entry_id, user_id, reasons, source, last_seen_at, resolved_at, resolution in session.connection().execute(stmt):
        status = "open" if resolved_at is None else "resolved"
        lines.append(DlqLine(entry_id, user_id, _split(reasons), source, crud.as_utc(last_seen_at), status, resolution))
    return lines


@dataclass(frozen=True)
class Reason:
    name: str
    meaning: str


def reasons_of(entry_reasons: list[str]) -> list[Reason]:
    return [Reason(name, message(name)) for name in entry_reasons]
