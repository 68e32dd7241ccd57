"""persist's batches against real SQLite / PostgreSQL: a retried or pieced batch stores what the batch taken
whole would, SQLite's bulk load (WAL, one writing connection), and which database errors are worth a retry."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from models.db import engine_for
from tasks.staging.batches import RunFiles
from tests.conftest import migrated
from tests.servers.dummyjson import break_users, load_real_users, staged_lines
from tests.tables import count, rows

pytestmark = pytest.mark.usefixtures("prefect_server")


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
    # four batches' frames would be 4x one; a batch that starts while the thread beside it is still copying
    # (a busy machine) appends to the WAL once more before it is reused, so up to about 2x is reuse too
    assert sizes[0] > 0 and sizes[-1] < 3 * sizes[0], sizes
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
