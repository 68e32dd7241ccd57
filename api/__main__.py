"""`python -m api`: the API under uvicorn on API_HOST:API_PORT."""

from __future__ import annotations

import sys

import uvicorn

from models.settings import ConfigError, get_settings


def main() -> int:
    try:
        settings = get_settings()
    except ConfigError as exc:
        print(f"sluice api: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(
        "api.main:app", host=settings.api_host, port=settings.api_port, log_level=settings.log_level.lower(), workers=1
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
