"""Run bookkeeping in `etl_runs`: opened at start, closed at the end, failures and crashes recorded."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime

from sqlalchemy import Engine
from sqlmodel import Session, select

from models.runs import EtlRun

COUNT_FIELDS = ("extracted", "valid", "invalid", "inserted", "updated", "unchanged", "invalidated", "deleted",
                "restored", "raw_inserted", "dlq_inserted", "dlq_opened", "dlq_resolved",
                "delivered_files", "delivered_bytes")


def _now() -> datetime:
    return datetime.now(UTC)


def start_run(engine: Engine, *, run_id: str, flow_name: str) -> None:
    with Session(engine) as session:
        run = session.get(EtlRun, run_id) or EtlRun(id=run_id, flow_name=flow_name, started_at=_now())
        run.status, run.error, run.failed_stage, run.finished_at = "running", None, None, None
        session.add(run)
        session.commit()


def _apply(run: EtlRun, fields: dict) -> None:
    """Plain fields as given; dict/list fields (stage_seconds, delivered, files, ...) stored as JSON."""
    for key, value in fields.items():
        setattr(run, key, json.dumps(value) if isinstance(value, (dict, list)) else value)


def update_run(engine: Engine, *, run_id: str, **fields) -> None:
    with Session(engine) as session:
        run = session.get(EtlRun, run_id)
        if run is None:
            return
        _apply(run, fields)
        session.add(run)
        session.commit()


def finish_run(engine: Engine, *, run_id: str, status: str, error: str | None = None, **fields) -> None:
    with Session(engine) as session:
        run = session.get(EtlRun, run_id)
        if run is None:
            return
        now = _now()
        started = run.started_at if run.started_at.tzinfo else run.started_at.replace(tzinfo=UTC)
        _apply(run, fields | {"status": status, "error": error, "finished_at": now,
                              "duration_seconds": round((now - started).total_seconds(), 3)})
        session.add(run)
        session.commit()


def open_runs(engine: Engine, *, flow_name: str, exclude: str) -> list[str]:
    with Session(engine) as session:
        rows = session.exec(
            select(EtlRun.id).where(EtlRun.flow_name == flow_name, EtlRun.status == "running", EtlRun.id != exclude)
        ).all()
    return list(rows)


def mark_crashed(engine: Engine, run_ids: Iterable[str], *, noticed_by: str) -> None:
    for run_id in run_ids:
        finish_run(engine, run_id=run_id, status="crashed",
                   error=f"the run ended without reporting back (crashed); noticed at the start of run {noticed_by}")
