"""The issue-37 REST peer itself (tests/servers/rest_api.py), over real loopback HTTP: every pagination style
pages through every user exactly once, and every auth kind refuses a missing or wrong credential."""

from __future__ import annotations

import base64

import httpx
import pytest

from tests.servers.rest_api import Fault, RestApiServer

N_USERS, PAGE = 230, 50
SECRET = "s3cret-value-for-tests"


def make_users(n: int = N_USERS) -> list[dict]:
    return [{"id": i, "firstName": f"User{i}", "email": f"user{i}@example.test"} for i in range(1, n + 1)]


def dig(body, dotted: str):
    for key in dotted.split(".") if dotted else ():
        body = body[key]
    return body


def ids(rows: list[dict]) -> list[int]:
    return [r["id"] for r in rows]


def test_offset_with_renamed_params_and_nested_paths():
    with RestApiServer(
        make_users(),
        offset_param="offset",
        limit_param="count",
        records_path="data.people",
        total_path="meta.total",
    ) as server:
        seen, offset = [], 0
        with httpx.Client() as client:
            while True:
                body = client.get(server.base_url, params={"offset": offset, "count": PAGE}).raise_for_status().json()
                rows = dig(body, "data.people")
                assert dig(body, "meta.total") == N_USERS
                assert set(body) == {"data", "meta"}
                seen += rows
                offset += len(rows)
                if offset >= N_USERS:
                    break
    assert ids(seen) == list(range(1, N_USERS + 1))
    assert server.requests == [{"offset": str(o), "count": str(PAGE)} for o in range(0, N_USERS, PAGE)]


def test_offset_defaults_look_like_dummyjson():
    with RestApiServer(make_users(), default_limit=30) as server:
        body = httpx.get(server.base_url, params={"skip": 200}).raise_for_status().json()
        assert body == {"users": make_users()[200:230], "total": N_USERS}
        assert httpx.get(server.base_url).json()["users"] == make_users()[:30]


@pytest.mark.parametrize("first_page", [1, 0])
def test_page_number_with_total_pages(first_page):
    with RestApiServer(
        make_users(),
        pagination="page",
        limit_param="per_page",
        first_page=first_page,
        total_pages_path="meta.total_pages",
        total_path=None,
    ) as server:
        seen, page = [], first_page
        with httpx.Client() as client:
            while True:
                body = client.get(server.base_url, params={"page": page, "per_page": PAGE}).raise_for_status().json()
                assert body["meta"] == {"total_pages": 5}
                seen += body["users"]
                if page - first_page + 1 >= body["meta"]["total_pages"]:
                    break
                page += 1
        assert ids(seen) == list(range(1, N_USERS + 1))
        beyond = httpx.get(server.base_url, params={"page": first_page + 5, "per_page": PAGE}).json()
        assert beyond["users"] == []
        assert httpx.get(server.base_url, params={"page": first_page - 1}).status_code == 400


def test_page_number_bare_list_until_short_page():
    with RestApiServer(make_users(), pagination="page", records_path="", limit_param="page_size") as server:
        seen, page = [], 1
        with httpx.Client() as client:
            while True:
                rows = client.get(server.base_url, params={"page": page, "page_size": PAGE}).raise_for_status().json()
                assert isinstance(rows, list)
                seen += rows
                if len(rows) < PAGE:
                    break
                page += 1
    assert ids(seen) == list(range(1, N_USERS + 1))
    assert [r["page"] for r in server.requests] == ["1", "2", "3", "4", "5"]


def test_cursor_in_body_is_opaque_and_ends_null():
    with RestApiServer(
        make_users(), pagination="cursor", limit_param="page_size", cursor_path="paging.next", total_path=None
    ) as server:
        seen, cursors, cursor = [], [], None
        with httpx.Client() as client:
            while True:
                params = {"page_size": PAGE} | ({"cursor": cursor} if cursor else {})
                body = client.get(server.base_url, params=params).raise_for_status().json()
                assert set(body) == {"users", "paging"}
                seen += body["users"]
                cursor = body["paging"]["next"]
                if cursor is None:
                    break
                cursors.append(cursor)
        assert ids(seen) == list(range(1, N_USERS + 1))
        assert cursors == [server.cursor_for(o) for o in (50, 100, 150, 200)]
        # the same cursor again is the same page (a resumed walk), any other token is refused
        again = httpx.get(server.base_url, params={"cursor": cursors[1], "page_size": PAGE}).json()
        assert ids(again["users"]) == list(range(101, 151))
        with RestApiServer(make_users(), pagination="cursor") as other:
            foreign = other.cursor_for(50)
        assert foreign != cursors[0]  # salted per server: nothing a client could compute
        forged = base64.urlsafe_b64encode(b"50").decode()
        for bad in (foreign, forged, "50", "!!", ""):
            answer = httpx.get(server.base_url, params={"cursor": bad})
            assert answer.status_code == 400, bad
            assert answer.json() == {"message": "unknown cursor"}


def test_cursor_full_last_page_has_no_next():
    with RestApiServer(make_users(100), pagination="cursor") as server:
        body = httpx.get(server.base_url, params={"cursor": server.cursor_for(50), "limit": 50}).json()
        assert len(body["users"]) == 50 and body["next_cursor"] is None and body["total"] == 100


def test_link_header_walk():
    with RestApiServer(make_users(), pagination="link", records_path="", limit_param="per_page") as server:
        seen, url, params = [], server.base_url, {"per_page": PAGE}
        links = []
        with httpx.Client() as client:
            while url:
                answer = client.get(url, params=params).raise_for_status()
                seen += answer.json()
                url, params = answer.links.get("next", {}).get("url"), None
                if url:
                    links.append(answer.headers["Link"])
        assert ids(seen) == list(range(1, N_USERS + 1))
        assert links[0] == f'<{server.base_url}?cursor={server.cursor_for(50)}&per_page={PAGE}>; rel="next"'
        assert len(links) == 4  # the fifth (last) page has no Link
        assert server.requests[1:] == [
            {"cursor": server.cursor_for(o), "per_page": str(PAGE)} for o in (50, 100, 150, 200)
        ]


def test_link_with_records_container():
    with RestApiServer(make_users(60), pagination="link", total_path=None) as server:
        answer = httpx.get(server.base_url, params={"limit": 50})
        assert answer.json() == {"users": make_users(60)[:50]}
        assert answer.links["next"]["url"].startswith(server.base_url + "?cursor=")


def _credentials(auth: str, secret: str) -> dict:
    """httpx request kwargs carrying `secret` the way `auth` wants it."""
    if auth == "api_key_header":
        return {"headers": {"X-API-Key": secret}}
    if auth == "api_key_query":
        return {"params": {"api_key": secret}}
    if auth == "bearer":
        return {"headers": {"Authorization": f"Bearer {secret}"}}
    return {"auth": httpx.BasicAuth("reader", secret)}


@pytest.mark.parametrize("auth", ["api_key_header", "api_key_query", "bearer", "basic"])
def test_auth_refuses_missing_and_wrong_credentials(auth):
    with RestApiServer(make_users(), auth=auth, secret=SECRET, username="reader") as server:
        with httpx.Client() as client:
            missing = client.get(server.base_url, params={"limit": 5})
            wrong = client.get(server.base_url, **_merge(_credentials(auth, SECRET + "x"), {"limit": 5}))
            right = client.get(server.base_url, **_merge(_credentials(auth, SECRET), {"limit": 5}))
        for refused in (missing, wrong):
            assert refused.status_code == 401
            assert refused.json() == {"message": "unauthorized"}
        assert right.status_code == 200 and ids(right.json()["users"]) == [1, 2, 3, 4, 5]
        assert server.unauthorized == 2
        assert server.requests == [{"limit": "5"}]  # only the authorised request, never the key


def _merge(kwargs: dict, params: dict) -> dict:
    return kwargs | {"params": kwargs.get("params", {}) | params}


def test_basic_needs_the_right_username_and_custom_key_names():
    with RestApiServer(make_users(), auth="basic", secret=SECRET, username="reader") as server:
        assert httpx.get(server.base_url, auth=("someone", SECRET)).status_code == 401
        assert httpx.get(server.base_url, auth=("reader", SECRET)).status_code == 200
    with RestApiServer(make_users(), auth="api_key_header", key_name="X-Token", secret=SECRET) as server:
        assert httpx.get(server.base_url, headers={"X-API-Key": SECRET}).status_code == 401
        assert httpx.get(server.base_url, headers={"X-Token": SECRET}).status_code == 200


def test_query_key_is_never_echoed():
    with RestApiServer(
        make_users(), pagination="link", auth="api_key_query", key_name="token", secret=SECRET
    ) as server:
        answer = httpx.get(server.base_url, params={"token": SECRET, "limit": PAGE})
        assert answer.status_code == 200
        assert SECRET not in answer.text and SECRET not in str(answer.headers)
        # the next link leaves the key out: a client adds it again itself
        assert httpx.get(answer.links["next"]["url"]).status_code == 401
        assert httpx.get(answer.links["next"]["url"], params={"token": SECRET}).status_code == 200
        assert all("token" not in r for r in server.requests)


def test_faults_bad_params_and_limits():
    with RestApiServer(make_users(), max_limit=100) as server:
        server.faults.append(Fault(503, {"Retry-After": "1"}))
        server.fail_when = lambda params: Fault(500) if params.get("skip") == "200" else None
        first = httpx.get(server.base_url)
        assert first.status_code == 503 and first.headers["Retry-After"] == "1"
        assert httpx.get(server.base_url, params={"skip": 200}).status_code == 500
        assert len(httpx.get(server.base_url, params={"limit": 500}).json()["users"]) == 100
        for bad in ({"limit": "0"}, {"limit": "x"}, {"skip": "-1"}):
            assert httpx.get(server.base_url, params=bad).status_code == 400, bad
        assert httpx.get(server.base_url.replace("/users", "/other")).status_code == 404
        assert len(server.requests) == 6  # 404s never reach the record
    with pytest.raises(ValueError):
        RestApiServer(pagination="cursor", records_path="")
    with pytest.raises(ValueError):
        RestApiServer(auth="bearer")
