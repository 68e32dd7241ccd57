"""GET /metrics: Prometheus exposition (the app's own registry plus pipeline gauges read at scrape time)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from api import crud
from api.deps import SessionDep
from api.metrics import pipeline_exposition

router = APIRouter(tags=["metrics"], responses={503: {"description": "the database is unavailable"}})


@router.get(
    "/metrics",
    response_class=Response,
    summary="Prometheus metrics",
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
)
def metrics(request: Request, session: SessionDep) -> Response:
    run = crud.latest_run(session=session)
    finished = crud.latest_run(session=session, finished=True)
    last = None
    if run is not None:
        last = {
            "status": run.status,
            "started_timestamp_seconds": crud.as_utc(run.started_at).timestamp(),
            "duration_seconds": finished.duration_seconds if finished else None,
        }
    body = request.app.state.metrics.exposition() + pipeline_exposition(
        rows=crud.table_counts(session=session), last_run=last
    )
    return Response(body, media_type=CONTENT_TYPE_LATEST)
