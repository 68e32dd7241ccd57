"""GET /etl_runs, GET /etl_runs/{run_id}, and POST /etl_runs (start `users-etl/daily` through Prefect)."""

from __future__ import annotations

import logging
from typing import Annotated

import anyio
import httpx
from fastapi import APIRouter, Body, HTTPException, Path, Query, status

from api import crud
from api.deps import ApiKeyDep, SessionDep
from api.errors import ErrorBody
from models.runs import EtlRun, EtlRunCreate, EtlRunPublic, EtlRunsPublic, EtlRunStarted
from models.settings import get_settings

router = APIRouter(tags=["runs"], responses={503: {"description": "the database is unavailable"}})
log = logging.getLogger("api")

DEPLOYMENT = "users-etl/daily"
PREFECT_TIMEOUT_SECONDS = 15
RunStatus = Annotated[
    str | None, Query(max_length=16, pattern=r"^[a-z_]*$", description="running, completed, failed or crashed")
]


@router.get("/etl_runs", response_model=EtlRunsPublic, summary="Pipeline runs, newest first")
def list_runs(
    session: SessionDep,
    page: Annotated[int, Query(ge=1, le=2**31 - 1)] = 1,
    page_size: Annotated[int, Query(ge=1, le=500)] = 20,
    status_: Annotated[RunStatus, Query(alias="status")] = None,
) -> EtlRunsPublic:
    where = [EtlRun.status == status_] if status_ else []
    total = crud.count_rows(session=session, model=EtlRun, where=where)
    offset = crud.page_offset(page=page, page_size=page_size)
    runs = [] if offset is None else crud.fetch_runs(session=session, where=where, limit=page_size + 1, offset=offset)
    return EtlRunsPublic(
        data=[crud.run_public(run=r) for r in runs[:page_size]],
        total=total,
        page=page,
        page_size=page_size,
        has_more=len(runs) > page_size,
    )


@router.get("/etl_runs/{run_id}", response_model=EtlRunPublic, responses={404: {"description": "no such run"}})
def read_run(session: SessionDep, run_id: Annotated[str, Path(max_length=64, pattern=r"^[^\x00/]+$")]) -> EtlRunPublic:
    run = session.get(EtlRun, run_id)
    if run is None:
        raise HTTPException(404, f"run {run_id} not found")
    return crud.run_public(run=run)


def _prefect_api_url() -> str | None:
    from prefect.settings import get_current_settings

    return get_current_settings().api.url


def _ui_link(api_url: str, flow_run_id: str) -> str:
    base = get_settings().prefect_ui_url or api_url.rstrip("/").removesuffix("/api")
    return f"{base.rstrip('/')}/runs/flow-run/{flow_run_id}"


async def _create_flow_run(parameters: dict):
    """A flow run of the deployment, created through Prefect's API (a worker picks it up)."""
    from prefect import get_client

    with anyio.fail_after(PREFECT_TIMEOUT_SECONDS):
        async with get_client() as client:
            deployment = await client.read_deployment_by_name(DEPLOYMENT)
            return await client.create_flow_run_from_deployment(deployment.id, parameters=parameters)


def _unavailable(message: str) -> HTTPException:
    return HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, message, headers={"Retry-After": "30"})


@router.post(
    "/etl_runs",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=EtlRunStarted,
    dependencies=[ApiKeyDep],
    summary=f"Start a run of {DEPLOYMENT} (needs X-API-Key)",
    responses={
        400: {"description": "the body could not be read as JSON"},
        401: {"model": ErrorBody, "description": "no X-API-Key header"},
        403: {
            "model": ErrorBody,
            "description": "a wrong X-API-Key; or no API_KEY is set on the server, "
            "which turns starting runs through the API off",
        },
        503: {"model": ErrorBody, "description": "Prefect unreachable, or the deployment missing"},
    },
)
async def start_run(body: Annotated[EtlRunCreate | None, Body()] = None) -> EtlRunStarted:
    from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError

    parameters = body.model_dump(exclude_none=True) if body else {}
    api_url = _prefect_api_url()
    if not api_url:
        raise _unavailable("Prefect is not configured: set PREFECT_API_URL to the Prefect server's API")
    try:
        flow_run = await _create_flow_run(parameters)
    except ObjectNotFound:
        raise _unavailable(f"deployment {DEPLOYMENT} not found on the Prefect server: run `make deploy`") from None
    except PrefectHTTPStatusError as exc:
        log.warning("Prefect refused the run: %s", exc)
        raise _unavailable(f"the Prefect server refused the run ({exc.response.status_code})") from None
    except (TimeoutError, httpx.HTTPError, OSError, RuntimeError) as exc:
        log.warning("Prefect unreachable at %s: %r", api_url, exc)
        raise _unavailable(f"the Prefect server is unreachable ({type(exc).__name__})") from None
    return EtlRunStarted(
        flow_run_id=str(flow_run.id),
        flow_run_name=flow_run.name,
        deployment=DEPLOYMENT,
        state=flow_run.state.name if flow_run.state else None,
        parameters=parameters,
        ui_url=_ui_link(api_url, str(flow_run.id)),
    )
