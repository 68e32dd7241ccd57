"""Which dead-letter entries a filter selects: one definition for GET /dlq, the console and the DLQ replay."""

from __future__ import annotations

from sqlalchemy import ColumnElement, or_
from sqlmodel import col

from models.users import DlqUser


def dlq_filters(
    *, status: str = "open", run_id: str | None = None, reason: str | None = None, user_id: int | None = None
) -> list[ColumnElement]:
    """`status` open (resolved_at null), resolved or all; `run_id` is the first or the last run that rejected
    the record; `reason` is one rule name among the '; '-joined names of error_reason (a whole name)."""
    where: list[ColumnElement] = []
    if status != "all":
        resolved = col(DlqUser.resolved_at)
        where.append(resolved.is_(None) if status == "open" else resolved.is_not(None))
    if run_id is not None:
        where.append(or_(col(DlqUser.run_id) == run_id, col(DlqUser.last_run_id) == run_id))
    if user_id is not None:
        where.append(col(DlqUser.user_id) == user_id)
    if reason is not None:
        escaped = reason.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        padded = "; " + col(DlqUser.error_reason) + "; "
        where.append(padded.like(f"%; {escaped}; %", escape="\\"))
    return where
