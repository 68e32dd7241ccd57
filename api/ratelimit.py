"""Per-client request limits (placeholder: filled in by the rate-limit work)."""

from __future__ import annotations

from fastapi import FastAPI

from models.settings import Settings


def add_rate_limits(app: FastAPI, settings: Settings) -> None:
    """Adds the limiter to `app` (inside the request-id middleware, so a 429 carries the request id)."""
