"""users-etl end to end against a loopback DummyJSON server and real SQLite / PostgreSQL (no mocks)."""

from __future__ import annotations

import asyncio
import io
import json
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
from prefect import get_client
from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterStartTime
from sqlalchemy import text

from dev.prefect_server import run_artifacts
from dev.sample_api import DummyJsonServer, Fault
from flows.users_etl import users_etl
from models.db import engine_for
from tasks.extract.dummyjson.constants import CHECKPOINT_KEY
from tasks.staging.batches import RunFiles
from tests.conftest import migrated
from tests.servers.dummyjson import break_users, load_real_users, staged_lines

pytestmark = pytest.mark.usefixtures("prefect_server")


def rows(url: str, sql: str) -> list:
    with engine_for(url).connect() as conn:
        return conn.execute(text(sql)).all()


def count(url: str, table: str) -> int:
    return rows(url, f"SELECT count(*) FROM {table}")[0][0]


@pytest.fixture
def pipeline_env(settings_env, database_url, tmp_path):
    settings_env(database_url=database_url, users_page_size=50, extract_retries=2)
    return database_url


def test_real_users_with_invalid_share_give_exact_counts(pipeline_env, tmp_path):
    url = pipeline_env
    users, expected = break_users(load_real_users())
    with DummyJsonServer(users) as server:
        summary = asyncio.run(users_etl(api_base=server.base_url, deliver_files=False))
        assert {limit for limit, _ in server.requests} == {50}

    n_bad = len(expected)
    counts = summary["counts"]
    assert counts["extracted"] == len(users) == 208
    assert counts["invalid"] == n_bad and counts["valid"] == 208 - n_bad
    assert count(url, "processed_users") == 208 - n_bad
    assert count(url, "dlq_users") == n_bad
    assert count(url, "raw_users") == 208

    dlq = rows(url, "SELECT error_reason, data FROM dlq_users")
    got = {frozenset(reason.split("; ")) for reason, _ in dlq}
    assert got == {frozenset(r) for r in expected.values()}
    assert all(reason for reason, _ in dlq)

    # what the Prefect UI shows for the run: its stage times and a summary with the same counts
    artifacts = run_artifacts(summary["run_id"])
    assert set(artifacts) == {"users-etl-stages", "users-etl-summary"}
    assert {row["stage"] for row in json.loads(artifacts["users-etl-stages"])} == {"extract", "transform", "persist"}
    assert f"| 208 | {208 - n_bad} | {n_bad} | {208 - n_bad} |" in artifacts["users-etl-summary"]

    run = rows(url, "SELECT status, extracted, valid, invalid, inserted FROM etl_runs")
    assert run == [("completed", 208, 208 - n_bad, n_bad, 208 - n_bad)]

    # no password anywhere: database tables and every staged file
    secrets = [u["password"] for u in load_real_users()]
    for table in ("raw_users", "processed_users", "dlq_users", "etl_runs", "etl_checkpoints"):
        dump = " ".join(str(r) for r in rows(url, f"SELECT * FROM {table}"))
        assert '"password"' not in dump
        assert not [s for s in secrets if s in dump], table
    for path in summary["files"].values():
        content = Path(path).read_text()
        assert not [s for s in secrets if s in content], path
    # raw keeps the sensitive fields, processed and DLQ do not
    ssns = [u["ssn"] for u in load_real_users()]
    assert any(s in Path(summary["files"]["raw"]).read_text() for s in ssns)
    for kind in ("processed", "dlq"):
        assert not any(s in Path(summary["files"][kind]).read_text() for s in ssns)
    assert pl.read_ndjson(summary["files"]["processed"]).height == 208 - n_bad


def test_rerun_adds_no_duplicates_and_counts_changes(pipeline_env):
    url = pipeline_env
    users = load_real_users()
    users[7] = {**users[7], "email": "nobody-at-example"}  # fails the rules in every run
    with DummyJsonServer(users) as server:
        first = asyncio.run(users_etl(api_base=server.base_url, deliver_files=False))
        second = asyncio.run(users_etl(api_base=server.base_url, deliver_files=False))
        assert second["counts"]["inserted"] == 0 and second["counts"]["unchanged"] == 207
        changed = [dict(u) for u in users]
        changed[5] = {**changed[5], "lastName": "Renamed"}
        server.set_users(changed + [{**users[0], "id": 9999, "email": "new.person@example.com"}])
        third = asyncio.run(users_etl(api_base=server.base_url, deliver_files=False))
    assert (third["counts"]["inserted"], third["counts"]["updated"], third["counts"]["unchanged"]) == (1, 1, 206)
    assert count(url, "processed_users") == 208
    renamed = rows(
        url,
        f"SELECT last_name, run_id, source_updated_at IS NOT NULL, updated_at > first_seen_at "
        f"FROM processed_users WHERE id = {users[5]['id']}",
    )
    assert renamed == [("Renamed", third["run_id"], True, True)]
    assert rows(url, f"SELECT run_id FROM processed_users WHERE id = {users[6]['id']}") == [(first["run_id"],)]
    assert count(url, "raw_users") == 210  # two new distinct records, nothing repeated
    # the failure seen in each run is stored once, with the first run that saw it and the last
    assert rows(url, "SELECT run_id, last_run_id, last_seen_at > inserted_at FROM dlq_users") == [
        (first["run_id"], third["run_id"], True)
    ]


def test_500_then_200_is_retried(pipeline_env):
    with DummyJsonServer(load_real_users()) as server:
        server.faults.extend([Fault(500), Fault(502)])
        summary = asyncio.run(users_etl(api_base=server.base_url, deliver_files=False))
    assert summary["counts"]["extracted"] == 208
    assert count(pipeline_env, "processed_users") == 208


def test_429_waits_for_retry_after(pipeline_env):
    with DummyJsonServer(load_real_users()) as server:
        server.faults.append(Fault(429, {"Retry-After": "1"}))
        summary = asyncio.run(users_etl(api_base=server.base_url, deliver_files=False))
        gap = server.request_times[1] - server.request_times[0]
    assert summary["counts"]["extracted"] == 208
    assert gap >= 0.95  # the client honoured the server's Retry-After before asking again


def test_other_4xx_fails_at_once_naming_url_and_status(pipeline_env):
    with DummyJsonServer(load_real_users()) as server:
        server.faults.append(Fault(404))
        state = asyncio.run(users_etl(api_base=server.base_url, deliver_files=False, return_state=True))
        assert len(server.requests) == 1  # not retried
    assert state.is_failed()
    assert "HTTP 404" in state.message and server.base_url in state.message
    status, stage, error = rows(pipeline_env, "SELECT status, failed_stage, error FROM etl_runs")[0]
    assert (status, stage) == ("failed", "extract") and "HTTP 404" in error


@pytest.mark.parametrize("extract_first", [False, True])
def test_source_down_keeps_checkpoint_and_next_run_resumes(pipeline_env, extract_first):
    url = pipeline_env
    users = load_real_users()
    with DummyJsonServer(users) as server:
        server.fail_when = lambda limit, skip: Fault(503) if skip >= 100 else None
        state = asyncio.run(
            users_etl(
                api_base=server.base_url,
                batch_records=50,
                deliver_files=False,
                return_state=True,
                extract_first=extract_first,
            )
        )
        assert state.is_failed() and "HTTP 503" in state.message
        cursor, status, staged = rows(url, "SELECT cursor, status, staged_records FROM etl_checkpoints")[0]
        assert (cursor, status, staged) == (100, "failed", 100)
        # streaming, what was staged before the source went down went all the way through; extract first,
        # nothing went on (it waits in the staged file for the next run)
        assert count(url, "raw_users") == (0 if extract_first else 100)
        assert rows(url, "SELECT status, failed_stage FROM etl_runs") == [("failed", "extract")]

        server.fail_when = None
        server.requests.clear()
        summary = asyncio.run(
            users_etl(api_base=server.base_url, batch_records=50, deliver_files=False, extract_first=extract_first)
        )
        assert server.requests[0] == (50, 100)  # resumed, did not start over
    assert summary["counts"]["extracted"] == 208
    assert count(url, "processed_users") == 208 and count(url, "raw_users") == 208
    assert pl.read_ndjson(summary["files"]["raw"]).get_column("id").n_unique() == 208
    statuses = sorted(r[0] for r in rows(url, "SELECT status FROM etl_runs"))
    assert statuses == ["completed", "failed"]


def test_a_batch_failing_after_some_of_its_pages_were_written_stages_each_record_once(pipeline_env):
    """Extract writes and checkpoints each page as it arrives: a batch failing once on its third page is
    retried from that page (the two before it stay staged); one failing on its fourth at every try fails the
    run with its checkpoint on that page, where the next run resumes. The staged file and the raw layer hold
    each record once."""
    url = pipeline_env
    users = load_real_users()
    with DummyJsonServer(users) as server:
        once = iter([Fault(500)])
        server.fail_when = lambda limit, skip: next(once, None) if skip == 100 else None
        summary = asyncio.run(users_etl(api_base=server.base_url, batch_records=200, deliver_files=False))
        assert [skip for _, skip in server.requests[:4]] == [0, 50, 100, 100]  # the retry went on from its page
    staged = pl.read_ndjson(summary["files"]["raw"])
    assert staged.height == 208 and staged.get_column("id").n_unique() == 208
    assert count(url, "raw_users") == 208

    runs_before = count(url, "etl_runs")
    with DummyJsonServer(users) as server:
        server.fail_when = lambda limit, skip: Fault(503) if skip == 150 else None  # every try
        state = asyncio.run(
            users_etl(api_base=server.base_url, batch_records=200, deliver_files=False, return_state=True)
        )
        assert state.is_failed()
        [(raw_path, staged_bytes, cursor)] = rows(
            url, f"SELECT staged_path, staged_bytes, cursor FROM etl_checkpoints WHERE source = '{CHECKPOINT_KEY}'"
        )
        assert cursor == 150 and Path(raw_path).stat().st_size == staged_bytes  # its three pages before the failing one
        server.fail_when = None
        server.requests.clear()
        summary = asyncio.run(users_etl(api_base=server.base_url, batch_records=200, deliver_files=False))
        assert server.requests[0] == (50, 150)  # resumed at the failing page
    staged = pl.read_ndjson(summary["files"]["raw"])
    assert staged.height == 208 and staged.get_column("id").n_unique() == 208
    assert count(url, "etl_runs") == runs_before + 2


def test_a_failing_persist_fails_the_run_and_a_rerun_completes_it(pipeline_env):
    """The database refuses one user's row: the run fails naming persist (not the stages it stopped), the
    batches before it are stored, and once the cause is gone a re-run stores the rest without duplicates."""
    url = pipeline_env
    with engine_for(url).begin() as conn:
        if conn.dialect.name == "sqlite":
            conn.execute(
                text(
                    "CREATE TRIGGER refuse_150 BEFORE INSERT ON processed_users WHEN NEW.id = 150 "
                    "BEGIN SELECT RAISE(ABORT, 'user 150 refused'); END"
                )
            )
        else:
            conn.execute(
                text(
                    "CREATE FUNCTION refuse_150() RETURNS trigger AS $$ BEGIN IF NEW.id = 150 THEN "
                    "RAISE EXCEPTION 'user 150 refused'; END IF; RETURN NEW; END $$ LANGUAGE plpgsql"
                )
            )
            conn.execute(
                text(
                    "CREATE TRIGGER refuse_150 BEFORE INSERT ON processed_users FOR EACH ROW "
                    "EXECUTE FUNCTION refuse_150()"
                )
            )
    users = load_real_users()
    with DummyJsonServer(users) as server:
        state = asyncio.run(
            users_etl(api_base=server.base_url, batch_records=50, deliver_files=False, return_state=True)
        )
        assert state.is_failed() and "user 150 refused" in state.message
        status, stage, error = rows(url, "SELECT status, failed_stage, error FROM etl_runs")[0]
        assert (status, stage) == ("failed", "persist") and "user 150 refused" in error
        stored = count(url, "processed_users")
        assert 0 < stored < 150  # the batches before the refused one are in
        with engine_for(url).begin() as conn:
            conn.execute(
                text("DROP TRIGGER refuse_150" + ("" if conn.dialect.name == "sqlite" else " ON processed_users"))
            )
        summary = asyncio.run(users_etl(api_base=server.base_url, batch_records=50, deliver_files=False))
    assert summary["counts"]["inserted"] == 208 - stored
    assert count(url, "processed_users") == 208 and count(url, "raw_users") == 208


def test_schema_drift_goes_to_the_dlq_not_a_crash(pipeline_env):
    users = load_real_users()
    drifted = [{**{("given_name" if k == "firstName" else k): v for k, v in u.items()}} for u in users[:20]] + users[
        20:
    ]
    with DummyJsonServer(drifted) as server:
        summary = asyncio.run(users_etl(api_base=server.base_url, deliver_files=False))
    assert summary["counts"]["invalid"] == 20
    assert summary["dlq_reasons"] == {"first_name_missing": 20}


def test_database_from_a_sqlalchemy_connector_block(settings_env, tmp_path):
    """The flow can take its database from a prefect-sqlalchemy block instead of DATABASE_URL."""
    from prefect_sqlalchemy import ConnectionComponents, SqlAlchemyConnector, SyncDriver

    db = tmp_path / "from-block.db"
    migrated(f"sqlite:///{db}")
    SqlAlchemyConnector(connection_info=ConnectionComponents(driver=SyncDriver.SQLITE_PYSQLITE, database=str(db))).save(
        "sluice-test-db", overwrite=True
    )
    settings_env(database_url=f"sqlite:///{tmp_path / 'not-this-one.db'}")
    with DummyJsonServer(load_real_users()[:40]) as server:
        summary = asyncio.run(users_etl(api_base=server.base_url, deliver_files=False, database_block="sluice-test-db"))
    assert summary["counts"]["inserted"] == 40
    assert count(f"sqlite:///{db}", "processed_users") == 40
    assert (
        not (tmp_path / "not-this-one.db").exists()
        or count(f"sqlite:///{tmp_path / 'not-this-one.db'}", "processed_users") == 0
    )


def test_a_crashed_run_is_marked_at_the_next_start(pipeline_env):
    """A run whose process died never reported back: the next run marks it crashed (Prefect knows no such run)."""
    import uuid
    from datetime import UTC, datetime

    from sqlmodel import Session

    from models.runs import EtlRun

    ghost = str(uuid.uuid4())
    with Session(engine_for(pipeline_env)) as session:
        session.add(EtlRun(id=ghost, flow_name="users-etl", status="running", started_at=datetime.now(UTC)))
        session.commit()
    with DummyJsonServer(load_real_users()[:5]) as server:
        summary = asyncio.run(users_etl(api_base=server.base_url, deliver_files=False))
    status, error = rows(pipeline_env, f"SELECT status, error FROM etl_runs WHERE id = '{ghost}'")[0]
    assert status == "crashed" and summary["run_id"] in error


def _transformed_real_users(
    tmp_path: Path, id_offset: int = 0, *, repeat: int = 0, keys: bool = False
) -> tuple[dict, dict, int]:
    """The real users (ids moved by `id_offset`) with a broken share, staged and transformed in `tmp_path`:
    (the batch as persist receives it, invalid count). `repeat`: the first users staged again at the end (same lines, same ids);
    `keys`: transform stages the raw lines' keys too, as the flow has it do."""
    from models.settings import BUNDLED_DEPARTMENTS
    from tasks.users.transform import read_departments, transform_batch

    users, expected = break_users([u | {"id": u["id"] + id_offset} for u in load_real_users()])
    users += users[:repeat]
    tmp_path.mkdir(parents=True, exist_ok=True)
    raw = tmp_path / "raw.jsonl"
    raw.write_bytes(staged_lines(users))
    files = {"raw": str(raw), "processed": str(tmp_path / "p.jsonl"), "dlq": str(tmp_path / "d.jsonl")}
    if keys:
        files["raw_keys"] = str(tmp_path / "keys.arrows")
    out = transform_batch.fn(
        read_departments(BUNDLED_DEPARTMENTS),
        raw_path=str(raw),
        offset=0,
        length=raw.stat().st_size,
        processed_path=files["processed"],
        dlq_path=files["dlq"],
        keys_path=files.get("raw_keys"),
    )
    run_files = RunFiles(processed=files["processed"], dlq=files["dlq"], raw_keys=files.get("raw_keys", ""))
    as_of = datetime.now(UTC).isoformat()
    return out.batch(source="dummyjson", as_of=as_of, raw_path=str(raw), files=run_files), len(expected)


def test_a_retried_persist_batch_adds_nothing_twice(pipeline_env, tmp_path):
    """The persist task's body run twice on the same spans (what a retry does) leaves the same rows."""
    from tasks.users.persist import persist_batch

    batch, invalid = _transformed_real_users(tmp_path)
    engine = engine_for(pipeline_env)
    first = persist_batch.fn(engine, batch, run_id="r1")
    again = persist_batch.fn(engine, batch, run_id="r1")
    assert (first["inserted"], first["raw_inserted"], first["dlq_inserted"]) == (208 - invalid, 208, invalid)
    assert (again["inserted"], again["updated"], again["raw_inserted"], again["dlq_inserted"]) == (0, 0, 0, 0)
    assert [count(pipeline_env, t) for t in ("raw_users", "processed_users", "dlq_users")] == [
        208,
        208 - invalid,
        invalid,
    ]


def test_persist_in_pieces_stores_what_the_batch_taken_whole_would(pipeline_env, tmp_path):
    """persist works through a batch a few records at a time inside its one transaction: tables and counts
    are those of the batch taken whole, a record repeated in a later piece is stored and counted once, and
    each raw line keeps its own id and hash (transform's staged keys are sliced along with the lines)."""
    from tasks.staging.files import split_spans
    from tasks.users.persist import persist_spans, raw_frame

    # the first 3 users (valid) again at the end of the batch: the same raw lines, a duplicate id each
    batch, invalid = _transformed_real_users(tmp_path, repeat=3, keys=True)
    raw = Path(batch.raw_path)
    piece = 4096
    assert len(split_spans(raw, piece)) > 50  # a few records a piece

    whole_url = migrated(f"sqlite:///{tmp_path / 'whole.db'}")
    whole = persist_spans(engine_for(whole_url), batch, run_id="r1", piece_bytes=1 << 30)
    pieces = persist_spans(engine_for(pipeline_env), batch, run_id="r1", piece_bytes=piece)
    assert (
        pieces
        == whole
        == {
            "inserted": 208 - invalid,
            "updated": 0,
            "unchanged": 0,
            "restored": 0,
            "invalidated": 0,
            "raw_inserted": 208,
            "dlq_inserted": invalid + 3,
            "dlq_opened": invalid + 3,
            "dlq_resolved": 0,
        }
    )

    truth = raw_frame(raw.read_bytes()).select("source_id", "record_hash", "data").rows()
    raw_sql = "SELECT source_id, record_hash, data FROM raw_users"
    assert sorted(rows(pipeline_env, raw_sql)) == sorted(rows(whole_url, raw_sql)) == sorted(truth)
    dlq_sql = "SELECT record_hash, error_reason, data FROM dlq_users"
    assert sorted(rows(pipeline_env, dlq_sql)) == sorted(rows(whole_url, dlq_sql))
    processed_sql = (
        "SELECT id, email, ssn_masked, card_number_masked, department_code, record_hash FROM processed_users"
    )
    assert sorted(rows(pipeline_env, processed_sql)) == sorted(rows(whole_url, processed_sql))
    assert count(pipeline_env, "processed_users") == 208 - invalid


@pytest.mark.parametrize("checkpoint_bytes", [None, 1], ids=["copied-beside-the-writer", "emptied-every-batch"])
def test_sqlite_bulk_load_checkpoints_beside_the_writer_and_keeps_the_wal_small(
    settings_env, tmp_path, checkpoint_bytes
):
    """Under deferred_checkpoints each batch is committed (another connection sees it at once), the WAL is
    reused batch after batch instead of growing (copied into the database file beside the writer, or, once
    it holds `checkpoint_bytes`, emptied before the next batch), and at the end it is folded into the
    database file and emptied; the pool's connections checkpoint on their own again."""
    from models.db import CHECKPOINT_WAL_BYTES, deferred_checkpoints
    from tasks.users.persist import persist_batch

    settings_env()
    url = migrated(f"sqlite:///{tmp_path / 'bulk.db'}")
    wal = tmp_path / "bulk.db-wal"
    engine = engine_for(url)
    sizes, raw_inserted = [], 0
    with deferred_checkpoints(engine, checkpoint_bytes=checkpoint_bytes or CHECKPOINT_WAL_BYTES):
        for n in range(4):
            batch, invalid = _transformed_real_users(tmp_path / f"batch{n}", id_offset=1000 * n)
            out = persist_batch.fn(engine, batch, run_id="r1")
            raw_inserted += out["raw_inserted"]
            assert count(url, "processed_users") == (n + 1) * (208 - invalid)
            sizes.append(wal.stat().st_size)
    assert sizes[0] > 0 and sizes[-1] < 1.5 * sizes[0], sizes  # four batches' frames would be 4x one
    assert wal.stat().st_size == 0
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 1000
    assert count(url, "raw_users") == raw_inserted > 4 * 200  # records broken the same way are one version


def test_sqlite_bulk_load_writes_through_one_connection_whatever_runs_between_its_batches(settings_env, tmp_path):
    """A pooled SQLite connection keeps its page cache while it waits in the pool. Other work between
    persist's batches (run updates, extract's checkpoints, the checkpointer) takes connections too: the
    batches must still go through one connection, or each connection they pass through keeps a full cache
    (seen with 32 MB caches: 79 MB of SQLite memory in a 1M run against 43 MB through one connection)."""
    from sqlalchemy import event

    from models.db import deferred_checkpoints
    from tasks import runs
    from tasks.users.persist import persist_batch

    settings_env()
    url = migrated(f"sqlite:///{tmp_path / 'bulk.db'}")
    engine = engine_for(url)
    writers = set()

    def trace(dbapi_conn, _record, _proxy) -> None:  # every statement each pooled connection runs
        def note(statement: str) -> None:
            if statement.startswith("INSERT OR FAIL INTO processed_users"):
                writers.add(id(dbapi_conn))

        dbapi_conn.set_trace_callback(note)

    event.listen(engine, "checkout", trace)
    try:
        runs.start_run(engine, run_id="r1", flow_name="users-etl")
        with deferred_checkpoints(engine):
            for n in range(4):
                batch, invalid = _transformed_real_users(tmp_path / f"batch{n}", id_offset=1000 * n)
                persist_batch.fn(engine, batch, run_id="r1")
                with engine.connect() as other, engine.connect() as another:  # two sessions between batches
                    runs.update_run(engine, run_id="r1", extracted=n)
                    other.exec_driver_sql("SELECT count(*) FROM etl_runs").scalar()
                    another.exec_driver_sql("SELECT count(*) FROM raw_users").scalar()
    finally:
        event.remove(engine, "checkout", trace)
    assert count(url, "processed_users") == 4 * (208 - invalid)
    assert len(writers) == 1, f"the batches went through {len(writers)} connections"


def test_sqlite_statements_come_in_a_few_shapes_whatever_the_batch_sizes(settings_env, tmp_path):
    """Python's sqlite3 keeps up to 128 prepared statements per connection, and a multi-row INSERT or a long
    IN list holds hundreds of KB to a MB prepared. One statement per row count (each piece's remainder, each
    batch's number of keys) filled that cache as a run went on: SQLite's memory grew from 15 MB at 100k users
    to 23 MB at 1M. Inserts and lookups of every size must store every row and find every key (no more)
    with a handful of statement shapes: inserts in a few sizes, each lookup one statement whatever the keys."""
    from sqlalchemy import Column, Integer, MetaData, String, Table

    from tasks.bulk import bulk_insert, lookup

    settings_env()
    engine = engine_for(migrated(f"sqlite:///{tmp_path / 'shapes.db'}"))
    table = Table("t", MetaData(), Column("id", Integer, primary_key=True), Column("a", String), Column("b", String))
    table.create(engine)
    sizes: dict[str, set[int]] = {"insert": set(), "in": set()}
    shapes: set[str] = set()

    def note(sql: str) -> None:  # the statements as SQLite runs them, values bound in
        if sql.startswith("INSERT OR FAIL INTO t "):
            sizes["insert"].add(sql.count("), (") + 1)
        elif "json_each(" in sql:
            shapes.add(sql.split("json_each(", 1)[0])
        elif " IN (" in sql:
            sizes["in"].add(sql.split(" IN (", 1)[1].count(",") + 1)

    heights, start = range(1, 700, 7), 0
    with engine.begin() as conn:
        conn.connection.driver_connection.set_trace_callback(note)
        for h in heights:
            ids = range(start, start + h)
            bulk_insert(
                conn, table, pl.DataFrame({"id": ids, "a": [f"a{i}" for i in ids], "b": [f"b {i}" for i in ids]})
            )
            wanted = list(range(start - h, start + h))  # h stored before this batch (fewer at first), h just stored
            stored = [i for i in wanted if i >= 0]
            assert sorted(lookup(conn, table, "id", ["b"], pl.Series(wanted))) == [(i, f"b {i}") for i in stored]
            plain = pl.Series([f"a{i}" for i in wanted])
            assert sorted(lookup(conn, table, "a", ["id"], plain)) == sorted((f"a{i}", i) for i in stored)
            spaced = pl.Series([f"b {i}" for i in wanted])
            assert sorted(lookup(conn, table, "b", ["id"], spaced)) == sorted((f"b {i}", i) for i in stored)
            start += h
        conn.connection.driver_connection.set_trace_callback(None)
    assert count(f"sqlite:///{tmp_path / 'shapes.db'}", "t") == sum(heights)
    assert sizes["insert"] <= {1 << b for b in range(8)}, sorted(sizes["insert"])  # 1 ... 128 rows
    assert len(sizes["in"]) <= 12 and all(n & (n - 1) == 0 for n in sizes["in"]), sorted(sizes["in"])
    assert not sizes["in"], sorted(sizes["in"])  # no lookup expands into an IN list
    assert len(shapes) == 3, shapes  # one for each of the three lookups


AWKWARD_TEXTS = ["\\N", "", None, "a,b", 'say "hi"', "back\\slash", "ü €", '{"k": "v, \\"w\\""}', " padded "]


def test_bulk_insert_stores_awkward_text_as_it_is(database_url):
    """COPY's CSV on PostgreSQL (multi-row INSERTs on SQLite): a text that reads \\N is text, not a null;
    quotes, commas, backslashes, blanks and non-ASCII text come back as they went in; a null stays null."""
    from sqlalchemy import Boolean, Column, Integer, MetaData, String, Table

    from tasks.bulk import bulk_insert

    engine = engine_for(database_url)
    table = Table(
        "awkward", MetaData(), Column("id", Integer, primary_key=True), Column("a", String), Column("ok", Boolean)
    )
    table.drop(engine, checkfirst=True)
    table.create(engine)
    try:
        df = pl.DataFrame(
            {"id": range(len(AWKWARD_TEXTS)), "a": AWKWARD_TEXTS, "ok": [i % 2 == 0 for i in range(len(AWKWARD_TEXTS))]}
        )
        with engine.begin() as conn:
            bulk_insert(conn, table, df)
            stored = conn.exec_driver_sql("SELECT id, a, ok FROM awkward ORDER BY id").all()
        assert [tuple(r) for r in stored] == list(df.iter_rows())
    finally:
        table.drop(engine)


def test_lookup_finds_every_stored_key_and_no_other(database_url):
    """Keys go to the database as one parameter Polars writes: ids, hashes and texts an array literal or JSON
    must quote or escape each find exactly the stored keys among those asked for, nulls and repeats included,
    on both databases."""
    from sqlalchemy import BigInteger, Column, MetaData, String, Table

    from tasks.bulk import bulk_insert, lookup

    engine = engine_for(database_url)
    table = Table(
        "lookups",
        MetaData(),
        Column("id", BigInteger, primary_key=True),
        Column("h", String, unique=True),
        Column("t", String, unique=True),
    )
    table.drop(engine, checkfirst=True)
    table.create(engine)
    odd = [t for t in AWKWARD_TEXTS if t] + [
        "{a,b}",
        "NULL",
        "x y",
        "tab\there",
        "new\nline",
    ]  # texts an array literal or JSON must quote
    try:
        n = 5_000
        stored = pl.DataFrame(
            {
                "id": range(0, 2 * n, 2),
                "h": [f"{i:064x}" for i in range(0, 2 * n, 2)],
                "t": [odd[i % len(odd)] * (1 + i // len(odd)) for i in range(n)],
            }
        )
        with engine.begin() as conn:
            bulk_insert(conn, table, stored)
            asked_ids = pl.Series([*range(2 * n), None, 4, 4, 2**40])
            assert sorted(lookup(conn, table, "id", ["h"], asked_ids)) == sorted(stored.select("id", "h").iter_rows())
            asked_hashes = pl.Series([f"{i:064x}" for i in range(2 * n)] + [None, "ab-c.d:e_f"])
            assert sorted(lookup(conn, table, "h", ["id"], asked_hashes)) == sorted(
                stored.select("h", "id").iter_rows()
            )
            asked_texts = pl.concat([stored.get_column("t"), pl.Series(["not stored", None, "", "\\N"])])
            assert sorted(lookup(conn, table, "t", ["id"], asked_texts)) == sorted(stored.select("t", "id").iter_rows())
            assert lookup(conn, table, "id", ["h"], pl.Series([], dtype=pl.Int64)) == []
            assert lookup(conn, table, "h", ["id"], pl.Series([None], dtype=pl.String)) == []
    finally:
        table.drop(engine)


def test_copy_csv_comes_in_slices_that_add_up_to_the_frame():
    """The CSV for a COPY is rendered a slice of the frame at a time (a piece's whole CSV was held twice at
    once); the slices joined are the frame's CSV, every row once, in order."""
    from tasks.bulk import csv_slices

    n = 3_000
    df = pl.DataFrame(
        {"id": range(n), "line": [f'{{"id": {i}, "text": "{"x" * 1_000}", "q": "a,\\"b\\""}}' for i in range(n)]}
    )
    slices = [bytes(s) for s in csv_slices(df, slice_bytes=1 << 20)]
    assert len(slices) >= 3 and max(map(len, slices)) <= 2 << 20, [len(s) for s in slices]
    whole = df.write_csv(include_header=False, null_value="\\N", quote_style="non_numeric").encode()
    assert b"".join(slices) == whole
    back = pl.read_csv(io.BytesIO(b"".join(slices)), has_header=False, new_columns=["id", "line"])
    assert back.equals(df)


def test_sqlite_batch_goes_to_the_wal_in_8k_pages(settings_env, tmp_path):
    """A new database has 8 KB pages and persist's batch lands in the WAL. That it writes the WAL's new frames
    and nothing besides (no statement journal) depends on the host's I/O accounting: `make bench` measures it
    (bench/host_checks.py)."""
    from tasks.users.persist import persist_spans

    settings_env()
    batch, invalid = _transformed_real_users(tmp_path / "batch", keys=True)
    url = migrated(f"sqlite:///{tmp_path / 'w.db'}")
    engine = engine_for(url)
    wal = tmp_path / "w.db-wal"
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA page_size").scalar() == 8192
    wal_before = wal.stat().st_size
    out = persist_spans(engine, batch, run_id="r1")
    grown = wal.stat().st_size - wal_before
    assert out["raw_inserted"] == 208 and grown > 200 * 1000  # the batch is in the WAL


def test_a_row_the_database_refuses_halfway_through_a_statement_leaves_nothing_of_the_batch(settings_env, tmp_path):
    """The multi-row INSERTs stop at a refused row with the database's error, and the batch's transaction,
    rows before it in the same statement included, is rolled back whole."""
    from sqlalchemy import Column, Integer, MetaData, String, Table

    from tasks.bulk import bulk_insert

    settings_env()
    url = migrated(f"sqlite:///{tmp_path / 'refuse.db'}")
    engine = engine_for(url)
    table = Table("t", MetaData(), Column("id", Integer, primary_key=True), Column("a", String, nullable=False))
    table.create(engine)
    names = [f"user {i}" for i in range(300)]
    names[200] = None  # in the second statement of 128 rows, after 72 rows of it
    with pytest.raises(sqlite3.IntegrityError, match="NOT NULL"), engine.begin() as conn:
        bulk_insert(conn, table, pl.DataFrame({"id": range(300), "a": names}))
    assert count(url, "t") == 0
    with engine.begin() as conn:  # the same rows, fixed, go in
        bulk_insert(conn, table, pl.DataFrame({"id": range(300), "a": [n or "user 200" for n in names]}))
    assert count(url, "t") == 300


def test_persist_retries_a_locked_database_from_the_driver_but_not_a_refused_row(tmp_path):
    """The bulk inserts run on the driver's own cursor, so its errors arrive unwrapped by SQLAlchemy: a
    locked database is still worth a retry, a row the database refuses is not."""
    from tasks.retry import db_transient as _db_transient

    path = tmp_path / "locked.db"
    holder, other = sqlite3.connect(path, timeout=0), sqlite3.connect(path, timeout=0)
    try:
        holder.execute("CREATE TABLE t (a TEXT NOT NULL)")
        holder.commit()
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(sqlite3.OperationalError, match="locked") as locked:
            other.execute("INSERT INTO t VALUES ('x')")
        holder.rollback()
        with pytest.raises(sqlite3.IntegrityError) as refused:
            other.execute("INSERT INTO t VALUES (NULL)")
    finally:
        holder.close()
        other.close()
    assert _db_transient(locked.value) and not _db_transient(refused.value)
    # and from PostgreSQL's driver (persist imports it only for PostgreSQL): a lost server is worth a retry
    import psycopg

    with pytest.raises(psycopg.OperationalError) as lost:
        psycopg.connect("postgresql://postgres@127.0.0.1:1/test", connect_timeout=2)
    assert _db_transient(lost.value)


def test_run_counters_hold_a_big_days_bytes(pipeline_env):
    """A million users deliver over 2 GiB: the counter must not overflow PostgreSQL's INTEGER."""
    from tasks import runs

    engine = engine_for(pipeline_env)
    runs.start_run(engine, run_id="big-day", flow_name="users-etl")
    runs.finish_run(
        engine, run_id="big-day", status="completed", delivered_bytes=5 * 2**31, stage_seconds={"deliver": 1.0}
    )
    assert rows(pipeline_env, "SELECT delivered_bytes FROM etl_runs WHERE id = 'big-day'") == [(5 * 2**31,)]


def _checkpoint_row(url: str) -> tuple:
    return rows(url, "SELECT cursor, staged_bytes, staged_records FROM etl_checkpoints")[0]


def test_extract_checkpoint_does_not_wait_for_a_batch_being_stored(settings_env, tmp_path):
    """While another connection holds SQLite's write lock (persist storing a batch), the fetcher hands its
    position over and goes on; the newest position is stored once the lock is free, and leaving the writer
    leaves it stored."""
    from tasks.extract.dummyjson.checkpoint import CheckpointWriter, begin_extract

    settings_env()
    url = migrated(f"sqlite:///{tmp_path / 'cp.db'}")
    engine = engine_for(url)
    begin_extract(engine, run_id="r1", fingerprint="f", new_path=tmp_path / "raw.jsonl")
    with CheckpointWriter(engine) as checkpoints:
        with engine.connect() as holder:
            holder.exec_driver_sql("BEGIN IMMEDIATE")  # the write lock, as a persist batch holds it
            checkpoints.advance(skip=100, total=208, offset=1000, records=100)
            checkpoints.advance(skip=200, total=208, offset=2000, records=200)  # returned: not waiting
            assert _checkpoint_row(url) == (0, 0, 0)  # still held: nothing written yet
            holder.exec_driver_sql("COMMIT")
        checkpoints.advance(skip=208, total=208, offset=2080, records=208)
    assert _checkpoint_row(url) == (208, 2080, 208)


def test_fetching_page_after_page_stages_every_page(settings_env, tmp_path):
    """Fetching the same pages again and again appends each time: the staged file holds every page. (That the
    page bodies are freed without the garbage collector is measured by `make bench`: bench/host_checks.py.)"""
    from tasks.extract.dummyjson.checkpoint import CheckpointWriter, begin_extract
    from tasks.extract.dummyjson.pages import fetch_batch

    settings_env()
    engine = engine_for(migrated(f"sqlite:///{tmp_path / 'cp.db'}"))
    plan = begin_extract(engine, run_id="r1", fingerprint="f", new_path=tmp_path / "raw.jsonl")
    users = load_real_users()
    with DummyJsonServer(users) as server, CheckpointWriter(engine) as checkpoints:

        def fetch_all(offset: int) -> int:
            got = fetch_batch.fn(
                checkpoints,
                base_url=server.base_url,
                page_size=25,
                skip=0,
                max_records=1000,
                staged_path=plan.staged_path,
                offset=offset,
                records_before=0,
            )
            assert got.records == len(users) and got.done
            return got.offset

        end = fetch_all(0)
        for n in range(1, 11):
            assert fetch_all(n * end) == (n + 1) * end  # 90 pages in all, about 35 KB each
    assert (tmp_path / "raw.jsonl").stat().st_size == 11 * end


def test_extract_checkpoint_write_error_reaches_the_extracting_thread(settings_env, tmp_path):
    """A position that cannot be stored fails the extraction (at the next hand-over or on leaving)."""
    from sqlalchemy.exc import OperationalError

    from tasks.extract.dummyjson.checkpoint import CheckpointWriter, begin_extract

    settings_env()
    url = migrated(f"sqlite:///{tmp_path / 'cp.db'}")
    engine = engine_for(url)
    begin_extract(engine, run_id="r1", fingerprint="f", new_path=tmp_path / "raw.jsonl")
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE etl_checkpoints")
    checkpoints = CheckpointWriter(engine)
    checkpoints.advance(skip=100, total=208, offset=1000, records=100)
    with pytest.raises(OperationalError, match="etl_checkpoints"):
        checkpoints.close()


def _task_runs_since(started: datetime, prefixes: tuple[str, ...], expected: int) -> list:
    """The finished task runs started since `started` whose names begin with `prefixes`, as the Prefect API
    has them (their final states arrive as events, so wait until all `expected` have an end time)."""
    flt = TaskRunFilter(start_time=TaskRunFilterStartTime(after_=started))
    deadline = time.monotonic() + 60
    while True:
        with get_client(sync_client=True) as client:
            found = [
                r
                for r in client.read_task_runs(task_run_filter=flt, limit=200)
                if r.name.startswith(prefixes) and r.end_time is not None
            ]
        if len(found) >= expected or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


@pytest.mark.parametrize("extract_first", [True, False])
def test_extract_first_stages_every_page_before_transform_starts(pipeline_env, settings_env, extract_first):
    """USERS_EXTRACT_FIRST: the same rows, but no batch is transformed until the last page is staged; by
    default transform works on the first batches while extract waits out a slow last page."""
    url = pipeline_env
    settings_env(users_extract_first="true" if extract_first else None)
    users, expected = break_users(load_real_users())
    pause = iter([Fault(429, {"Retry-After": "5"})])  # the source asks for a pause before the last page, once
    started = datetime.now(UTC)
    with DummyJsonServer(users) as server:
        server.fail_when = lambda limit, skip: next(pause, None) if skip == 200 else None
        summary = asyncio.run(users_etl(api_base=server.base_url, deliver_files=False, batch_records=50))
    assert server.requests.count((50, 200)) == 2  # paused, then served
    assert summary["counts"]["extracted"] == 208 and summary["counts"]["invalid"] == len(expected)
    assert count(url, "processed_users") == 208 - len(expected) and count(url, "raw_users") == 208
    runs = _task_runs_since(started, ("fetch-users-pages", "transform-users-batch"), expected=10)
    fetches = [r for r in runs if r.name.startswith("fetch-users-pages")]
    transforms = [r for r in runs if r.name.startswith("transform-users-batch")]
    assert (len(fetches), len(transforms)) == (5, 5), runs  # 208 users in batches of 50: 4 full, 8 left
    first_transform, last_fetch = min(r.start_time for r in transforms), max(r.end_time for r in fetches)
    assert (first_transform >= last_fetch) is extract_first, (first_transform, last_fetch)
