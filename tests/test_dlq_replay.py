"""The dlq-replay flow after a reference-data fix, on SQLite and PostgreSQL: a users-etl run over the real
DummyJSON users with a share broken leaves one record in the DLQ for an unknown department (`Alchemy`); once
DEPARTMENTS_CSV knows it, one replay turns that record into a user (masked as the pipeline masks), resolves its
entry with the replay's run and leaves the other entries open with their reasons; a second replay changes
nothing. Also: filters, reasons that change with the reference data, and a user stored meanwhile from a newer
observation winning over the replayed record."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from flows.dlq_replay import dlq_replay
from flows.users_etl import users_etl
from models.db import engine_for
from models.settings import BUNDLED_DEPARTMENTS, get_settings
from tasks.users.replay import open_entries, store_replay
from tasks.users.replay_judge import judge_entries, source_fields
from tasks.users.transform import read_departments
from tests.servers.dummyjson import DummyJsonServer, break_users, load_real_users
from tests.tables import rows

ALCHEMY = 40  # break_users' record with an unknown department ("Alchemy")
BROKEN = 13  # records break_users breaks


@pytest.fixture
def replay(settings_env, database_url, prefect_server, tmp_path) -> Iterator:
    """users-etl against a DummyJSON-contract server (`replay.etl(users)`), dlq-replay (`replay(**params)`), and
    `replay.departments(text)`: DEPARTMENTS_CSV set to a copy of the bundled table with `text` appended."""
    settings_env(database_url=database_url, users_page_size=50, extract_retries=0)
    with DummyJsonServer([]) as server:

        def run(**params) -> dict:
            return asyncio.run(dlq_replay(**params))

        def etl(users: list[dict]) -> dict:
            server.set_users(users)
            return asyncio.run(users_etl(api_base=server.base_url, deliver_files=False))

        def departments(extra: str = "", *, without: str | None = None) -> None:
            lines = BUNDLED_DEPARTMENTS.read_text().splitlines()
            kept = [line for line in lines if without is None or not line.startswith(f"{without},")]
            path = tmp_path / f"departments_{len(list(tmp_path.glob('departments_*')))}.csv"
            path.write_text("\n".join(kept) + "\n" + extra)
            settings_env(departments_csv=path)

        run.etl, run.departments, run.url = etl, departments, database_url
        yield run


def entries(url: str) -> dict[int | None, list]:
    """dlq_users by user id: (error_reason, resolved_at, resolved_run_id, resolution, record_hash)."""
    found: dict[int | None, list] = {}
    for row in rows(
        url, "SELECT user_id, error_reason, resolved_at, resolved_run_id, resolution, record_hash FROM dlq_users"
    ):
        found.setdefault(row[0], []).append(tuple(row[1:]))
    return found


def user(url: str, user_id: int):
    found = rows(url, "SELECT * FROM processed_users WHERE id = :id", id=user_id)
    return found[0]._mapping if found else None


def snapshot(url: str) -> tuple[list, list]:
    return (
        [tuple(r) for r in rows(url, "SELECT * FROM processed_users ORDER BY id")],
        [tuple(r) for r in rows(url, "SELECT * FROM dlq_users ORDER BY id")],
    )


def test_a_department_added_after_a_run_turns_its_records_into_users_once(replay):
    from fastapi.testclient import TestClient

    from api.main import create_app

    users, _ = break_users(load_real_users())
    alchemist = users[ALCHEMY]
    first = replay.etl(users)
    assert first["counts"]["invalid"] == BROKEN and first["dlq_reasons"]["department_unknown"] == 1
    before = entries(replay.url)
    [(reason, resolved, *_)] = before[alchemist["id"]]
    assert reason == "department_unknown" and resolved is None
    assert user(replay.url, alchemist["id"]) is None

    replay.departments("Alchemy,ALC\n")
    summary = replay()
    counts = summary["counts"]
    assert (counts["examined"], counts["valid"], counts["still_invalid"]) == (BROKEN, 1, BROKEN - 1)
    assert (counts["inserted"], counts["replayed"], counts["dlq_resolved"], counts["reasons_changed"]) == (1, 1, 1, 0)
    stored = user(replay.url, alchemist["id"])
    assert stored["department"] == "Alchemy" and stored["department_code"] == "ALC"
    assert stored["email"] == alchemist["email"] and stored["status"] == "current"
    assert stored["run_id"] == summary["run_id"]
    # masked as the pipeline masks every record (ssn 197-874-889, card 372693683592457, DE75...3066)
    assert stored["ssn_masked"] == "***-**-4889"
    assert stored["card_number_masked"] == "**** **** **** 2457"
    assert stored["iban_masked"] == "****3066"
    after = entries(replay.url)
    [(_, resolved, resolved_by, resolution, _)] = after[alchemist["id"]]
    assert resolved is not None and (resolved_by, resolution) == (summary["run_id"], "replayed")
    assert {k: v for k, v in after.items() if k != alchemist["id"]} == {
        k: v for k, v in before.items() if k != alchemist["id"]
    }, "the other entries stay open with their reasons"
    assert all(e[1] is None for k, found in after.items() if k != alchemist["id"] for e in found)

    with TestClient(create_app()) as client:
        run = client.get(f"/etl_runs/{summary['run_id']}").json()
        assert run["flow_name"] == "dlq-replay" and run["status"] == "completed"
        assert (run["extracted"], run["valid"], run["invalid"], run["inserted"]) == (BROKEN, 1, BROKEN - 1, 1)
        assert run["dlq_resolved"] == 1 and "department_unknown" not in run["dlq_reasons"]
        assert run["dlq_reasons"]["age_out_of_range"] == 3
        listed = client.get("/etl_runs").json()["data"]
        assert [r["flow_name"] for r in listed] == ["dlq-replay", "users-etl"]
        [entry] = client.get("/dlq", params={"status": "resolved"}).json()["data"]
        assert entry["user_id"] == alchemist["id"] and entry["resolution"] == "replayed"
        assert client.get(f"/users/{alchemist['id']}").json()["department_code"] == "ALC"
        page = client.get(f"/console/runs/{summary['run_id']}")
        assert page.status_code == 200 and "dlq-replay" in page.text

    tables = snapshot(replay.url)
    again = replay()["counts"]
    assert again["examined"] == BROKEN - 1
    assert {
        k: again[k] for k in ("valid", "inserted", "updated", "restored", "replayed", "dlq_resolved")
    } == dict.fromkeys(("valid", "inserted", "updated", "restored", "replayed", "dlq_resolved"), 0)
    assert again["reasons_changed"] == 0
    assert snapshot(replay.url) == tables, "a second replay changes nothing"

    # the next nightly run, with the same departments, finds the replayed user as its own transform makes it
    nightly = replay.etl(users)["counts"]
    assert (nightly["inserted"], nightly["updated"], nightly["unchanged"]) == (0, 0, len(users) - BROKEN + 1)


def test_filters_replay_only_the_matching_entries(replay):
    users, _ = break_users(load_real_users())
    first = replay.etl(users)
    replay.departments("Alchemy,ALC\n")
    before = snapshot(replay.url)

    assert replay(run_id="no-such-run")["counts"]["examined"] == 0
    ages = replay(reason="age_out_of_range")
    assert ages["counts"]["examined"] == 3 and ages["counts"]["valid"] == 0
    assert ages["filters"] == {"reason": "age_out_of_range"}
    assert snapshot(replay.url) == before, "nothing matched the filter that is valid now"
    assert user(replay.url, users[ALCHEMY]["id"]) is None

    done = replay(reason="department_unknown", run_id=first["run_id"])["counts"]
    assert (done["examined"], done["inserted"], done["replayed"]) == (1, 1, 1)
    assert user(replay.url, users[ALCHEMY]["id"])["department_code"] == "ALC"

    with pytest.raises(ValueError, match="no rule name"):
        replay(reason="departmnet_unknown")
    [failed] = rows(
        replay.url, "SELECT status, error FROM etl_runs WHERE flow_name = 'dlq-replay' AND status <> 'completed'"
    )
    assert failed[0] == "failed" and "departmnet_unknown" in failed[1]


def test_open_entries_take_the_reasons_of_todays_reference_data(replay):
    users, _ = break_users(load_real_users())
    replay.etl(users)
    assert {users[i]["company"]["department"] for i in (11, 30, 50)} == {"Accounting"}

    replay.departments(without="Accounting")
    changed = replay()["counts"]
    assert changed["reasons_changed"] == 3 and changed["valid"] == 0
    found = entries(replay.url)
    assert found[users[11]["id"]][0][0] == "age_out_of_range; department_unknown"
    assert found[users[30]["id"]][0][0] == "first_name_missing; department_unknown"
    assert [e[0] for e in found[None] if "id_not_integer" in e[0]] == ["id_not_integer; department_unknown"]
    assert all(e[1] is None for e in found[users[11]["id"]]), "still open"

    replay.departments()
    assert replay()["counts"]["reasons_changed"] == 3
    assert entries(replay.url)[users[11]["id"]][0][0] == "age_out_of_range"


def test_a_user_stored_from_a_newer_observation_wins_over_the_replayed_record(replay):
    """The replay reads its entries; meanwhile a users-etl run stores the user from a newer, valid record;
    what the replay then stores leaves that user and its entry as the run left them."""
    users, _ = break_users(load_real_users())
    replay.etl(users)
    alchemist = users[ALCHEMY]
    replay.departments("Alchemy,ALC\n")
    settings = get_settings()
    engine = engine_for(replay.url)
    judged = judge_entries(
        open_entries(engine), read_departments(Path(settings.departments_csv)), source_fields(settings)
    )
    assert judged.valid.get_column("id").to_list() == [alchemist["id"]]

    newer = copy.deepcopy(users)
    newer[ALCHEMY]["company"]["department"] = "Engineering"
    newer[ALCHEMY]["email"] = "alchemist@example.com"
    second = replay.etl(newer)
    assert second["counts"]["inserted"] == 1

    counts = store_replay(engine, judged, run_id="late-replay", now=datetime.now(UTC))
    assert (counts["inserted"], counts["updated"], counts["replayed"], counts["dlq_resolved"]) == (0, 0, 0, 0)
    stored = user(replay.url, alchemist["id"])
    assert (stored["department"], stored["email"], stored["run_id"]) == (
        "Engineering",
        "alchemist@example.com",
        second["run_id"],
    )
    [(_, resolved, resolved_by, resolution, _)] = entries(replay.url)[alchemist["id"]]
    assert resolved is not None and (resolved_by, resolution) == (second["run_id"], "valid")
    assert replay()["counts"]["valid"] == 0


def test_a_csv_drops_records_replay_with_its_own_fields_and_a_rejected_file_stays_open(replay, settings_env, tmp_path):
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "team.csv").write_text(
        "id,first_name,last_name,email,age,department\n9001,Ada,Lovelace,ada@example.com,36,Alchemy\n"
    )
    (drop / "broken.csv").write_text("id,first_name\n1,Ada\n")  # no email, age or department column
    settings_env(users_csv_dir=drop)
    first = replay.etl(load_real_users()[:5])
    assert first["dlq_reasons"] == {"department_unknown": 1, "csv_malformed": 1}

    replay.departments("Alchemy,ALC\n")
    counts = replay()["counts"]
    assert (counts["examined"], counts["valid"], counts["skipped"], counts["inserted"]) == (2, 1, 1, 1)
    stored = user(replay.url, 9001)
    assert (stored["source"], stored["first_name"], stored["department_code"]) == ("csv", "Ada", "ALC")
    [(reason, resolved, *_)] = entries(replay.url)[None]
    assert reason == "csv_malformed" and resolved is None, "a rejected file has no record to judge again"
