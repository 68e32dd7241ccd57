"""Retry only what another try can fix: one Prefect `retry_condition_fn` shape for every task with retries."""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Callable
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from sqlalchemy.exc import DBAPIError, OperationalError


def retry_when(is_transient: Callable[[BaseException], bool]) -> Callable:
    """A `retry_condition_fn` that retries when the failed run's exception passes `is_transient`."""

    def condition(_task, _task_run, state) -> bool:
        try:
            state.result()
        except BaseException as exc:  # noqa: BLE001  (the run's own exception, re-raised by the state)
            return is_transient(exc)
        return False

    return condition


def db_transient(exc: BaseException) -> bool:
    """A lost connection or a locked database, not a row the database refuses; raised through SQLAlchemy or
    straight from the driver (the bulk inserts and COPY use the driver's own cursor)."""
    if isinstance(exc, DBAPIError):
        return isinstance(exc, OperationalError) or exc.connection_invalidated
    if isinstance(exc, sqlite3.OperationalError):
        return True
    psycopg = sys.modules.get("psycopg")  # loaded by any PostgreSQL connection
    return psycopg is not None and isinstance(exc, psycopg.OperationalError)


def db_task(name: str) -> Any:
    """`@task` for a task that writes one transaction: retried (1, 5, 15 s, jittered) only when the database
    failed for a moment, never cached."""
    return task(
        name=name,
        retries=3,
        retry_delay_seconds=[1, 5, 15],
        retry_jitter_factor=0.5,
        retry_condition_fn=retry_when(db_transient),
        cache_policy=NO_CACHE,
    )
