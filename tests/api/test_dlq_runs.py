"""GET /dlq, GET /etl_runs, GET /etl_runs/{run_id} against the databases the real pipeline filled."""

from __future__ import annotations

import re

import pytest

from models.schema import user_rules


def test_dlq_lists_every_rejected_record_with_its_reasons(client, filled_db):
    body = client.get("/dlq", params={"page_size": 500}).json()
    assert body["total"] == len(filled_db.broken) == len(body["data"]) == 13
    assert body["has_more"] is False and body["meta"]["request_id"]
    by_source_id = {}
    for row in body["data"]:
        assert isinstance(row["data"], dict) and "password" not in row["data"]
        assert row["reasons"] == row["error_reason"].split("; ")
        assert row["run_id"] == row["last_run_id"] == filled_db.run_id
        assert (row["status"], row["resolved_at"], row["resolved_run_id"], row["resolution"]) == (
            "open",
            None,
            None,
            None,
        )
        by_source_id.setdefault(str(row["data"].get("id")), []).append(set(row["reasons"]))
    for position, rules in filled_db.broken.items():
        assert rules in by_source_id[str(filled_db.source_users[position]["id"])]
    ids = [row["id"] for row in body["data"]]
    assert ids == sorted(ids, reverse=True)  # newest first


def test_dlq_records_stay_masked(client, filled_db):
    r = client.get("/dlq", params={"page_size": 500})
    for user in filled_db.source_users:  # no sensitive value as the source sent it
        bank = user.get("bank") if isinstance(user.get("bank"), dict) else {}
        for value in (user.get("ssn"), bank.get("cardNumber"), bank.get("iban")):
            if isinstance(value, str) and len(value) >= 8:
                assert value not in r.text
    for row in r.json()["data"]:
        ssn = row["data"].get("ssn")
        assert ssn is None or re.fullmatch(r"\*\*\*-\*\*-\d{4}|\*{4}", ssn), ssn
        bank = row["data"].get("bank") or {}
        if isinstance(bank, dict) and bank.get("cardNumber") is not None:
            assert bank["cardNumber"].startswith("****")


@pytest.mark.parametrize("reason", [r.name for r in user_rules()])
def test_dlq_filter_by_reason(client, filled_db, reason):
    expected = sum(1 for rules in filled_db.broken.values() if reason in rules)
    body = client.get("/dlq", params={"reason": reason, "page_size": 500}).json()
    assert body["total"] == len(body["data"]) == expected
    assert all(reason in row["reasons"] for row in body["data"])
    assert body["meta"]["filters_applied"] == {"reason": reason}


def test_dlq_entries_name_their_users(client, filled_db):
    entries = client.get("/dlq", params={"page_size": 500}).json()["data"]
    for entry in entries:
        source_id = entry["data"].get("id")
        if isinstance(source_id, int) and not isinstance(source_id, bool):
            assert entry["user_id"] in (source_id, None)  # None: a second copy of an id in one extraction
        else:
            assert entry["user_id"] is None
    some = next(e for e in entries if e["user_id"] is not None)
    mine = client.get("/dlq", params={"user_id": some["user_id"]}).json()
    assert some["id"] in [e["id"] for e in mine["data"]] and all(e["user_id"] == some["user_id"] for e in mine["data"])
    assert mine["meta"]["filters_applied"] == {"user_id": some["user_id"]}
    assert client.get("/users/{}".format(some["user_id"])).status_code == 404
    assert client.get("/dlq", params={"status": "resolved"}).json()["total"] == 0
    assert client.get("/dlq", params={"status": "all"}).json()["total"] == 13


def test_dlq_filter_by_run_and_pagination(client, filled_db):
    assert client.get("/dlq", params={"run_id": filled_db.run_id}).json()["total"] == 13
    assert client.get("/dlq", params={"run_id": "another-run"}).json()["total"] == 0
    pages = [client.get("/dlq", params={"page": p, "page_size": 5}).json() for p in (1, 2, 3, 4)]
    assert [len(p["data"]) for p in pages] == [5, 5, 3, 0]
    assert [p["has_more"] for p in pages] == [True, True, False, False]


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"reason": "email"}, "reason"),
        ({"reason": "%"}, "reason"),
        ({"page": 0}, "page"),
        ({"page_size": 1000}, "page_size"),
        ({"run_id": "x" * 65}, "run_id"),
        ({"status": "closed"}, "status"),
        ({"user_id": 2**63}, "user_id"),
        ({"user_id": "one"}, "user_id"),
    ],
)
def test_dlq_bad_parameters(client, params, name):
    r = client.get("/dlq", params=params)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == name


def test_runs_list_and_detail(client, filled_db):
    body = client.get("/etl_runs").json()
    assert body["total"] == 1 and body["has_more"] is False
    run = body["data"][0]
    assert run["id"] == filled_db.run_id and run["status"] == "completed"
    counts = filled_db.summary["counts"]
    for key in (
        "extracted",
        "valid",
        "invalid",
        "inserted",
        "raw_inserted",
        "dlq_inserted",
        "delivered_files",
        "invalidated",
        "deleted",
        "restored",
        "dlq_opened",
        "dlq_resolved",
    ):
        assert run[key] == counts[key], key
    # a first run: nothing to invalidate, delete or restore; every rejected record opens an entry
    assert (run["invalidated"], run["deleted"], run["restored"], run["dlq_resolved"]) == (0, 0, 0, 0)
    assert run["dlq_opened"] == 13
    assert {"extract", "transform", "persist"} <= set(run["stage_seconds"])
    assert all(isinstance(v, float | int) for v in run["stage_seconds"].values())
    assert set(run["files"]) == {"raw", "processed", "dlq"} and run["delivered"] == []
    assert run["dlq_reasons"] == filled_db.summary["dlq_reasons"]
    assert run["duration_seconds"] > 0 and run["finished_at"] >= run["started_at"]
    assert run["error"] is None and run["failed_stage"] is None

    detail = client.get(f"/etl_runs/{filled_db.run_id}")
    assert detail.status_code == 200 and detail.json() == run
    assert client.get("/etl_runs", params={"status": "failed"}).json()["total"] == 0
    assert client.get("/etl_runs", params={"page": 2}).json()["data"] == []


def test_unknown_run_is_404_and_bad_parameters_422(client):
    r = client.get("/etl_runs/no-such-run")
    assert r.status_code == 404 and "no-such-run" in r.json()["detail"]
    assert client.get("/etl_runs/" + "x" * 65).status_code == 422
    r = client.get("/etl_runs", params={"page_size": 0})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "page_size"
