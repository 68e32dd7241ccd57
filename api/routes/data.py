"""GET /data: every source in one normalised shape, newest first."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from api import crud
from api.deps import SessionDep, page_meta
from models.data import DataItemPublic, DataListPublic
from models.users import PageMeta

router = APIRouter(tags=["data"], responses={503: {"description": "the database is unavailable"}})

TEXT = r"^[^\x00]*$"


@router.get("/data", response_model=DataListPublic, summary="Users and feed items in one shape, newest first")
def list_data(
    request: Request,
    session: SessionDep,
    page: Annotated[int, Query(ge=1, le=2**31 - 1)] = 1,
    page_size: Annotated[int, Query(ge=1, le=500)] = 20,
    source: Annotated[str | None, Query(max_length=64, pattern=TEXT, description="dummyjson, csv or feed")] = None,
    category: Annotated[
        str | None, Query(max_length=2000, pattern=TEXT, description="a department, or a feed URL")
    ] = None,
    search: Annotated[
        str | None, Query(max_length=200, pattern=TEXT, description="case-insensitive text in title or description")
    ] = None,
) -> DataListPublic:
    filters = {k: v for k, v in {"source": source, "category": category, "search": search}.items() if v}
    total, rows = crud.unified_page(
        session=session, limit=page_size + 1, offset=crud.page_offset(page=page, page_size=page_size), **filters
    )
    return DataListPublic(
        data=[DataItemPublic.model_validate(row) for row in rows[:page_size]],
        total=total,
        page=page,
        page_size=page_size,
        has_more=len(rows) > page_size,
        meta=PageMeta.model_validate(page_meta(request, filters)),
    )
