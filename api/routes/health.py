"""GET /health: 200 when the database answers and the last run did not fail; 503 with the reason otherwise."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError

from api import crud
from api.deps import overridable_session
from api.errors import describe_database_error
from models.migrate import SchemaOutOfDate
from models.runs import EtlRun, HealthPublic

router = APIRouter(tags=["health"])


def _run_verdict(run: EtlRun | None) -> HealthPublic:
    if run is None:
        return HealthPublic(status="no runs yet", database="ok")
    brief = crud.run_brief(run=run)
    age = round((datetime.now(UTC) - (brief.finished_at or brief.started_at)).total_seconds(), 3)
    if run.status in crud.FAILED_STATUSES:
        stage = f" in stage {run.failed_stage}" if run.failed_stage else ""
        reason = f"last run {run.id} {run.status}{stage}: {(run.error or 'no error recorded')[:500]}"
        return HealthPublic(status="unhealthy", database="ok", reason=reason, last_run=brief, last_run_age_seconds=age)
    return HealthPublic(status="ok", database="ok", last_run=brief, last_run_age_seconds=age)


@router.get(
    "/health",
    response_model=HealthPublic,
    responses={503: {"model": HealthPublic, "description": "database unreachable, or the last run failed"}},
)
def health(request: Request) -> JSONResponse:
    answer = verdict(request)
    return JSONResponse(answer.model_dump(mode="json"), status_code=503 if answer.status == "unhealthy" else 200)


def verdict(request: Request) -> HealthPublic:
    """What /health says: the database reachable and at the code's schema, and the last run's outcome."""
    try:
        with overridable_session(request) as session:  # by hand: a database that cannot be reached is an answer
            crud.database_ping(session=session)
            return _run_verdict(crud.latest_run(session=session))
    except SchemaOutOfDate as exc:
        return HealthPublic(status="unhealthy", database="schema out of date", reason=str(exc))
    except (SQLAlchemyError, OSError) as exc:
        return HealthPublic(
            status="unhealthy", database="unreachable", reason=f"database unreachable: {describe_database_error(exc)}"
        )
