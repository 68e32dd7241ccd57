"""Schemathesis against the app's own OpenAPI, in-process over ASGI, on both filled databases: no server
errors, and every answer conforms to its documented schema (bounded examples: a quick property check)."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from api.main import create_app

# The app reads its database and API key from the settings on every request, so one app made at import
# serves every database the `api_env` fixture points it at.
APP = create_app()
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@pytest.fixture
def schema_env(api_env):
    # limits far above the examples' count: every example reaches its route (the limiter stays in the path)
    api_env(
        api_key="schemathesis-does-not-know-this-key",
        rate_limit_read="1000000/minute",
        rate_limit_write="1000000/minute",
    )


def _rejected_cursor(case, response) -> bool:
    """A made-up `cursor` is schema-valid text but not one of ours: 422 naming `cursor` is the documented answer."""
    if response.status_code != 422 or not (case.query or {}).get("cursor"):
        return False
    return any(err.get("loc") == ["query", "cursor"] for err in response.json().get("detail", []))


@schema.parametrize()
@settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
def test_api_conforms_to_its_schema(case, schema_env):
    response = case.call()
    excluded = [positive_data_acceptance] if _rejected_cursor(case, response) else []
    case.validate_response(response, excluded_checks=excluded)
