"""`python -m api`: the API under uvicorn on API_HOST:API_PORT, logging as LOG_FORMAT says."""

from __future__ import annotations

import logging
import sys
from typing import Any

import uvicorn

from models.logs import api_json_config
from models.settings import ConfigError, get_settings


def main() -> int:
    try:
        settings = get_settings()
    except ConfigError as exc:
        print(f"sluice api: {exc}", file=sys.stderr)
        return 2
    logs: dict[str, Any] = {}  # text: uvicorn's own logging, its access log included
    if settings.log_format == "json":  # JSON lines, and the API's access line (with the request id) for uvicorn's
        logging.captureWarnings(True)
        logs = {"log_config": api_json_config(settings.log_level), "access_log": False}
    uvicorn.run(
        "api.main:app",
        host=settings.api_host,
        port=settings.api_port,
        log_level=settings.log_level.lower(),
        workers=1,
        **logs,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
