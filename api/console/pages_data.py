"""The users (the API's filters, search, sort and cursor paging), a user, the dead-letter queue and a record's
page with every rule it failed."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import orjson
from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field, ValidationError

from api import crud, crud_users
from api.console import views
from api.console.render import error_page, page
from api.deps import InlineSessionDep
from api.routes.users import INT64, UsersQuery, find_users
from models.dlq import dlq_filters
from models.rules import dlq_reasons
from models.users import CURRENT, DlqUser

router = APIRouter(include_in_schema=False)
DLQ_PER_PAGE = 20


def _given(request: Request) -> dict[str, str]:
    """The query string without blank fields: an empty form field is no filter."""
    return {k: v for k, v in request.query_params.items() if v.strip() != ""}


def _problems(exc: ValidationError | RequestValidationError) -> list[str]:
    return [f"{'.'.join(str(p) for p in e['loc'] if p != 'query')}: {e['msg']}" for e in exc.errors()]


def _int64(text: str) -> int | None:
    try:
        value = int(text)
    except ValueError:
        return None
    return value if INT64[0] <= value <= INT64[1] else None


@router.get("/console/users", response_class=HTMLResponse)
async def users_page(request: Request, session: InlineSessionDep) -> HTMLResponse:
    given = _given(request)
    context: dict[str, Any] = {"title": "Users", "nav": "users", "form": given}
    try:
        q = UsersQuery.model_validate(given)
        found = find_users(session=session, q=q)
    except (ValidationError, RequestValidationError) as exc:
        context["problems"] = _problems(exc)
        return page(request, "users.html", context, region="users_table", status=422)
    kept = {k: v for k, v in given.items() if k not in ("cursor", "page")}
    context.update(
        q=q,
        users=orjson.loads(found.page.data),
        total=found.total,
        next_url=f"?{urlencode({**kept, 'cursor': found.next_cursor})}" if found.next_cursor else None,
        first_url=f"?{urlencode(kept)}" if q.cursor or q.page > 1 else None,
    )
    return page(request, "users.html", context, region="users_table")


@router.get("/console/users/{user_id}", response_class=HTMLResponse)
async def user_page(request: Request, session: InlineSessionDep, user_id: str) -> HTMLResponse:
    number = _int64(user_id)
    stored = crud_users.stored_user(session=session, user_id=number) if number is not None else None
    if stored is None:
        return error_page(request, status=404, title="No such user", message=f"There is no stored user {user_id}.")
    user = orjson.loads(stored.body)
    dlq = crud.count_rows(session=session, model=DlqUser, where=dlq_filters(status="all", user_id=number))
    context = {"title": f"User {number}", "nav": "users", "user": user, "status": stored.status, "dlq": dlq}
    context["current"] = stored.status == CURRENT
    return page(request, "user.html", context)


class DlqQuery(BaseModel):
    status: str = Field("open", pattern="^(open|resolved|all)$")
    reason: str | None = Field(None, max_length=100)
    run_id: str | None = Field(None, max_length=64, pattern=r"^[^\x00]*$")
    user_id: int | None = Field(None, ge=INT64[0], le=INT64[1])
    page: int = Field(1, ge=1, le=100_000)

    def check(self) -> None:
        if self.reason is not None and self.reason not in dlq_reasons():
            raise RequestValidationError(
                [{"type": "value_error", "loc": ("reason",), "msg": f"no rule is named {self.reason}"}]
            )


@router.get("/console/dlq", response_class=HTMLResponse)
async def dlq_page(request: Request, session: InlineSessionDep) -> HTMLResponse:
    given = _given(request)
    context: dict[str, Any] = {"title": "Dead-letter queue", "nav": "dlq", "form": given, "reasons": dlq_reasons()}
    context["open_reasons"] = views.scaled(views.open_reasons(session=session))
    try:
        q = DlqQuery.model_validate(given)
        q.check()
    except (ValidationError, RequestValidationError) as exc:
        context["problems"] = _problems(exc)
        return page(request, "dlq.html", context, region="dlq_table", status=422)
    where = dlq_filters(status=q.status, run_id=q.run_id, user_id=q.user_id, reason=q.reason)
    rows = views.dlq_lines(session=session, where=where, limit=DLQ_PER_PAGE + 1, offset=(q.page - 1) * DLQ_PER_PAGE)
    kept = {k: v for k, v in given.items() if k != "page"}
    context.update(
        q=q,
        entries=rows[:DLQ_PER_PAGE],
        total=views.dlq_total(session=session, key=(q.status, q.run_id, q.user_id, q.reason), where=where),
        next_url=f"?{urlencode({**kept, 'page': q.page + 1})}" if len(rows) > DLQ_PER_PAGE else None,
        prev_url=f"?{urlencode({**kept, 'page': q.page - 1})}" if q.page > 1 else None,
    )
    return page(request, "dlq.html", context, region="dlq_table")


@router.get("/console/dlq/{entry_id}", response_class=HTMLResponse)
async def dlq_record_page(request: Request, session: InlineSessionDep, entry_id: str) -> HTMLResponse:
    number = _int64(entry_id)
    row = session.get(DlqUser, number) if number is not None else None
    if row is None:
        return error_page(request, status=404, title="No such entry", message=f"There is no DLQ entry {entry_id}.")
    entry = crud.dlq_public(row=row)
    context = {
        "title": f"DLQ entry {entry.id}",
        "nav": "dlq",
        "entry": entry,
        "rules": views.reasons_of(entry.reasons),
        "record": orjson.dumps(entry.data, option=orjson.OPT_INDENT_2).decode(),
    }
    return page(request, "dlq_record.html", context)
