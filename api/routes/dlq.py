"""GET /dlq: the records that failed validation, with every rule they failed; open ones unless asked."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request

from api import crud
from api.deps import SessionDep, page_meta
from models.rules import dlq_reasons
from models.users import DlqListPublic, DlqUser, PageMeta

router = APIRouter(tags=["dlq"], responses={503: {"description": "the database is unavailable"}})

# members from the rules' names, which mypy cannot enumerate
DlqReason = StrEnum("DlqReason", {name: name for name in dlq_reasons()})  # type: ignore[misc]


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
        Query(max_length=64, pattern=r"^[^\x00]*$", description="the first or the last run that rejected the record"),
    ] = None,
    user_id: Annotated[int | None, Query(ge=-(2**63), le=2**63 - 1, description="the record's user id")] = None,
    reason: Annotated[DlqReason | None, Query(description="a rule name, e.g. email_invalid")] = None,
) -> DlqListPublic:
    reason_name = reason.value if reason is not None else None
    where = crud.dlq_filters(status=status, run_id=run_id, user_id=user_id, reason=reason_name)
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
