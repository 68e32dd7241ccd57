"""GET /dlq: the records that failed validation, with every rule they failed; open ones unless asked. POST
/dlq/replay: a run of the dlq-replay deployment, which judges the open ones again with today's rules and
reference data (flows/dlq_replay.py), filtered as GET /dlq filters them."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from fastapi import APIRouter, Body, Query, Request
from sqlmodel import Field, SQLModel

from api import crud
from api.deps import ApiKeyDep, SessionDep, page_meta
from api.errors import ErrorBody
from api.routes.runs import KEY_RESPONSES, start_deployment_run
from models.dlq import dlq_filters
from models.rules import dlq_reasons
from models.runs import EtlRunStarted
from models.users import DlqListPublic, DlqUser, PageMeta

router = APIRouter(tags=["dlq"], responses={503: {"description": "the database is unavailable"}})

# members from the rules' names, which mypy cannot enumerate
DlqReason = StrEnum("DlqReason", {name: name for name in dlq_reasons()})  # type: ignore[misc]
REPLAY_DEPLOYMENT = "dlq-replay/on-demand"  # prefect.yaml's
RUN_ID_PATTERN = r"^[^\x00]*$"


@router.get("/dlq", response_model=DlqListPublic, summary="Dead-lettered records, newest first")
def list_dlq(
    request: Request,
    session: SessionDep,
    page: Annotated[int, Query(ge=1, le=2**31 - 1)] = 1,
    page_size: Annotated[int, Query(ge=1, le=500)] = 20,
    status: Annotated[
        Literal["open", "resolved", "all"],
        Query(
            description="open (default): records still rejected; resolved: closed since (the user arrived valid, "
            "with other content, or is gone from the source); all"
        ),
    ] = "open",
    run_id: Annotated[
        str | None,
        Query(max_length=64, pattern=RUN_ID_PATTERN, description="the first or the last run that rejected the record"),
    ] = None,
    user_id: Annotated[int | None, Query(ge=-(2**63), le=2**63 - 1, description="the record's user id")] = None,
    reason: Annotated[DlqReason | None, Query(description="a rule name, e.g. email_invalid")] = None,
) -> DlqListPublic:
    reason_name = reason.value if reason is not None else None
    where = dlq_filters(status=status, run_id=run_id, user_id=user_id, reason=reason_name)
    given = {k: v for k, v in {"run_id": run_id, "user_id": user_id, "reason": reason_name}.items() if v is not None}
    filters = given | ({"status": status} if status != "open" else {})  # as meta shows them
    total = crud.count_rows(session=session, model=DlqUser, where=where)
    offset = crud.page_offset(page=page, page_size=page_size)
    rows = [] if offset is None else crud.fetch_dlq(session=session, where=where, limit=page_size + 1, offset=offset)
    return DlqListPublic(
        data=[crud.dlq_public(row=r) for r in rows[:page_size]],
        total=total,
        page=page,
        page_size=page_size,
        has_more=len(rows) > page_size,
        meta=PageMeta.model_validate(page_meta(request, filters)),
    )


class DlqReplayCreate(SQLModel):
    """Which open records a replay judges again (anything left out: every open record)."""

    model_config = {"extra": "forbid"}
    reason: DlqReason | None = Field(default=None, description="only records that failed this rule")
    run_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        schema_extra={"pattern": RUN_ID_PATTERN},
        description="only records that this run rejected first or last",
    )


@router.post(
    "/dlq/replay",
    status_code=202,
    response_model=EtlRunStarted,
    dependencies=[ApiKeyDep],
    summary=f"Judge the open records again: a run of {REPLAY_DEPLOYMENT} (needs X-API-Key)",
    responses={
        400: {"description": "the body could not be read as JSON"},
        **KEY_RESPONSES,
        422: {"description": "an unknown `reason` (not a rule name), a malformed `run_id` or another field"},
        503: {"model": ErrorBody, "description": "Prefect unreachable, or the deployment missing"},
    },
)
async def replay_dlq(body: Annotated[DlqReplayCreate | None, Body()] = None) -> EtlRunStarted:
    """The run re-validates the open records (those of `reason` and `run_id` when given) with today's rules and
    DEPARTMENTS_CSV: records valid now become users and their entries resolve as `replayed`; the others stay
    open with today's reasons. A second replay changes nothing."""
    return await start_deployment_run(
        REPLAY_DEPLOYMENT, body.model_dump(mode="json", exclude_none=True) if body else {}
    )
