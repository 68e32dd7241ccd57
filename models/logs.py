"""LOG_FORMAT: text for people at a terminal (the default), json for log collectors (one object a line: time,
level, logger, message and the ids of the line's context). Nothing here runs at import: the entry points apply
it, `python -m api` through uvicorn's log_config, flow processes through flows/logging.yml (Prefect's own
logging configuration, named by PREFECT_LOGGING_SETTINGS_PATH), whose factories below choose text or JSON.
Importing this module loads neither Prefect nor Polars (the API process stays light)."""

from __future__ import annotations

import logging
import os
import sys
from contextvars import ContextVar
from functools import lru_cache
from pathlib import Path
from typing import Any

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.orjson import OrjsonFormatter

# the request an API log line belongs to, set by api.main's RequestContextMiddleware for the request's duration
REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)
ACCESS_LOGGER = "api.access"
# Prefect's logging configuration for flow processes: PREFECT_LOGGING_SETTINGS_PATH names it
FLOWS_LOGGING_FILE = Path(__file__).resolve().parent.parent / "flows" / "logging.yml"
# record attributes that are no context: uvicorn's ANSI-coloured copy of the message, Prefect's switch for its
# API handler, the connection object the websockets client puts on its records
NOT_CONTEXT = ("color_message", "send_to_api", "websocket")


class ContextIds(logging.Filter):
    """Gives every record the ids of its context, as Prefect's run loggers give theirs: the flow run and task
    run from Prefect's run context (when Prefect is loaded: the API never loads it for this), the API request
    from REQUEST_ID. A plain `logging.getLogger(__name__)` inside a task so carries the task run's id."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = sys.modules.get("prefect.context")
        if context is not None:
            task = context.TaskRunContext.get()
            flow = context.FlowRunContext.get()
            if task is not None and not hasattr(record, "task_run_id"):
                record.task_run_id = str(task.task_run.id)
            if not hasattr(record, "flow_run_id"):
                if flow is not None and flow.flow_run is not None:
                    record.flow_run_id = str(flow.flow_run.id)
                elif task is not None and task.task_run.flow_run_id is not None:
                    record.flow_run_id = str(task.task_run.flow_run_id)
        request_id = REQUEST_ID.get()
        if request_id is not None and not hasattr(record, "request_id"):
            record.request_id = request_id
        return True


class JsonLines(OrjsonFormatter):
    """python-json-logger's formatter, its orjson flavour (the cheaper one: the API writes a line per request):
    `time` (UTC, ISO 8601), `level`, `logger`, `message`, then whatever the record carries besides the standard
    attributes (its context ids, a logged exception's `exc_info`)."""

    def __init__(self) -> None:
        super().__init__(
            ["levelname", "name", "message"],
            rename_fields={"levelname": "level", "name": "logger"},
            timestamp="time",
            reserved_attrs=[*RESERVED_ATTRS, *NOT_CONTEXT],
        )

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        return {"time": log_data.pop("time"), **log_data}


@lru_cache(maxsize=1)
def configured_format() -> str:
    """LOG_FORMAT as the settings read it (the environment, then `.env` here or in the project's root: a worker
    starts a flow's process in a temporary folder); text when the settings do not load (the process says why
    itself, later). Read once: logging.yml's three factories ask."""
    from models.settings import PROJECT_ROOT, Settings

    try:
        return Settings(_env_file=(PROJECT_ROOT / ".env", ".env")).log_format
    except ValueError:  # pydantic's ValidationError
        return "json" if os.environ.get("LOG_FORMAT", "").strip().lower() == "json" else "text"


def console_formatter(**text_format: Any) -> logging.Formatter:
    """flows/logging.yml's formatters: Prefect's text lines (`text_format`: PrefectFormatter's arguments), or
    JSON lines under LOG_FORMAT=json."""
    if configured_format() == "json":
        return JsonLines()
    from prefect.logging.formatters import PrefectFormatter

    return PrefectFormatter(**text_format)


def console_handler(stream: Any = None, styles: dict[str, str] | None = None) -> logging.Handler:
    """flows/logging.yml's console: Prefect's (rich: it colours text at a terminal), or a plain stream under
    LOG_FORMAT=json, where colours and rich's markup would alter the JSON."""
    if configured_format() == "json":
        logging.captureWarnings(True)  # Python's warnings as log records too, not bare lines on stderr
        return logging.StreamHandler(stream)
    from prefect.logging.handlers import PrefectConsoleHandler

    return PrefectConsoleHandler(stream=stream, styles=styles)


def api_json_config(level: str) -> dict[str, Any]:
    """The API's logging under LOG_FORMAT=json, for uvicorn's log_config: uvicorn's loggers and the API's write
    JSON lines on stderr. uvicorn's access log is off (run it with access_log=False): the API writes one access
    line per request itself, with the request id."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonLines}},
        "filters": {"context": {"()": ContextIds}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "json",
                "filters": ["context"],
            }
        },
        "loggers": {
            "uvicorn": {"level": level},
            "uvicorn.access": {"handlers": [], "propagate": False},
            "api": {"level": level},
            "models": {"level": level},
        },
        "root": {"level": "WARNING", "handlers": ["stderr"]},
    }
