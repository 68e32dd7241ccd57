"""Run bookkeeping in `etl_runs`: opened at start, closed at the end, failures and crashes recorded.

A running run's row also says where it runs (`host`, `pid`) and when it was last known alive (`heartbeat_at`,
stamped by a thread of its process every HEARTBEAT_SECONDS): a run whose process died, however it died, is
told apart from one still working without asking Prefect (`why_dead`)."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, update
from sqlmodel import Session, col, select

from models.runs import EtlRun
from tasks.staging.batches import TransformResult

HEARTBEAT_SECONDS = 5.0
# a running run whose heartbeat is older than this has died (a dozen beats: a beat may wait for SQLite's write
# lock, and hosts' clocks may differ by a few seconds)
STALE_AFTER = timedelta(seconds=60)

log = logging.getLogger(__name__)


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@cache
def this_host() -> str:
    """This machine, boot and pid namespace: where a pid names one process (a container has a namespace of
    its own; two machines of the same name, or a reboot, have another boot id)."""
    where = [socket.gethostname()]
    for label, probe in (
        ("boot", lambda: Path("/proc/sys/kernel/random/boot_id").read_text().strip()),
        ("pidns", lambda: str(os.stat("/proc/self/ns/pid").st_ino)),
    ):
        try:
            where.append(f"{label}={probe()}")
        except OSError:  # not Linux: the host name alone
            pass
    return " ".join(where)[:255]


def start_run(engine: Engine, *, run_id: str, flow_name: str) -> None:
    with Session(engine) as session:
        run = session.get(EtlRun, run_id) or EtlRun(id=run_id, flow_name=flow_name, started_at=_now())
        run.status, run.error, run.failed_stage, run.finished_at = "running", None, None, None
        run.heartbeat_at, run.pid, run.host = _now(), os.getpid(), this_host()
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


def finish_run(
    engine: Engine,
    *,
    run_id: str,
    status: str,
    error: str | None = None,
    if_running: bool = False,
    ended_at: datetime | None = None,
    **fields,
) -> None:
    """The run's outcome. `if_running`: only if nothing has ended it yet; `ended_at`: when it ended (now)."""
    with Session(engine) as session:
        run = session.get(EtlRun, run_id)
        if run is None or (if_running and run.status != "running"):
            return
        now = ended_at or _now()
        _apply(
            run,
            fields
            | {
                "status": status,
                "error": error,
                "finished_at": now,
                "duration_seconds": round((now - _aware(run.started_at)).total_seconds(), 3),
            },
        )
        session.add(run)
        session.commit()


def beat(engine: Engine, run_id: str) -> None:
    """The run is alive (its row, while it is running)."""
    with engine.begin() as conn:
        conn.execute(
            update(EtlRun).where(col(EtlRun.id) == run_id, col(EtlRun.status) == "running").values(heartbeat_at=_now())
        )


class Heartbeat:
    """A daemon thread that stamps the run's heartbeat every `interval` seconds and calls `also` after each
    beat, until stopped. A beat that fails (the database busy or away) is tried again at the next."""

    def __init__(
        self, engine: Engine, run_id: str, *, interval: float | None = None, also: Callable[[], None] | None = None
    ) -> None:
        self.engine, self.run_id, self.also = engine, run_id, also
        self.interval = interval or HEARTBEAT_SECONDS
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{run_id[:8]}", daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                beat(self.engine, self.run_id)
            except Exception as exc:  # noqa: BLE001 (never the run's failure)
                log.warning(
                    "run %s: heartbeat not stored (%s: %s); next try in %.0f s",
                    self.run_id,
                    type(exc).__name__,
                    exc,
                    self.interval,
                )
            if self.also is not None and not self._stop.is_set():
                self.also()


def open_runs(engine: Engine, *, exclude: str) -> list[EtlRun]:
    """Every run still 'running' in etl_runs but `exclude`."""
    with Session(engine) as session:
        return list(session.exec(select(EtlRun).where(EtlRun.status == "running", EtlRun.id != exclude)).all())


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's process
        return False
    return False


def why_dead(run: EtlRun, *, now: datetime | None = None) -> str | None:
    """Why a 'running' run has died, from its own row: its process gone from this host, or no heartbeat for
    longer than STALE_AFTER; None while it looks alive, or for a row without a heartbeat (written before
    runs had one: Prefect decides)."""
    if run.heartbeat_at is None:
        return None
    if run.pid and run.host == this_host() and _process_gone(run.pid):
        return f"its process (pid {run.pid}) is gone"
    silent = (now or _now()) - _aware(run.heartbeat_at)
    if silent > STALE_AFTER:
        return f"no heartbeat from its process for {silent.total_seconds():.0f} s"
    return None


@dataclass(frozen=True)
class Crash:
    run_id: str
    why: str
    last_seen: datetime | None = None  # its last heartbeat: when it ended, as far as anyone knows


def mark_crashed(engine: Engine, crashes: Iterable[Crash], *, noticed_by: str) -> None:
    """Each run ended as crashed, when it was last seen alive (else now), saying why."""
    for crash in crashes:
        finish_run(
            engine,
            run_id=crash.run_id,
            status="crashed",
            if_running=True,
            ended_at=_aware(crash.last_seen) if crash.last_seen else None,
            error=f"the run ended without reporting back (crashed): {crash.why}; noticed at the start of "
            f"run {noticed_by}",
        )


def record_transform(engine: Engine, *, run_id: str, result: TransformResult, files: dict[str, str]) -> None:
    """What transform found, on the run's row: counts, files, DLQ reasons, schema drift."""
    update_run(
        engine,
        run_id=run_id,
        valid=result.valid,
        invalid=result.invalid,
        files=files,
        dlq_reasons=result.reasons,
        schema_drift="; ".join(result.drift) or None,
        observed_schema=result.observed_schema,
    )


def run_counts(
    *, extracted: int, valid: int, invalid: int, persisted: dict[str, int], delivered: list[dict]
) -> dict[str, Any]:
    """A finished run's counts as etl_runs and the summary hold them."""
    return {
        "extracted": extracted,
        "valid": valid,
        "invalid": invalid,
        **persisted,
        "delivered_files": len(delivered),
        "delivered_bytes": sum(d["bytes"] for d in delivered),
    }
