"""GET /etl_runs, GET /etl_runs/{run_id}, and POST /etl_runs (a run of `users-etl/daily`, over Prefect's REST API)."""

from __future__ import annotations

import base64
import logging
from typing import Annotated

import anyio
import httpx
from fastapi import APIRouter, Body, HTTPException, Path, Query, status
from sqlmodel import col

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
    where = [col(EtlRun.status) == status_] if status_ else []
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


def ui_link(api_url: str, flow_run_id: str) -> str:
    """The flow run's page in the Prefect UI: PREFECT_UI_URL, else the API's address without `/api`."""
    base = get_settings().prefect_ui_url or api_url.rstrip("/").removesuffix("/api")
    return f"{base.rstrip('/')}/runs/flow-run/{flow_run_id}"


def _prefect_headers() -> dict[str, str]:
    """The credentials Prefect's own client would send: a server's basic auth first, else a Cloud API key."""
    settings = get_settings()
    if settings.prefect_api_auth_string:
        token = base64.b64encode(settings.prefect_api_auth_string.get_secret_value().encode()).decode()
        return {"Authorization": f"Basic {token}"}
    if settings.prefect_api_key:
        return {"Authorization": f"Bearer {settings.prefect_api_key.get_secret_value()}"}
    return {}


class DeploymentMissing(Exception):
    pass


async def _create_flow_run(api_url: str, deployment: str, parameters: dict) -> dict:
    """A flow run of the deployment `flow/name` (Scheduled: a worker picks it up), created through Prefect's
    REST API, so that the API process never loads Prefect."""
    flow, name = deployment.split("/")
    with anyio.fail_after(PREFECT_TIMEOUT_SECONDS):
        async with httpx.AsyncClient(base_url=api_url, headers=_prefect_headers()) as client:
            found = await client.get(f"/deployments/name/{flow}/{name}")
            if found.status_code == status.HTTP_404_NOT_FOUND:
                raise DeploymentMissing
            found.raise_for_status()
            created = await client.post(
                f"/deployments/{found.json()['id']}/create_flow_run", json={"parameters": parameters}
            )
            created.raise_for_status()
            return created.json()


# what a route that starts runs answers without a good key (api.deps.ApiKeyDep)
KEY_RESPONSES: dict[int | str, dict] = {
    401: {"model": ErrorBody, "description": "no X-API-Key header"},
    403: {
        "model": ErrorBody,
        "description": "a wrong X-API-Key; or no API_KEY is set on the server, "
        "which turns starting runs through the API off",
    },
}


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
        **KEY_RESPONSES,
        503: {"model": ErrorBody, "description": "Prefect unreachable, or the deployment missing"},
    },
)
async def start_run(body: Annotated[EtlRunCreate | None, Body()] = None) -> EtlRunStarted:
    return await start_deployment_run(DEPLOYMENT, body.model_dump(exclude_none=True) if body else {})


async def start_deployment_run(deployment: str, parameters: dict) -> EtlRunStarted:
    """A Scheduled flow run of the deployment `flow/name`; 503 naming the fix when Prefect cannot take it."""
    api_url = get_settings().prefect_api_url
    if not api_url:
        raise _unavailable("Prefect is not configured: set PREFECT_API_URL to the Prefect server's API")
    try:
        flow_run = await _create_flow_run(api_url, deployment, parameters)
    except DeploymentMissing:
        raise _unavailable(f"deployment {deployment} not found on the Prefect server: run `make deploy`") from None
    except httpx.HTTPStatusError as exc:
        log.warning("Prefect refused the run: %s", exc)
        raise _unavailable(f"the Prefect server refused the run ({exc.response.status_code})") from None
    except (TimeoutError, httpx.HTTPError, OSError) as exc:
        log.warning("Prefect unreachable at %s: %r", api_url, exc)
        raise _unavailable(f"the Prefect server is unreachable ({type(exc).__name__})") from None
    state = flow_run.get("state") or {}
    return EtlRunStarted(
        flow_run_id=str(flow_run["id"]),
        flow_run_name=flow_run.get("name"),
        deployment=deployment,
        state=state.get("name"),
        parameters=parameters,
        ui_url=ui_link(api_url, str(flow_run["id"])),
    )
