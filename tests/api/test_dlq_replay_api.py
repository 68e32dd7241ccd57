"""POST /dlq/replay: the API key (403 unset, 401 missing, 403 wrong), the filters validated (422 naming an unknown
rule), the deployment missing (503), and a real flow run of dlq-replay/on-demand created on the session's
Prefect server with the filters as its parameters."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from prefect import get_client
from prefect.settings import get_current_settings

from api.main import create_app
from api.routes.dlq import REPLAY_DEPLOYMENT
from tests.api.test_start_run import post_to
from tests.conftest import deployment_id

KEY = "correct horse battery staple"


def post(body=None, *, key: str | None = KEY) -> httpx.Response:
    return post_to("/dlq/replay", body, key=key)


@pytest.fixture
def keyed(settings_env, prefect_server):
    settings_env(api_key=KEY, prefect_ui_url=None)
    return settings_env


@pytest.fixture
def replay_deployment(prefect_server):
    """A real `dlq-replay/on-demand` deployment on the session's Prefect server (no worker: its runs stay
    Scheduled)."""
    from flows.dlq_replay import dlq_replay

    flow_name, name = REPLAY_DEPLOYMENT.split("/")
    assert dlq_replay.name == flow_name
    existing = deployment_id(REPLAY_DEPLOYMENT)
    with ThreadPoolExecutor(1) as pool:  # (as tests/conftest.py's `deployment`: no event loop on that thread)
        made = existing or pool.submit(lambda: dlq_replay.to_deployment(name=name).apply()).result()
    yield made
    if existing is None:
        with get_client(sync_client=True) as client:
            client.delete_deployment(made)


def test_keys(settings_env, prefect_server):
    settings_env(api_key=None)
    r = post()
    assert r.status_code == 403 and r.json() == {"detail": "starting runs through the API is disabled: set API_KEY"}
    settings_env(api_key=KEY)
    r = post(key=None)
    assert r.status_code == 401 and r.json()["detail"] == "missing X-API-Key header"
    for wrong in ("nope", KEY.upper(), KEY[:-1]):
        r = post(key=wrong)
        assert r.status_code == 403 and r.json()["detail"] == "invalid X-API-Key", wrong


def test_responses_are_documented(settings_env):
    operation = create_app().openapi()["paths"]["/dlq/replay"]["post"]
    responses = operation["responses"]
    assert {"202", "401", "403", "422", "503"} <= set(responses)
    assert "API_KEY" in responses["403"]["description"] and "X-API-Key" in responses["401"]["description"]
    assert "reason" in responses["422"]["description"]
    for code in ("401", "403", "503"):
        assert responses[code]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}
    assert "needs X-API-Key" in operation["summary"]


@pytest.mark.parametrize(
    ("body", "name"),
    [
        ({"reason": "departmnet_unknown"}, "reason"),
        ({"reason": ""}, "reason"),
        ({"run_id": "x" * 65}, "run_id"),
        ({"run_id": ""}, "run_id"),
        ({"run_id": "a\x00b"}, "run_id"),
        ({"status": "resolved"}, "status"),
        (["department_unknown"], "body"),
    ],
)
def test_filters_are_validated(keyed, body, name):
    r = post(body)
    assert r.status_code == 422, r.text
    assert any(name in e["loc"] for e in r.json()["detail"]), r.text


def test_an_unknown_reason_is_refused_naming_the_known_ones(keyed):
    r = post({"reason": "departmnet_unknown"})
    assert r.status_code == 422
    [error] = r.json()["detail"]
    assert error["loc"] == ["body", "reason"] and "department_unknown" in error["msg"]


def test_deployment_missing(keyed):
    if deployment_id(REPLAY_DEPLOYMENT) is not None:
        pytest.skip(f"another test left a {REPLAY_DEPLOYMENT} deployment on the session's Prefect server")
    r = post({"reason": "department_unknown"})
    assert r.status_code == 503 and r.json()["detail"] == (
        f"deployment {REPLAY_DEPLOYMENT} not found on the Prefect server: run `make deploy`"
    )


def test_starts_a_flow_run_of_the_replay_deployment(keyed, replay_deployment):
    r = post({"reason": "department_unknown", "run_id": "3fb619c4-7cdc-41c4-a1a2-e8045d96f081"})
    assert r.status_code == 202, r.text
    body = r.json()
    parameters = {"reason": "department_unknown", "run_id": "3fb619c4-7cdc-41c4-a1a2-e8045d96f081"}
    assert body["deployment"] == REPLAY_DEPLOYMENT and body["parameters"] == parameters
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(body["flow_run_id"])
    assert flow_run.deployment_id == replay_deployment and flow_run.parameters == parameters
    assert flow_run.state.is_scheduled() and body["state"] == flow_run.state.name
    ui = get_current_settings().api.url.removesuffix("/api")
    assert body["ui_url"] == f"{ui}/runs/flow-run/{body['flow_run_id']}"

    everything = post()
    assert everything.status_code == 202 and everything.json()["parameters"] == {}
