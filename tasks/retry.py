"""Retry only what another try can fix: one Prefect `retry_condition_fn` shape for every task with retries."""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Callable

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
