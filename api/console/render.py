"""Rendering a console page: the whole page, or only its region when the console's script asks (X-Partial),
with the security headers every page carries."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from starlette.templating import Jinja2Templates

HERE = Path(__file__).resolve().parent
PARTIAL_HEADER = "x-partial"
# pages run our one script and stylesheet only: no inline code, nothing from another origin
CONSOLE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "Vary": "X-Partial",
}


def when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value else "—"


def stamp(text: str | None) -> str:
    """An ISO timestamp as the API writes it (UTC), to the second."""
    return f"{text[:19].replace('T', ' ')} UTC" if text else "—"


def seconds(value: float | None) -> str:
    if value is None:
        return "—"
    if value < 60:
        return f"{value:.1f} s"
    minutes, rest = divmod(round(value), 60)
    return f"{minutes} min {rest:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def number(value: int | float | None) -> str:
    return "—" if value is None else f"{value:,}"


def make_templates() -> Jinja2Templates:
    """Autoescaping on (Starlette's default for Jinja2Templates): every value is text, never markup."""
    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.filters.update(when=when, stamp=stamp, seconds=seconds, number=number)
    return templates


def partial(request: Request) -> bool:
    return PARTIAL_HEADER in request.headers


def page(
    request: Request, template: str, context: dict[str, Any], *, region: str | None = None, status: int = 200
) -> HTMLResponse:
    """`template`, or only its region's template (`_<region>.html`) when the console's script asks for it."""
    templates: Jinja2Templates = request.app.state.console_templates
    name = f"_{region}.html" if region and partial(request) else template
    response = templates.TemplateResponse(request, name, context, status_code=status)
    response.headers.update({**SECURITY_HEADERS, "Content-Security-Policy": CONSOLE_CSP})
    return response


def error_page(request: Request, *, status: int, title: str, message: str) -> HTMLResponse:
    return page(request, "error.html", {"title": title, "message": message}, status=status)
