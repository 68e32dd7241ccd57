"""GET /users (offset or keyset pagination, filters, search, sort) and GET /users/{user_id}."""

from __future__ import annotations

import base64
import binascii
import hashlib
from datetime import datetime
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, HTTPException, Path, Request, Response
from pydantic import BaseModel, Field

from api import crud
from api.deps import InlineSessionDep, page_meta, query_model, query_parameters
from api.errors import ValidationErrorBody, query_error
from models.users import UserPublic, UsersPublic

router = APIRouter(tags=["users"], responses={503: {"description": "the database is unavailable"}})

NO_NUL = r"^[^\x00]*$"
MAX_PAGE = 2**31 - 1
SortField = Literal["id", "age", "last_name", "updated_at"]
Order = Literal["asc", "desc"]
FilterText = Annotated[str | None, Field(max_length=200, pattern=NO_NUL)]


# ---------------------------------------------------------------- the opaque cursor


def _filters_digest(filters: dict[str, Any]) -> str:
    return hashlib.blake2b(orjson.dumps(filters, option=orjson.OPT_SORT_KEYS), digest_size=6).hexdigest()


def encode_cursor(*, sort: str, order: str, value: Any, last_id: int, filters: dict[str, Any]) -> str:
    if isinstance(value, datetime):
        value = value.isoformat()
    raw = orjson.dumps({"s": sort, "o": order, "k": value, "i": last_id, "f": _filters_digest(filters)})
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _check_value(sort: str, value: Any) -> Any:
    if sort in ("id", "age") and (not isinstance(value, int) or isinstance(value, bool)):
        raise ValueError("bad key")
    if sort == "last_name" and value is not None and not isinstance(value, str):
        raise ValueError("bad key")
    if sort == "updated_at":
        return datetime.fromisoformat(value)  # TypeError / ValueError when not an ISO timestamp
    return value


def decode_cursor(cursor: str, *, sort: str, order: str, filters: dict[str, Any]) -> tuple[Any, int]:
    """(sort value, id) of the last row already seen; 422 naming `cursor` when it is not one of ours or
    was issued for another sort, order or filter set."""
    try:
        data = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(data, dict) or not isinstance(data.get("i"), int) or isinstance(data["i"], bool):
            raise ValueError("bad cursor")
        value = _check_value(data.get("s"), data.get("k"))
    except (binascii.Error, ValueError, TypeError):
        raise query_error("cursor", "not a valid cursor: pass back a next_cursor exactly as returned") from None
    if (data.get("s"), data.get("o")) != (sort, order) or data.get("f") != _filters_digest(filters):
        raise query_error("cursor", f"this cursor was issued for sort={data.get('s')} order={data.get('o')} and "
                                    "other filters: repeat the same sort, order and filters with it")
    return value, data["i"]


# ---------------------------------------------------------------- routes


class UsersQuery(BaseModel):
    """The query parameters of GET /users, validated in one pass by `query_model`."""

    page: int = Field(1, ge=1, le=MAX_PAGE, description="1-based page (offset pagination)")
    page_size: int = Field(20, ge=1, le=500)
    cursor: str | None = Field(None, max_length=1000, pattern=r"^[A-Za-z0-9_-]*$",
                               description="next_cursor of a previous page (keyset pagination, fast at any depth; "
                                           "repeat the same filters, sort and order); `page` is ignored with it")
    department: FilterText = None
    department_code: FilterText = None
    gender: FilterText = None
    min_age: int | None = Field(None, ge=0, le=1000)
    max_age: int | None = Field(None, ge=0, le=1000)
    source: FilterText = None
    search: FilterText = Field(None, description="case-insensitive text in first/last name, email or username")
    sort: SortField = "id"
    order: Order = "asc"

    def filters(self) -> dict[str, str | int]:
        """The filters given; blank text (`?department=` from a cleared form field) is no filter."""
        given = self.model_dump(include={"department", "department_code", "gender", "min_age", "max_age", "source",
                                         "search"}, exclude_none=True)
        stripped = {k: v.strip() if isinstance(v, str) else v for k, v in given.items()}
        return {k: v for k, v in stripped.items() if v != ""}


@router.get("/users", response_model=UsersPublic, summary="Processed users, filtered, searched, sorted, paginated",
            openapi_extra={"parameters": query_parameters(UsersQuery)},
            responses={422: {"model": ValidationErrorBody, "description": "a parameter is invalid (named in loc)"}})
async def list_users(request: Request, session: InlineSessionDep,
                     q: Annotated[UsersQuery, Depends(query_model(UsersQuery))]) -> Response:
    filters = q.filters()
    after = decode_cursor(q.cursor, sort=q.sort, order=q.order, filters=filters) if q.cursor else None
    total = crud.count_users(session=session, filters=filters)
    offset = 0 if after is not None else crud.page_offset(page=q.page, page_size=q.page_size)
    page = crud.UsersPage(b"[]", False, None) if offset is None else crud.users_page(
        session=session, filters=filters, sort=q.sort, order=q.order, page_size=q.page_size, offset=offset, after=after)
    next_cursor = None
    if page.has_more:
        value, last_id = page.last
        next_cursor = encode_cursor(sort=q.sort, order=q.order, value=value, last_id=last_id, filters=filters)
    payload = {"data": orjson.Fragment(page.data), "total": total, "page": None if after is not None else q.page,
               "page_size": q.page_size, "has_more": page.has_more, "next_cursor": next_cursor,
               "meta": page_meta(request, filters)}
    # users are written straight to JSON in UsersPublic's shape (the schema tests hold them to it): no per-row
    # models on the hot path
    return Response(orjson.dumps(payload), media_type="application/json")


@router.get("/users/{user_id}", response_model=UserPublic, responses={404: {"description": "no such user"}})
async def read_user(session: InlineSessionDep, user_id: Annotated[int, Path(ge=-(2**63), le=2**63 - 1)]) -> Response:
    body = crud.user_json(session=session, user_id=user_id)
    if body is None:
        raise HTTPException(404, f"user {user_id} not found")
    return Response(body, media_type="application/json")
