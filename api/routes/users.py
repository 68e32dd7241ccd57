"""GET /users (offset or keyset pagination, filters, search, sort) and GET /users/{user_id}: current users,
unless the caller asks for the invalid or deleted ones."""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, HTTPException, Path, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlmodel import Session

from api import crud, crud_users
from api.deps import InlineSessionDep, page_meta, query_model, query_parameters
from api.errors import UserNotServedBody, ValidationErrorBody, query_error
from models.users import CURRENT, DELETED, INVALID, UserPublic, UsersPublic

router = APIRouter(tags=["users"], responses={503: {"description": "the database is unavailable"}})

NO_NUL = r"^[^\x00]*$"
MAX_PAGE = 2**31 - 1
INT64 = (-(2**63), 2**63 - 1)  # ids are BIGINT: beyond these no value can be stored, or bound
SortField = Literal["id", "age", "last_name", "updated_at"]
UserStatus = Literal["current", "invalid", "deleted"]
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


def _int64(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not INT64[0] <= value <= INT64[1]:
        raise ValueError("bad integer")
    return value


def _check_value(sort: object, value: Any) -> Any:
    if sort in ("id", "age"):
        return _int64(value)
    if sort == "last_name" and value is not None and (not isinstance(value, str) or "\x00" in value):
        raise ValueError("bad key")
    if sort == "updated_at":
        return datetime.fromisoformat(value)  # TypeError / ValueError when not an ISO timestamp
    return value


def decode_cursor(cursor: str, *, sort: str, order: str, filters: dict[str, Any]) -> tuple[Any, int]:
    """(sort value, id) of the last row already seen; 422 naming `cursor` when it is not one of ours (its
    integers beyond 64 bits included) or was issued for another sort, order or filter set."""
    try:
        data = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(data, dict):
            raise ValueError("bad cursor")
        value, last_id = _check_value(data.get("s"), data.get("k")), _int64(data.get("i"))
    except (binascii.Error, ValueError, TypeError):
        raise query_error("cursor", "not a valid cursor: pass back a next_cursor exactly as returned") from None
    if (data.get("s"), data.get("o")) != (sort, order) or data.get("f") != _filters_digest(filters):
        raise query_error(
            "cursor",
            f"this cursor was issued for sort={data.get('s')} order={data.get('o')} and "
            "other filters: repeat the same sort, order and filters with it",
        )
    return value, last_id


# ---------------------------------------------------------------- routes


class UsersQuery(BaseModel):
    """The query parameters of GET /users, validated in one pass by `query_model`."""

    page: int = Field(1, ge=1, le=MAX_PAGE, description="1-based page (offset pagination)")
    page_size: int = Field(20, ge=1, le=500)
    cursor: str | None = Field(
        None,
        max_length=1000,
        pattern=r"^[A-Za-z0-9_-]*$",
        description="next_cursor of a previous page (keyset pagination, fast at any depth; "
        "repeat the same filters, sort and order); `page` is ignored with it",
    )
    department: FilterText = None
    department_code: FilterText = None
    gender: FilterText = None
    min_age: int | None = Field(None, ge=0, le=1000)
    max_age: int | None = Field(None, ge=0, le=1000)
    source: FilterText = None
    search: FilterText = Field(None, description="case-insensitive text in first/last name, email or username")
    status: UserStatus = Field(
        CURRENT,
        description="current (default): users as the source has them now; invalid: "
        "the newest record failed validation (the last valid values "
        "shown); deleted: absent from the source",
    )
    sort: SortField = "id"
    order: Order = "asc"

    def filters(self) -> dict[str, str | int]:
        """The filters given; blank text (`?department=` from a cleared form field) is no filter."""
        given = self.model_dump(
            include={"department", "department_code", "gender", "min_age", "max_age", "source", "search"},
            exclude_none=True,
        )
        stripped = {k: v.strip() if isinstance(v, str) else v for k, v in given.items()}
        return {k: v for k, v in stripped.items() if v != ""}

    def shown_filters(self) -> dict[str, str | int]:
        """The filters as `meta.filters_applied` and the cursor see them: the status when not the default."""
        return self.filters() | ({"status": self.status} if self.status != CURRENT else {})


@dataclass(frozen=True)
class FoundUsers:
    total: int
    page: crud_users.UsersPage
    next_cursor: str | None


def find_users(*, session: Session, q: UsersQuery) -> FoundUsers:
    """The page of users `q` asks for (by offset, or after its cursor), their total, the next page's cursor."""
    filters, shown = q.filters(), q.shown_filters()
    after = decode_cursor(q.cursor, sort=q.sort, order=q.order, filters=shown) if q.cursor else None
    total = crud_users.count_users(session=session, filters=filters, status=q.status)
    offset = 0 if after is not None else crud.page_offset(page=q.page, page_size=q.page_size)
    page = (
        crud_users.UsersPage(b"[]", False, None)
        if offset is None
        else crud_users.users_page(
            session=session,
            filters=filters,
            status=q.status,
            sort=q.sort,
            order=q.order,
            page_size=q.page_size,
            offset=offset,
            after=after,
        )
    )
    next_cursor = None
    if page.has_more and page.last is not None:
        value, last_id = page.last
        next_cursor = encode_cursor(sort=q.sort, order=q.order, value=value, last_id=last_id, filters=shown)
    return FoundUsers(total, page, next_cursor)


@router.get(
    "/users",
    response_model=UsersPublic,
    summary="Current users, filtered, searched, sorted, paginated",
    openapi_extra={"parameters": query_parameters(UsersQuery)},
    responses={422: {"model": ValidationErrorBody, "description": "a parameter is invalid (named in loc)"}},
)
async def list_users(
    request: Request, session: InlineSessionDep, q: Annotated[UsersQuery, Depends(query_model(UsersQuery))]
) -> Response:
    found = find_users(session=session, q=q)
    payload = {
        "data": orjson.Fragment(found.page.data),
        "total": found.total,
        "page": None if q.cursor else q.page,
        "page_size": q.page_size,
        "has_more": found.page.has_more,
        "next_cursor": found.next_cursor,
        "meta": page_meta(request, q.shown_filters()),
    }
    # users are written straight to JSON in UsersPublic's shape (the schema tests hold them to it): no per-row
    # models on the hot path
    return Response(orjson.dumps(payload), media_type="application/json")


def _not_served(user_id: int, user: crud_users.StoredUser) -> JSONResponse:
    """404 for a stored user that is not current: why, since which run, and where to look next."""
    run = user.status_run_id or "unknown"
    why = {
        INVALID: f"its newest record failed validation (run {run}); see GET /dlq?user_id={user_id}",
        DELETED: f"absent from the source since run {run}; see GET /users?status=deleted",
    }
    detail = f"user {user_id} is not current: {why.get(user.status, f'its status is {user.status}')}"
    body = UserNotServedBody(
        detail=detail, status=user.status, status_run_id=user.status_run_id, status_changed_at=user.status_changed_at
    )
    return JSONResponse(body.model_dump(mode="json"), status_code=404)


@router.get(
    "/users/{user_id}",
    response_model=UserPublic,
    summary="One current user",
    responses={
        404: {
            "model": UserNotServedBody,
            "description": "no such user; or a stored user that is not current (`status` says why: invalid or deleted)",
        },
        422: {"model": ValidationErrorBody, "description": "not an integer of 64 bits"},
    },
)
async def read_user(
    session: InlineSessionDep, user_id: Annotated[int, Path(ge=INT64[0], le=INT64[1], description="a 64-bit integer")]
) -> Response:
    user = crud_users.stored_user(session=session, user_id=user_id)
    if user is None:
        raise HTTPException(404, f"user {user_id} not found")
    if user.status != CURRENT:
        return _not_served(user_id, user)
    return Response(user.body, media_type="application/json")
