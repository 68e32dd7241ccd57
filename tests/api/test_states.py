"""What the API serves once users have gone invalid or been deleted and DLQ entries have closed: rows put in
those states with SQL (the pipeline producing them is covered end to end elsewhere), on a database of each
kind made for the test, read through a fresh app as a client would."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import insert

from api.main import create_app
from models.db import engine_for
from models.runs import EtlRun
from models.users import DlqUser, ProcessedUser
from tests.conftest import create_pg_database, drop_pg_database, migrated

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
BIG = 2**40  # an id past 32 bits: stored and served like any other
DEPARTMENTS = ["Engineering", "Legal", "Sales"]
INVALID_IDS, DELETED_IDS = (2, 5), (7, 9)
CURRENT_IDS = sorted({*range(1, 13), BIG} - {*INVALID_IDS, *DELETED_IDS})


@dataclass
class StatesDb:
    url: str
    client: TestClient


def _user(uid: int) -> dict:
    status = "invalid" if uid in INVALID_IDS else "deleted" if uid in DELETED_IDS else "current"
    department = DEPARTMENTS[uid % 3]
    return {
        "id": uid,
        "first_name": f"Ana{uid}",
        "last_name": f"Silva{uid % 4}",
        "email": f"ana{uid}@example.test",
        "username": f"ana{uid}",
        "age": 20 + uid % 7,
        "gender": "female" if uid % 2 else "male",
        "department": department,
        "department_code": department[:3].upper(),
        "source": "dummyjson",
        "record_hash": f"h{uid}",
        "first_seen_at": T0,
        "updated_at": T0 + timedelta(minutes=uid % 5),
        "run_id": "run-1",
        "status": status,
        "status_changed_at": None if status == "current" else T0 + timedelta(days=1),
        "status_run_id": {"invalid": "run-2", "deleted": "run-3"}.get(status),
    }


def _dlq(key: str, *, user_id: int | None, first: str, last: str, resolved: tuple[str, str] | None = None) -> dict:
    return {
        "record_hash": key,
        "run_id": first,
        "last_run_id": last,
        "user_id": user_id,
        "source": "dummyjson",
        "error_reason": "email_invalid",
        "data": f'{{"id": {user_id or "null"}, "email": "nope"}}',
        "inserted_at": T0,
        "last_seen_at": T0 + timedelta(days=1),
        "resolved_at": T0 + timedelta(days=2) if resolved else None,
        "resolved_run_id": resolved[0] if resolved else None,
        "resolution": resolved[1] if resolved else None,
    }


DLQ = [
    _dlq("open-2", user_id=2, first="run-1", last="run-2"),  # user 2 rejected twice: invalid now
    _dlq("resolved-3", user_id=3, first="run-1", last="run-1", resolved=("run-2", "valid")),  # valid again
    _dlq("open-5", user_id=5, first="run-2", last="run-2"),
    _dlq("open-no-id", user_id=None, first="run-3", last="run-3"),  # an id that is not an integer
    _dlq("resolved-7", user_id=7, first="run-2", last="run-2", resolved=("run-3", "gone")),
]
RUN_COUNTS = {
    "run-2": {"invalidated": 2, "restored": 1, "dlq_opened": 2, "dlq_resolved": 1},
    "run-3": {"deleted": 2, "dlq_opened": 1, "dlq_resolved": 1},
}


def fill(url: str) -> None:
    runs = [
        {
            "id": f"run-{n}",
            "status": "completed",
            "started_at": T0 + timedelta(days=n - 1),
            "finished_at": T0 + timedelta(days=n - 1, seconds=9),
            "duration_seconds": 9.0,
            **RUN_COUNTS.get(f"run-{n}", {}),
        }
        for n in (1, 2, 3)
    ]
    with engine_for(url).begin() as conn:
        conn.execute(insert(ProcessedUser.__table__), [_user(uid) for uid in [*range(1, 13), BIG]])
        conn.execute(insert(DlqUser.__table__), DLQ)
        for run in runs:  # each with only the counts it has: the others take their defaults
            conn.execute(insert(EtlRun.__table__), [run])


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, settings_env, tmp_path) -> Iterator[StatesDb]:
    """A database of its own (the API caches totals per database and data version)."""
    pg = request.param == "postgresql"
    url = migrated(create_pg_database("sluice_states") if pg else f"sqlite:///{tmp_path / 'states.db'}")
    try:
        fill(url)
        settings_env(database_url=url, api_key=None)
        with TestClient(create_app()) as client:
            yield StatesDb(url, client)
    finally:
        engine_for(url).dispose()
        if pg:
            drop_pg_database(url)


def ids(body: dict) -> list[int]:
    return [u["id"] for u in body["data"]]


def walk(client: TestClient, params: dict) -> list[int]:
    got, cursor = [], None
    while True:
        body = client.get("/users", params={**params, **({"cursor": cursor} if cursor else {})}).json()
        got += ids(body)
        cursor = body["next_cursor"]
        if cursor is None:
            return got


# ---------------------------------------------------------------- GET /users


def test_users_lists_current_users_only(db):
    c = db.client
    body = c.get("/users", params={"page_size": 500}).json()
    assert ids(body) == CURRENT_IDS and body["total"] == len(CURRENT_IDS) == 9
    assert {u["status"] for u in body["data"]} == {"current"} and body["meta"]["filters_applied"] == {}
    for sort in ("id", "age", "last_name", "updated_at"):
        for order in ("asc", "desc"):
            walked = walk(c, {"sort": sort, "order": order, "page_size": 2})
            assert sorted(walked) == CURRENT_IDS and len(walked) == len(set(walked)), (sort, order)
            by_offset = [
                i
                for p in range(1, 6)
                for i in ids(c.get("/users", params={"sort": sort, "order": order, "page": p, "page_size": 2}).json())
            ]
            assert by_offset == walked, (sort, order)
    legal = c.get("/users", params={"department": "Legal", "page_size": 500}).json()
    assert ids(legal) == [1, 4, 10, BIG] and legal["total"] == 4  # 7 is deleted
    female = c.get("/users", params={"search": "ANA", "gender": "female"}).json()
    assert ids(female) == [1, 3, 11] and female["total"] == 3  # 5, 7 and 9 are not current


def test_users_of_another_status_on_request(db):
    c = db.client
    invalid = c.get("/users", params={"status": "invalid"}).json()
    assert ids(invalid) == [2, 5] and invalid["total"] == 2
    assert invalid["meta"]["filters_applied"] == {"status": "invalid"}
    two = invalid["data"][0]
    assert (two["status"], two["status_run_id"], two["first_name"]) == ("invalid", "run-2", "Ana2")  # last valid
    assert two["status_changed_at"].startswith("2026-03-02T08:00:00")
    deleted = c.get("/users", params={"status": "deleted", "sort": "age", "order": "desc", "page_size": 1}).json()
    assert deleted["total"] == 2 and walk(c, {"status": "deleted", "sort": "age", "order": "desc", "page_size": 1}) == [
        9,
        7,
    ]
    assert c.get("/users", params={"status": "current"}).json()["total"] == 9
    # a cursor belongs to its status as to its other filters
    r = c.get("/users", params={"cursor": deleted["next_cursor"], "sort": "age", "order": "desc", "page_size": 1})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "cursor"]
    bad = c.get("/users", params={"status": "gone"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "status"]


# ---------------------------------------------------------------- GET /users/{id}


def test_user_by_id_says_why_it_is_not_served(db):
    c = db.client
    one = c.get("/users/1")
    assert one.status_code == 200 and one.json()["status"] == "current" and one.json()["status_run_id"] is None
    assert c.get(f"/users/{BIG}").json()["id"] == BIG

    invalid = c.get("/users/2")
    assert invalid.status_code == 404
    body = invalid.json()
    assert body["status"] == "invalid" and body["status_run_id"] == "run-2"
    assert body["detail"] == (
        "user 2 is not current: its newest record failed validation (run run-2); see GET /dlq?user_id=2"
    )
    hinted = c.get("/dlq", params={"user_id": 2}).json()  # following the hint finds why
    assert [e["user_id"] for e in hinted["data"]] == [2] and hinted["data"][0]["reasons"] == ["email_invalid"]

    deleted = c.get("/users/7")
    assert deleted.status_code == 404 and deleted.json()["status"] == "deleted"
    assert "absent from the source since run run-3" in deleted.json()["detail"]

    unknown = c.get("/users/13")
    assert unknown.status_code == 404 and unknown.json() == {"detail": "user 13 not found"}


@pytest.mark.parametrize("user_id", [2**63 - 1, -(2**63), 2**31, -1, 0])
def test_any_64_bit_id_is_looked_up(db, user_id):
    r = db.client.get(f"/users/{user_id}")
    assert r.status_code == 404 and r.json()["detail"] == f"user {user_id} not found"


@pytest.mark.parametrize("user_id", [2**63, -(2**63) - 1, 10**30])
def test_ids_beyond_64_bits_are_422(db, user_id):
    r = db.client.get(f"/users/{user_id}")
    assert r.status_code == 422
    err = r.json()["detail"][0]
    assert err["loc"] == ["path", "user_id"] and err["msg"]


# ---------------------------------------------------------------- GET /dlq


def test_dlq_open_by_default_and_every_state_on_request(db):
    c = db.client
    opened = c.get("/dlq").json()
    assert [e["user_id"] for e in opened["data"]] == [None, 5, 2] and opened["total"] == 3
    assert opened["meta"]["filters_applied"] == {}
    two = opened["data"][2]
    assert (two["status"], two["run_id"], two["last_run_id"]) == ("open", "run-1", "run-2")
    assert (two["resolved_at"], two["resolved_run_id"], two["resolution"]) == (None, None, None)

    resolved = c.get("/dlq", params={"status": "resolved"}).json()
    assert resolved["total"] == 2 and resolved["meta"]["filters_applied"] == {"status": "resolved"}
    by_user = {e["user_id"]: e for e in resolved["data"]}
    assert by_user[3]["status"] == "resolved" and by_user[3]["resolution"] == "valid"
    assert by_user[3]["resolved_run_id"] == "run-2" and by_user[3]["resolved_at"].startswith("2026-03-03T08:00:00")
    assert by_user[7]["resolution"] == "gone"
    assert c.get("/dlq", params={"status": "all"}).json()["total"] == 5


def test_dlq_filters_by_user_and_by_first_or_last_run(db):
    c = db.client

    def users(**params) -> list[int | None]:
        return sorted(e["user_id"] for e in c.get("/dlq", params=params).json()["data"] if e["user_id"] is not None)

    assert users(run_id="run-2") == [2, 5]  # user 2's entry: first seen in run-1, last in run-2
    assert users(run_id="run-2", status="all") == [2, 5, 7]
    assert users(run_id="run-1", status="all") == [2, 3]
    assert users(user_id=3) == [] and users(user_id=3, status="resolved") == [3]
    assert users(user_id=2, reason="email_invalid") == [2] and users(user_id=2, reason="age_out_of_range") == []
    assert c.get("/dlq", params={"user_id": 2**63 - 1}).json()["total"] == 0
    for params, name in (
        ({"user_id": 2**63}, "user_id"),
        ({"user_id": "two"}, "user_id"),
        ({"status": "closed"}, "status"),
    ):
        r = c.get("/dlq", params=params)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", name], params


# ---------------------------------------------------------------- GET /stats, /etl_runs, /data


def test_stats_count_each_source_user_once(db):
    s = db.client.get("/stats").json()
    assert (s["processed_users"], s["dlq_users"]) == (9, 3)
    assert (s["invalid_users"], s["deleted_users"], s["dlq_users_resolved"]) == (2, 2, 2)
    assert s["dlq_rate"] == pytest.approx(3 / 12, abs=1e-6)
    departments = {d["department"]: d["users"] for d in s["by_department"]}
    assert departments == {"Legal": 4, "Engineering": 3, "Sales": 2}
    assert sum(departments.values()) == s["processed_users"]


def test_runs_show_their_state_changes(db):
    runs = {r["id"]: r for r in db.client.get("/etl_runs").json()["data"]}
    keys = ("invalidated", "deleted", "restored", "dlq_opened", "dlq_resolved")
    for run_id, run in runs.items():
        assert {k: run[k] for k in keys} == {k: RUN_COUNTS.get(run_id, {}).get(k, 0) for k in keys}
    assert db.client.get("/etl_runs/run-3").json()["deleted"] == 2


def test_data_lists_current_users_only(db):
    body = db.client.get("/data", params={"page_size": 500}).json()
    assert body["total"] == 9 and sorted(int(i["source_id"]) for i in body["data"]) == CURRENT_IDS


def test_totals_follow_a_change_of_status(db):
    """A run that only changes statuses (no row's content, so no updated_at) still moves the totals."""
    from sqlalchemy import text

    c = db.client
    assert (c.get("/users").json()["total"], c.get("/users", params={"status": "deleted"}).json()["total"]) == (9, 2)
    with engine_for(db.url).begin() as conn:
        conn.execute(text("UPDATE processed_users SET status = 'deleted', status_run_id = 'run-4' WHERE id = 1"))
    time.sleep(1.1)  # the API looks at the data's version at most once a second
    assert (c.get("/users").json()["total"], c.get("/users", params={"status": "deleted"}).json()["total"]) == (8, 3)
    assert c.get("/stats").json()["processed_users"] == 8
    with engine_for(db.url).begin() as conn:  # one user gone, another invalid: as many as before not current
        conn.execute(text("UPDATE processed_users SET status = 'invalid' WHERE id = 7"))
    time.sleep(1.1)
    assert [c.get("/users", params={"status": s}).json()["total"] for s in ("invalid", "deleted")] == [3, 2]
