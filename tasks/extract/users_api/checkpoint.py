"""Where an API extraction stands, in `etl_checkpoints`: `begin_extract` resumes an interrupted extraction or
starts a new staged file, `CheckpointWriter` stores the position after every page from a thread of its own,
`finish_extract` records the outcome."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson
from sqlalchemy import Engine, update
from sqlmodel import Session, col

from models.runs import EtlCheckpoint
from tasks.extract.users_api.constants import CHECKPOINT_EVERY_SECONDS, CHECKPOINT_KEY
from tasks.extract.users_api.paging import START, Position
from tasks.staging import files


@dataclass(frozen=True)
class ExtractPlan:
    staged_path: str
    position: Position  # where the walk goes on
    offset: int
    records: int
    resumed: bool
    total: int | None = None  # the total the source reported when the resumed walk began


@dataclass(frozen=True)
class Progress:
    """What a checkpoint stores: the walk's `position`, the `total` the source reported when the walk began,
    and the staged file's length in bytes (`offset`) and records; `staged_path`, when given, is synced to disk
    before the position is stored."""

    position: Position
    total: int | None
    offset: int
    records: int
    staged_path: str | None = None


def _now() -> datetime:
    return datetime.now(UTC)


def _state(position: Position) -> str:
    return orjson.dumps({"token": position.token}).decode() if position.token else "{}"


def begin_extract(
    engine: Engine,
    *,
    run_id: str,
    fingerprint: str,
    new_path: str,
    key: str = CHECKPOINT_KEY,
    first: Position = START,
) -> ExtractPlan:
    """Resume an interrupted extraction of the same source (checkpoint `key`), or start a new staged file (a
    location: tasks/staging/files.py) at `first`. The interrupted file may be on another host's disk: only
    one this process can read (a local path here, or the staging store) is resumed."""
    with Session(engine) as session:
        cp = session.get(EtlCheckpoint, key) or EtlCheckpoint(source=key)
        if (
            cp.status in ("in_progress", "failed")
            and cp.fingerprint == fingerprint
            and cp.staged_path
            and _readable(cp.staged_path, cp.staged_bytes)
        ):
            token = orjson.loads(cp.state or "{}").get("token")
            at = Position(cp.cursor, token)
            plan = ExtractPlan(cp.staged_path, at, cp.staged_bytes, cp.staged_records, True, cp.total)
        else:
            plan = ExtractPlan(files.reset(new_path), first, 0, 0, False)
            cp.total = None
        cp.status, cp.run_id, cp.fingerprint = "in_progress", run_id, fingerprint
        cp.cursor, cp.state = plan.position.number, _state(plan.position)
        cp.staged_path, cp.staged_bytes, cp.staged_records = plan.staged_path, plan.offset, plan.records
        cp.updated_at = _now()
        session.add(cp)
        session.commit()
    return plan


def finish_extract(engine: Engine, *, error: str | None = None, key: str = CHECKPOINT_KEY) -> None:
    with Session(engine) as session:
        cp = session.get(EtlCheckpoint, key)
        if cp is None:
            return
        now = _now()
        if error is None:
            cp.status, cp.last_success_at, cp.last_error = "complete", now, None
        else:
            cp.status, cp.last_failure_at, cp.last_error = "failed", now, error[:2000]
        cp.updated_at = now
        session.add(cp)
        session.commit()


def _readable(location: str, length: int) -> bool:
    """The staged file is there and holds at least `length` bytes (a store this process cannot use: no)."""
    try:
        return files.exists(location) and files.file_size(location) >= length
    except (OSError, RuntimeError):  # the staging store moved (StagingError) or is unreachable
        return False


def _advance(engine: Engine, key: str, done: Progress) -> None:
    """One UPDATE statement: it may run after every page, and a Session's load and flush cost twice its CPU."""
    if done.staged_path is not None:  # so that a stored position never points past them after a power loss
        files.sync(done.staged_path)
    with engine.begin() as conn:
        conn.execute(
            update(EtlCheckpoint)
            .where(col(EtlCheckpoint.source) == key)
            .values(
                cursor=done.position.number,
                state=_state(done.position),
                total=done.total,
                staged_bytes=done.offset,
                staged_records=done.records,
                updated_at=_now(),
            )
        )


class CheckpointWriter:
    """Stores extract's position from a thread of its own; the newest position given wins.

    On SQLite, persist's batch transactions hold the database's one write lock most of the time while the
    stages stream, and a fetcher writing its checkpoint inline would wait for it after every batch, which
    starves transform and persist in turn. Stores are at least
    CHECKPOINT_EVERY_SECONDS apart, and each first syncs the staged file (once, however many pages came in
    between). A crash can lose only positions not yet written: the next run resumes from an earlier one,
    which is still consistent (the staged file is cut back to its offset and those pages are fetched again).
    `totals` keeps every total the source reported, in order (repeats dropped), from `total`, the first of a
    resumed walk; positions store the first. Use as a context manager; leaving it stores the last position
    given, `close` too."""

    def __init__(self, engine: Engine, *, total: int | None = None, key: str = CHECKPOINT_KEY) -> None:
        self._engine, self._key = engine, key
        self.totals: list[int] = [] if total is None else [total]
        self._cond = threading.Condition()
        self._pending: Progress | None = None
        self.last: Progress | None = None  # the last progress given, stored or not
        self._closed = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="extract-checkpoint", daemon=True)
        self._thread.start()

    def advance(
        self, *, position: Position, total: int | None, offset: int, records: int, staged_path: str | None = None
    ) -> None:
        """Queue new progress (see `Progress`), `total` as the source reported it with this page (if it does);
        raises if an earlier write failed."""
        with self._cond:
            if self._error is not None:
                raise self._error
            if total is not None and (not self.totals or self.totals[-1] != total):
                self.totals.append(total)
            first = self.totals[0] if self.totals else None
            self._pending = self.last = Progress(position, first, offset, records, staged_path)
            self._cond.notify_all()

    def close(self) -> None:
        """Wait until the last position given is stored, stop the thread; raise what a write raised."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()
        if self._error is not None:
            raise self._error

    def __enter__(self) -> CheckpointWriter:
        return self

    def __exit__(self, exc_type, *_) -> None:
        try:
            self.close()
        except Exception:
            if exc_type is None:  # an error already on its way out is the one to report
                raise

    def _run(self) -> None:
        stored_at = float("-inf")
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending is not None or self._closed)
                if self._pending is None:
                    return
                self._cond.wait_for(
                    lambda: self._closed, timeout=stored_at + CHECKPOINT_EVERY_SECONDS - time.monotonic()
                )
                position, self._pending = self._pending, None
            try:
                _advance(self._engine, self._key, position)
            except Exception as exc:  # noqa: BLE001 (handed to the extracting thread)
                with self._cond:
                    self._error = exc
                return
            stored_at = time.monotonic()
