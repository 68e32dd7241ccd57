"""GET /stats: what is stored, how much is rejected, and how the runs go."""

from __future__ import annotations

from fastapi import APIRouter

from api import crud, crud_users
from api.deps import SessionDep
from models.dlq import dlq_filters
from models.runs import StatsPublic
from models.users import DELETED, INVALID, DlqUser, RawUser

router = APIRouter(tags=["stats"], responses={503: {"description": "the database is unavailable"}})


@router.get("/stats", response_model=StatsPublic, summary="Totals, DLQ rate, runs and durations")
def stats(session: SessionDep) -> StatsPublic:
    """Each source user counted once: current users in processed_users, open DLQ entries in dlq_users."""
    processed = crud_users.count_users(session=session, filters={})
    dlq = crud.count_rows(session=session, model=DlqUser, where=dlq_filters(status="open"))
    not_current = crud_users.users_not_current(session=session)
    by_status = crud.runs_by_status(session=session)
    last_finished = crud.latest_run(session=session, finished=True)
    return StatsPublic(
        processed_users=processed,
        dlq_users=dlq,
        raw_users=crud.count_rows(session=session, model=RawUser),
        dlq_rate=round(dlq / (processed + dlq), 6) if processed + dlq else None,
        by_department=crud_users.department_counts(session=session),
        runs_total=sum(by_status.values()),
        runs_by_status=by_status,
        last_success=crud.run_brief(run=crud.latest_run(session=session, statuses=("completed",))),
        last_failure=crud.run_brief(run=crud.latest_run(session=session, statuses=crud.FAILED_STATUSES)),
        mean_duration_seconds=crud.mean_duration(session=session),
        last_duration_seconds=last_finished.duration_seconds if last_finished else None,
        recent_runs=[crud.run_brief(run=r) for r in crud.fetch_runs(session=session, where=[], limit=10, offset=0)],
        checkpoints=crud.checkpoints(session=session),
        invalid_users=not_current[INVALID],
        deleted_users=not_current[DELETED],
        dlq_users_resolved=crud.count_rows(session=session, model=DlqUser, where=dlq_filters(status="resolved")),
    )
