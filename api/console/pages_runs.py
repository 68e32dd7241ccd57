"""The runs (the console's front page), a run's page, starting a run, and health in words."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Query, Request
from fastapi.responses import HTMLResponse
from sqlmodel import col

from api import crud
from api.console import views
from api.console.render import error_page, page
from api.deps import InlineSessionDep, overridable_session, require_api_key
from api.routes.health import verdict
from api.routes.runs import DEPLOYMENT, start_deployment_run
from models.dlq import dlq_filters
from models.runs import EtlRun

router = APIRouter(include_in_schema=False)
RUNS_PER_PAGE = 20


@router.get("/", response_class=HTMLResponse)
async def runs_page(
    request: Request,
    session: InlineSessionDep,
    page_: Annotated[int, Query(alias="page", ge=1, le=100_000)] = 1,
) -> HTMLResponse:
    listed = views.recent_runs(session=session, page=page_, per_page=RUNS_PER_PAGE)
    context = {
        "title": "Runs",
        "nav": "runs",
        "runs": listed.views,
        "page": page_,
        "has_more": listed.has_more,
        "total": listed.total,
        "deployment": DEPLOYMENT,
    }
    return page(request, "runs.html", context, region="runs_table")


@router.get("/console/runs/{run_id}", response_class=HTMLResponse)
async def run_page(request: Request, session: InlineSessionDep, run_id: str) -> HTMLResponse:
    run = session.get(EtlRun, run_id) if len(run_id) <= 64 else None
    if run is None:
        return error_page(request, status=404, title="No such run", message=f"There is no run {run_id}.")
    later = crud.fetch_runs(session=session, where=[col(EtlRun.started_at) > run.started_at], limit=1, offset=0)
    context = {"title": f"Run {run_id}", "nav": "runs", "view": views.run_view(run), "newer": bool(later)}
    return page(request, "run.html", context)


@router.post("/console/runs", response_class=HTMLResponse)
async def start_run(
    request: Request, x_api_key: Annotated[str | None, Header(include_in_schema=False)] = None
) -> HTMLResponse:
    """The start button: the key comes in the X-API-Key header (the console's script sets it from the form
    field and forgets it), never in a cookie or the page."""
    try:
        require_api_key(x_api_key)
        started = await start_deployment_run(DEPLOYMENT, {})
    except HTTPException as exc:
        context = {"error": exc.detail, "status": exc.status_code}
        return page(request, "_start_result.html", context, status=exc.status_code)
    return page(request, "_start_result.html", {"started": started}, status=202)


@router.get("/console/health", response_class=HTMLResponse)
async def health_page(request: Request) -> HTMLResponse:
    """No session dependency: a database that cannot be reached is this page's answer, not its error."""
    answer = verdict(request)
    context = {"title": "Health", "nav": "health", "health": answer}
    if answer.database == "ok":
        with overridable_session(request) as session:
            context["open_dlq"] = views.dlq_total(session=session, key="open", where=dlq_filters())
            context["last_success"] = crud.latest_run(session=session, statuses=("completed",))
    return page(request, "health.html", context)  # the page works; /health carries the status code
