"""Sync semantics over many runs, model-based: hypothesis drives random histories of the source (users new,
changed, changed back, invalid, valid again, gone, back, duplicate ids across pages) through the stages below
the flow, on SQLite and PostgreSQL; after every run the stored users and DLQ entries, and the API's answers,
equal the model's. The whole flow with the HTTP source is in tests/test_sync_flow.py."""

from __future__ import annotations

import copy
import json
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test
from sqlalchemy import text

from models.migrate import upgrade
from models.settings import BUNDLED_DEPARTMENTS
from tasks.extract.users_api.constants import SOURCE
from tasks.staging.batches import RunFiles
from tasks.users.persist import persist_spans
from tasks.users.sync import mark_absent, staged_ids
from tasks.users.transform import read_departments, transform_batch
from tests.servers.dummyjson import load_real_users, staged_lines

MAX_SHARE = 0.25  # of 8-12 users: one or two may go in a run, more trip the guard
TABLES = ("raw_users", "processed_users", "dlq_users")
IDS = st.integers(min_value=1, max_value=12)
EDITS = ("add", "change", "change_back", "remove", "duplicate")


@dataclass
class Model:
    """What the README's sync table says the target holds."""

    users: dict[int, dict] = field(default_factory=dict)  # id -> status, and the last valid content
    entries: dict[tuple, dict] = field(default_factory=dict)  # content -> user_id, open, last run

    def run(self, snapshot: list[dict], run: int) -> None:
        firsts: set[int] = set()
        for rec in snapshot:
            key, uid = content(rec), rec["id"]
            if uid in firsts:  # a later copy of an id in one extraction: the first copy counts
                self.entries[key] = {"user_id": None, "open": True, "run": run}
                continue
            firsts.add(uid)
            if is_valid(rec):
                known = self.users.get(uid)
                self.users[uid] = {"status": "current", "content": key, "first": known["first"] if known else run}
                self.close(lambda e, uid=uid: e["user_id"] == uid)
            else:
                self.close(lambda e, uid=uid, key=key: e["user_id"] == uid and e is not self.entries.get(key))
                self.entries[key] = {"user_id": uid, "open": True, "run": run}
                if uid in self.users:
                    self.users[uid]["status"] = "invalid"
        known = [uid for uid, u in self.users.items() if u["status"] != "deleted"]
        gone = [uid for uid in known if uid not in firsts]
        if known and len(gone) > MAX_SHARE * len(known):
            return
        for uid in gone:
            self.users[uid]["status"] = "deleted"
        self.close(lambda e: e["run"] != run)

    def close(self, which) -> None:
        for entry in self.entries.values():
            if entry["open"] and which(entry):
                entry["open"] = False


def content(rec: dict) -> tuple:
    return rec["id"], rec["firstName"], rec["email"], rec["age"]


def is_valid(rec: dict) -> bool:
    return 18 <= rec["age"] <= 65


class SourceHistory(RuleBasedStateMachine):
    """The source's users between runs, changed by rules; `run` pushes a snapshot through the stages."""

    url: str
    client: object  # a TestClient on the API over the same database
    templates: list[dict]
    departments: pl.DataFrame
    workdir: Path

    @initialize()
    def start(self) -> None:
        from models.db import engine_for

        self.engine = engine_for(self.url)
        with self.engine.begin() as conn:
            for table in TABLES:
                conn.execute(text(f"DELETE FROM {table}"))
        self.source: dict[int, dict] = {}
        self.duplicates: list[dict] = []
        self.model, self.runs, self.version = Model(), 0, 0
        self.checked, self.api_checked = None, 0
        self.dir = Path(tempfile.mkdtemp(dir=self.workdir))
        self.as_of = datetime(2026, 1, 1, tzinfo=UTC)
        for uid in range(1, 9):
            self.source[uid] = self._record(uid)

    def _record(self, uid: int, *, age: int = 30, email: str | None = None) -> dict:
        self.version += 1
        rec = copy.deepcopy(self.templates[uid % len(self.templates)])
        rec.update(id=uid, firstName=f"First{uid}", age=age, email=email or f"user{uid}@example.com")
        return rec

    @rule(
        edits=st.lists(
            st.tuples(st.sampled_from(EDITS), IDS, st.sampled_from([25, 40, 12, 70])), min_size=1, max_size=8
        )
    )
    def edit(self, edits: list[tuple[str, int, int]]) -> None:
        """Changes to the source between two runs, several users at a time."""
        for what, uid, age in edits:
            if what == "add":  # new, or back after it left
                self.source.setdefault(uid, self._record(uid))
            elif uid not in self.source:
                continue
            elif what == "change":  # to another age: 18-65 is valid, the rest not
                self.source[uid] = {**self.source[uid], "age": age, "email": f"u{uid}.{age}@example.com"}
            elif what == "change_back":  # to the values it was added with
                self.source[uid] = self._record(uid)
            elif what == "remove":
                del self.source[uid]
            else:  # a second copy of the id, with other content, on a later page
                self.duplicates.append({**self.source[uid], "firstName": f"Copy{self.version}"})
                self.version += 1

    @rule(batch_records=st.integers(min_value=1, max_value=12), reorder=st.randoms(use_true_random=False))
    def run(self, batch_records: int, reorder) -> None:
        users = list(self.source.values())
        reorder.shuffle(users)
        snapshot = users + [d for d in self.duplicates if d["id"] in self.source]
        self.duplicates = []
        self.runs += 1
        self.as_of += timedelta(hours=1)
        run_through_stages(
            self.engine,
            snapshot,
            self.departments,
            self.dir / f"run{self.runs}",
            run_id=f"run{self.runs}",
            as_of=self.as_of,
            batch_records=batch_records,
        )
        self.model.run(snapshot, self.runs)

    @invariant()
    def stored_equals_model(self) -> None:
        if not self.runs or self.checked == (self.runs, "db"):  # (edits between runs change nothing stored)
            return
        self.checked = (self.runs, "db")
        with self.engine.connect() as conn:
            users = {
                r.id: (r.status, r.first_name, r.email, r.age)
                for r in conn.execute(text("SELECT id, status, first_name, email, age FROM processed_users"))
            }
            entries = [
                (r.user_id, json.loads(r.data), r.resolved_at is None)
                for r in conn.execute(text("SELECT user_id, data, resolved_at FROM dlq_users"))
            ]
        assert {uid: u["status"] for uid, u in self.model.users.items()} == {uid: u[0] for uid, u in users.items()}
        for uid, u in self.model.users.items():  # the values kept are the last valid ones
            assert users[uid][1:] == u["content"][1:], uid
        stored = {content(d): (uid, is_open) for uid, d, is_open in entries}
        expected = {key: (e["user_id"], e["open"]) for key, e in self.model.entries.items()}
        assert stored == expected

    @invariant()
    def the_api_answers_as_the_model(self) -> None:
        """What a user of the API sees: exactly the current users with their current values, exactly the open
        DLQ entries, each source user counted once."""
        if not self.runs or self.api_checked == self.runs:
            return
        self.api_checked = self.runs
        current = {uid: u["content"][2] for uid, u in self.model.users.items() if u["status"] == "current"}
        listed = self.client.get("/users", params={"page_size": 500}).json()
        assert {u["id"]: u["email"] for u in listed["data"]} == current and listed["total"] == len(current)
        open_entries = sum(e["open"] for e in self.model.entries.values())
        assert self.client.get("/dlq", params={"page_size": 500}).json()["total"] == open_entries
        stats = self.client.get("/stats").json()
        assert (stats["processed_users"], stats["dlq_users"]) == (len(current), open_entries)
        for uid, u in self.model.users.items():
            answer = self.client.get(f"/users/{uid}")
            assert answer.status_code == (200 if u["status"] == "current" else 404), answer.text


def run_through_stages(
    engine,
    snapshot: list[dict],
    departments: pl.DataFrame,
    run_dir: Path,
    *,
    run_id: str,
    as_of: datetime,
    batch_records: int,
) -> None:
    """What users-etl does with one API extraction, batch by batch: stage, transform, persist, then mark the
    absent (the extraction was complete)."""
    run_dir.mkdir(parents=True)
    raw, processed, dlq, keys = (run_dir / name for name in ("raw.jsonl", "etl.jsonl", "dlq.jsonl", "keys.arrows"))
    for path in (processed, dlq, keys):
        path.write_bytes(b"")
    seen, key_spans = None, []
    with raw.open("wb") as f:
        for start in range(0, max(len(snapshot), 1), batch_records):
            offset = f.tell()
            f.write(staged_lines(snapshot[start : start + batch_records]))
            f.flush()
            out = transform_batch.fn(
                departments,
                raw_path=str(raw),
                offset=offset,
                length=f.tell() - offset,
                processed_path=str(processed),
                dlq_path=str(dlq),
                keys_path=str(keys),
                seen_ids=seen,
            )
            seen = out.ids
            files = RunFiles(processed=str(processed), dlq=str(dlq), raw_keys=str(keys))
            batch = out.batch(source=SOURCE, as_of=as_of.isoformat(), raw_path=str(raw), files=files)
            persist_spans(engine, batch, run_id=run_id)
            if out.raw_keys:
                key_spans.append((str(keys), out.raw_keys))
    mark_absent(
        engine, source=SOURCE, seen_ids=staged_ids(key_spans), run_id=run_id, now=datetime.now(UTC), max_share=MAX_SHARE
    )


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_history_matches_the_model(kind, request, tmp_path, settings_env, monkeypatch):
    from fastapi.testclient import TestClient

    from api import crud_users
    from api.main import create_app

    # the API's totals may trail a commit by up to this long; here runs follow each other within milliseconds
    monkeypatch.setattr(crud_users, "VERSION_CHECK_SECONDS", 0.0)

    url = f"sqlite:///{tmp_path / 'sync.db'}" if kind == "sqlite" else request.getfixturevalue("pg_database")
    upgrade(url)
    settings_env(database_url=url, api_key=None, rate_limit_read="")  # checks, not a client to limit
    SourceHistory.url = url
    SourceHistory.templates = load_real_users()[:12]
    SourceHistory.departments = read_departments(BUNDLED_DEPARTMENTS)
    SourceHistory.workdir = tmp_path
    with TestClient(create_app()) as SourceHistory.client:
        run_state_machine_as_test(
            SourceHistory,
            settings=settings(
                max_examples=35 if kind == "sqlite" else 20,  # (CI time: 2 cores run the whole suite)
                stateful_step_count=25,
                deadline=None,
                derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
            ),
        )
