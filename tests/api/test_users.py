"""GET /users and GET /users/{id} against SQLite and PostgreSQL filled by the real pipeline."""

from __future__ import annotations

import base64
import json
import re

import pytest

from models.users import UserPublic


def all_users(client) -> list[dict]:
    body = client.get("/users", params={"page_size": 500}).json()
    assert body["total"] == len(body["data"]) and not body["has_more"]
    return body["data"]


def expected_ids(filled_db) -> list[int]:
    return sorted(u["id"] for i, u in enumerate(filled_db.source_users) if i not in filled_db.broken)


def walk(client, params: dict) -> list[dict]:
    """Every page by cursor; checks each page's shape on the way."""
    rows, cursor, pages = [], None, 0
    while True:
        r = client.get("/users", params={**params, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200, r.text
        body = r.json()
        rows += body["data"]
        pages += 1
        assert body["page"] == (1 if cursor is None else None)
        cursor = body["next_cursor"]
        assert body["has_more"] is (cursor is not None)
        if cursor is None:
            return rows
        assert pages < 1000


def test_first_page_shape(client, filled_db):
    r = client.get("/users")
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"data", "total", "page", "page_size", "has_more", "next_cursor", "meta"}
    assert body["total"] == len(expected_ids(filled_db)) == 195
    assert (body["page"], body["page_size"], body["has_more"]) == (1, 20, True)
    assert [u["id"] for u in body["data"]] == expected_ids(filled_db)[:20]
    assert body["meta"]["request_id"] == r.headers["x-request-id"]
    assert body["meta"]["api_latency_ms"] >= 0 and body["meta"]["filters_applied"] == {}
    for user in body["data"]:
        assert set(user) == set(UserPublic.model_fields)
        UserPublic.model_validate(user)
        assert "password" not in user and "ssn" not in user and "record_hash" not in user
        assert re.fullmatch(r"\*\*\*-\*\*-\d{4}", user["ssn_masked"])
        assert re.fullmatch(r"\*\*\*\* \*\*\*\* \*\*\*\* \d{4}|\*\*\*\*", user["card_number_masked"])
        assert user["iban_masked"].startswith("****")
        assert user["updated_at"].endswith(("Z", "+00:00"))


def test_processed_rows_match_the_source(client, filled_db):
    users = {u["id"]: u for u in all_users(client)}
    assert sorted(users) == expected_ids(filled_db)
    src = filled_db.source_users[0]
    mine = users[src["id"]]
    assert (mine["first_name"], mine["email"], mine["age"]) == (src["firstName"], src["email"].lower(), src["age"])
    assert mine["department"] == src["company"]["department"] and mine["run_id"] == filled_db.run_id
    assert mine["ssn_masked"].endswith(re.sub(r"\D", "", src["ssn"])[-4:])


def test_offset_pages_and_page_beyond_the_end(client):
    everything = [u["id"] for u in all_users(client)]
    got = []
    for page in range(1, 5):
        body = client.get("/users", params={"page": page, "page_size": 50}).json()
        got += [u["id"] for u in body["data"]]
        assert body["has_more"] is (page < 4)
    assert got == everything
    beyond = client.get("/users", params={"page": 10_000_000, "page_size": 500})
    assert beyond.status_code == 200
    assert beyond.json()["data"] == [] and beyond.json()["has_more"] is False and beyond.json()["total"] == 195


def _sort_key(sort: str, order: str):
    def key(u):
        value = u[sort]
        missing = value is None
        # NULL last names come first ascending (and so last descending), as the API documents
        return ((not missing) if order == "asc" else missing, value if not missing else "", u["id"])

    return key


@pytest.mark.parametrize("sort", ["id", "age", "last_name", "updated_at"])
@pytest.mark.parametrize("order", ["asc", "desc"])
def test_cursor_walk_covers_everything_in_order(client, sort, order):
    everything = all_users(client)
    walked = walk(client, {"sort": sort, "order": order, "page_size": 17})
    assert len(walked) == len(everything) == len({u["id"] for u in walked})
    expected = sorted(everything, key=_sort_key(sort, "asc"))
    if order == "desc":
        expected = sorted(everything, key=_sort_key(sort, "asc"), reverse=True)
    assert [u["id"] for u in walked] == [u["id"] for u in expected]
    offset = client.get("/users", params={"sort": sort, "order": order, "page": 2, "page_size": 17}).json()["data"]
    assert [u["id"] for u in offset] == [u["id"] for u in walked[17:34]]


def test_cursor_with_filters_and_page_ignored(client):
    params = {"gender": "female", "page_size": 10, "sort": "age"}
    first = client.get("/users", params=params).json()
    second = client.get("/users", params={**params, "cursor": first["next_cursor"], "page": 7}).json()
    assert second["page"] is None
    assert all(u["gender"] == "female" for u in second["data"])
    assert not {u["id"] for u in first["data"]} & {u["id"] for u in second["data"]}


@pytest.mark.parametrize(
    ("params", "predicate"),
    [
        ({"department": "Engineering"}, lambda u: u["department"] == "Engineering"),
        ({"department_code": "ENG"}, lambda u: u["department_code"] == "ENG"),
        ({"gender": "male"}, lambda u: u["gender"] == "male"),
        ({"min_age": 30, "max_age": 40}, lambda u: 30 <= u["age"] <= 40),
        ({"min_age": 50}, lambda u: u["age"] >= 50),
        ({"source": "dummyjson"}, lambda u: u["source"] == "dummyjson"),
        ({"source": "elsewhere"}, lambda u: False),
        ({"min_age": 60, "max_age": 20}, lambda u: False),
        (
            {"department": "Engineering", "gender": "female", "max_age": 40},
            lambda u: u["department"] == "Engineering" and u["gender"] == "female" and u["age"] <= 40,
        ),
    ],
)
def test_filters(client, params, predicate):
    expected = [u["id"] for u in all_users(client) if predicate(u)]
    body = client.get("/users", params={**params, "page_size": 500}).json()
    assert [u["id"] for u in body["data"]] == expected
    assert body["total"] == len(expected)
    assert body["meta"]["filters_applied"] == params


def test_search_is_case_insensitive_over_names_email_username(client):
    users = all_users(client)

    def hits(term):
        t = term.lower()
        return [
            u["id"]
            for u in users
            if any(t in (u[f] or "").lower() for f in ("first_name", "last_name", "email", "username"))
        ]

    for term in ("EMILY", "johnson", "x.dummyjson", "emilys", "li"):
        body = client.get("/users", params={"search": term, "page_size": 500}).json()
        assert [u["id"] for u in body["data"]] == hits(term) != []
        assert body["total"] == len(hits(term))


@pytest.mark.parametrize(
    "term",
    ["%", "_", "%%", "a_b", "\\", "'", '"', "' OR '1'='1", "'; DROP TABLE processed_users; --", "em%ly", "emil_"],
)
def test_search_text_is_just_text(client, term):
    r = client.get("/users", params={"search": term, "page_size": 500})
    assert r.status_code == 200
    assert r.json()["data"] == [] and r.json()["total"] == 0
    assert client.get("/users").json()["total"] == 195  # still there


def test_blank_search_is_no_filter(client):
    body = client.get("/users", params={"search": "   "}).json()
    assert body["total"] == 195 and body["meta"]["filters_applied"] == {}


def test_user_by_id(client, filled_db):
    listed = all_users(client)[5]
    r = client.get(f"/users/{listed['id']}")
    assert r.status_code == 200 and r.json() == listed
    missing = client.get("/users/987654321")
    assert missing.status_code == 404 and "987654321" in missing.json()["detail"]
    broken_id = filled_db.source_users[3]["id"]  # went to the DLQ (bad email)
    assert client.get(f"/users/{broken_id}").status_code == 404
    assert client.get("/users/abc").status_code == 422
    for beyond in (2**63, -(2**63) - 1, 2**70):  # no BIGINT holds it
        r = client.get(f"/users/{beyond}")
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["path", "user_id"], r.text
        assert "less than or equal" in r.json()["detail"][0]["msg"] or "greater than" in r.json()["detail"][0]["msg"]
    for edge in (2**63 - 1, -(2**63)):
        r = client.get(f"/users/{edge}")
        assert r.status_code == 404 and r.json() == {"detail": f"user {edge} not found"}


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"page": 0}, "page"),
        ({"page": "x"}, "page"),
        ({"page_size": 0}, "page_size"),
        ({"page_size": 501}, "page_size"),
        ({"sort": "password"}, "sort"),
        ({"order": "sideways"}, "order"),
        ({"min_age": -1}, "min_age"),
        ({"max_age": "old"}, "max_age"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"cursor": "e30"}, "cursor"),  # "{}" base64url
        ({"cursor": "!!"}, "cursor"),
        ({"department": "a\x00b"}, "department"),
        ({"search": "x" * 201}, "search"),
    ],
)
def test_bad_parameters_are_422_naming_them(client, params, name):
    r = client.get("/users", params=params)
    assert r.status_code == 422, r.text
    assert any(e["loc"][-1] == name for e in r.json()["detail"]), r.text


def test_cursor_must_be_used_with_its_own_sort_and_filters(client):
    cursor = client.get("/users", params={"sort": "age", "page_size": 5}).json()["next_cursor"]
    for params in ({"sort": "id"}, {"sort": "age", "order": "desc"}, {"sort": "age", "gender": "male"}):
        r = client.get("/users", params={**params, "cursor": cursor, "page_size": 5})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "cursor"]
    assert client.get("/users", params={"sort": "age", "cursor": cursor, "page_size": 5}).status_code == 200


def forged(cursor: str, **changes) -> str:
    """A next_cursor with fields changed, as a client tampering with it would (stdlib json: any integer)."""
    data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    return base64.urlsafe_b64encode(json.dumps({**data, **changes}).encode()).rstrip(b"=").decode()


@pytest.mark.parametrize(
    ("sort", "changes"),
    [
        ("id", {"i": 2**63}),
        ("id", {"i": -(2**63) - 1}),
        ("id", {"i": 2**64}),
        ("id", {"i": 10**40}),
        ("id", {"k": 2**63}),
        ("id", {"k": -(2**63) - 1}),
        ("age", {"k": 2**63}),
        ("age", {"i": 2**63}),
        ("last_name", {"k": "Ito\x00"}),
        ("updated_at", {"k": "yesterday"}),
        ("age", {"k": 1.5}),
        ("id", {"i": True}),
    ],
)
def test_a_tampered_cursor_is_422_naming_it(client, sort, changes):
    params = {"sort": sort, "page_size": 5}
    cursor = forged(client.get("/users", params=params).json()["next_cursor"], **changes)
    r = client.get("/users", params={**params, "cursor": cursor})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["query", "cursor"] and "not a valid cursor" in r.json()["detail"][0]["msg"]


def test_a_cursor_at_the_64_bit_edges_pages_on(client):
    everything = [u["id"] for u in all_users(client)]
    cursor = client.get("/users", params={"page_size": 5}).json()["next_cursor"]
    last = client.get("/users", params={"page_size": 5, "cursor": forged(cursor, k=2**63 - 1, i=2**63 - 1)})
    assert last.status_code == 200 and last.json()["data"] == [] and last.json()["next_cursor"] is None
    first = client.get("/users", params={"page_size": 5, "cursor": forged(cursor, k=-(2**63), i=-(2**63))})
    assert first.status_code == 200 and [u["id"] for u in first.json()["data"]] == everything[:5]


def _insert_users(url: str, rows: list[dict]) -> None:
    from datetime import UTC, datetime

    from sqlalchemy import insert

    from models.db import engine_for
    from models.users import ProcessedUser

    now = datetime.now(UTC)
    base = {
        "email": "x@example.test",
        "department": "Legal",
        "department_code": "LGL",
        "source": "dummyjson",
        "record_hash": "h",
        "first_seen_at": now,
        "updated_at": now,
        "run_id": "r",
    }
    with engine_for(url).begin() as conn:
        conn.execute(insert(ProcessedUser.__table__), [{**base, **row} for row in rows])


@pytest.mark.parametrize("sort", ["last_name", "age"])
@pytest.mark.parametrize("order", ["asc", "desc"])
def test_cursor_walk_with_null_last_names_and_ties(settings_env, database_url, sort, order):
    """Keyset parts (same value, beyond it, the NULLs) on a table with NULL last names and many ties."""
    from fastapi.testclient import TestClient

    from api.main import create_app

    names = ["Ito", None, "Abara", "Ito", None, "Silva", "Abara", "Ito", None, "Zed", "ito", None]
    rows = [
        {"id": i, "first_name": f"U{i}", "last_name": names[i % len(names)], "age": 20 + (i * 7) % 5}
        for i in range(1, 41)
    ]
    _insert_users(database_url, rows)
    settings_env(database_url=database_url)
    with TestClient(create_app()) as c:
        walked = walk(c, {"sort": sort, "order": order, "page_size": 3})
        everything = all_users(c)
    assert len(walked) == 40 == len({u["id"] for u in walked})
    expected = sorted(everything, key=_sort_key(sort, "asc"), reverse=order == "desc")
    assert [u["id"] for u in walked] == [u["id"] for u in expected]
