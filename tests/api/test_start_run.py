"""POST /etl_runs: the API key (403 unset, 401 missing, 403 wrong), body validation, Prefect unreachable or the
deployment missing (503), and a real flow run created on the session's Prefect server for a real deployment."""

from __future__ import annotations

import anyio
import httpx
import pytest
from prefect import get_client
from prefect.settings import get_current_settings

from api.main import create_app
from api.routes.runs import DEPLOYMENT
from tests.conftest import deployment_id

KEY = "correct horse battery staple"


def post_to(path: str, body=None, *, key: str | bytes | None = KEY, content: bytes | None = None) -> httpx.Response:
    """POST `path` over ASGI to a fresh app, with `key` in X-API-Key (none when None); `content` as raw JSON."""
    app = create_app()

    async def go():
        headers = {"X-API-Key": key} if key is not None else {}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api.test") as c:
            if content is not None:
                headers["Content-Type"] = "application/json"
                return await c.post(path, content=content, headers=headers)
            return await c.post(path, json=body, headers=headers)

    return anyio.run(go)


def post(body=None, *, key: str | bytes | None = KEY, content: bytes | None = None) -> httpx.Response:
    return post_to("/etl_runs", body, key=key, content=content)


@pytest.fixture
def keyed(settings_env, prefect_server):
    settings_env(api_key=KEY, prefect_ui_url=None)
    return settings_env


def test_unset_api_key_disables_the_endpoint(settings_env):
    settings_env(api_key=None)
    for key in ("anything", None, ""):
        r = post(key=key)
        assert r.status_code == 403, key
        assert r.json() == {"detail": "starting runs through the API is disabled: set API_KEY"}
    settings_env(api_key="")
    assert post(key="").status_code == 403


def test_key_errors_are_documented(settings_env):
    responses = create_app().openapi()["paths"]["/etl_runs"]["post"]["responses"]
    assert "API_KEY" in responses["403"]["description"] and "X-API-Key" in responses["401"]["description"]
    for code in ("401", "403"):
        schema = responses[code]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/ErrorBody"}


def test_missing_and_wrong_keys(keyed):
    r = post(key=None)
    assert r.status_code == 401 and r.json()["detail"] == "missing X-API-Key header"
    assert post(key="").status_code == 401
    for wrong in ("nope", KEY.upper(), KEY + " ", KEY[:-1], b"\xff\xfe"):
        r = post(key=wrong)
        assert r.status_code == 403 and r.json()["detail"] == "invalid X-API-Key", wrong


@pytest.mark.parametrize(
    ("body", "name"),
    [
        ({"page_size": 0}, "page_size"),
        ({"page_size": "many"}, "page_size"),
        ({"batch_records": 2_000_000}, "batch_records"),
        ({"api_base": "ftp://example.test/users"}, "api_base"),
        ({"api_base": "http://"}, "api_base"),
        ({"deliver_files": "perhaps"}, "deliver_files"),
        ({"shards": 0}, "shards"),
        ({"database_block": "prod"}, "database_block"),
        ([1, 2], "body"),
    ],
)
def test_body_is_validated(keyed, body, name):
    r = post(body)
    assert r.status_code == 422, r.text
    assert any(name in e["loc"] for e in r.json()["detail"]), r.text


def test_malformed_json_is_422(keyed):
    assert post(content=b'{"page_size": ').status_code == 422


def test_prefect_unreachable(keyed):
    keyed(prefect_api_url="http://127.0.0.1:1/api")  # the API reads PREFECT_API_URL, as Prefect's client does
    r = post({"page_size": 10})
    assert r.status_code == 503 and "unreachable" in r.json()["detail"]


def test_deployment_missing(keyed):
    if deployment_id(DEPLOYMENT) is not None:
        pytest.skip(f"another test left a {DEPLOYMENT} deployment on the session's Prefect server")
    r = post()
    assert r.status_code == 503 and "not found" in r.json()["detail"] and DEPLOYMENT in r.json()["detail"]


def test_starts_a_flow_run_of_the_deployment(keyed, deployment):
    r = post({"page_size": 7, "deliver_files": False, "shards": 2})
    assert r.status_code == 202, r.text
    body = r.json()
    expected = {"page_size": 7, "deliver_files": False, "shards": 2}
    assert body["deployment"] == DEPLOYMENT and body["parameters"] == expected
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(body["flow_run_id"])
    assert flow_run.deployment_id == deployment
    assert flow_run.parameters == expected
    assert flow_run.state.is_scheduled() and body["state"] == flow_run.state.name
    ui = get_current_settings().api.url.removesuffix("/api")
    assert body["ui_url"] == f"{ui}/runs/flow-run/{body['flow_run_id']}"
    assert r.headers["x-request-id"]


def test_ui_link_from_prefect_ui_url(keyed, deployment):
    keyed(prefect_ui_url="https://prefect.example.test/")
    r = post()
    assert r.status_code == 202
    assert r.json()["ui_url"] == f"https://prefect.example.test/runs/flow-run/{r.json()['flow_run_id']}"
    assert r.json()["parameters"] == {}
