"""The engine: one per database URL, SQLite in WAL mode, its database checked once to be at the code's schema
revision (models/migrate.py; `make migrate` brings it there)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from sqlalchemy import Connection, Engine, Table, event
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.engine import make_url
from sqlmodel import Session, SQLModel, create_engine

from models.migrate import check_current
from models.settings import get_settings

BUSY_TIMEOUT_MS = 30_000
# page cache per connection: SQLite's own default (a larger one made persist no quicker: a cache starts over
# whenever another connection commits, and a batch's content hashes land all over their index)
SQLITE_CACHE_KIB = 2 * 1024
# a new database's page size (an existing one keeps its own): SQLite writes whole pages to the WAL and back,
# a call each, and 8 KB was the quickest size in docs/benchmarks.md
SQLITE_PAGE_SIZE = 8192
CHECKPOINT_WAIT_MS = 200  # how long a checkpoint waits for readers of the WAL (an API request) to finish
# a bulk load lets its WAL grow to this size while a checkpointer thread copies it into the database file
# beside the writer; then the writer waits once for it to be copied and emptied (a checkpoint after every
# batch, mostly its sync of the file, costs persist much of its time).
CHECKPOINT_WAL_BYTES = 256 << 20
# engines in a bulk load whose writes leave the WAL to a checkpointer thread -> that load's state
_deferred: dict[int, _BulkLoad] = {}


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # pragma: no cover - exercised through every SQLite test
    # the page size first: switching a new database to WAL writes its header, page size included
    for pragma in (
        f"page_size={SQLITE_PAGE_SIZE}",
        "journal_mode=WAL",
        "synchronous=NORMAL",
        f"busy_timeout={BUSY_TIMEOUT_MS}",
        "foreign_keys=ON",
        f"cache_size=-{SQLITE_CACHE_KIB}",
    ):
        _pragma(dbapi_conn, f"PRAGMA {pragma}")


def prepare_engine(engine: Engine) -> Engine:
    """Tune an engine built elsewhere (e.g. by a SqlAlchemyConnector block) and check that its database is at
    the code's schema revision: SchemaOutOfDate, naming `make migrate`, otherwise (the engine is disposed of)."""
    try:
        check_current(_tuned(engine))
    except BaseException:
        engine.dispose()
        raise
    return engine


def _tuned(engine: Engine) -> Engine:
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
        engine.dispose()
    return engine


def _new_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        return create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)


def unchecked_engine(url: str) -> Engine:
    """A new engine with the product's settings, its database not checked (for migrating it); the caller
    disposes of it."""
    return _tuned(_new_engine(url))


@lru_cache(maxsize=8)
def engine_for(url: str) -> Engine:
    return prepare_engine(_new_engine(url))


def get_engine() -> Engine:
    return engine_for(get_settings().database_url_value)


def get_db() -> Iterator[Session]:
    with Session(get_engine()) as session:
        yield session


_block_engines: dict[str, Engine] = {}


def engine_from_block(block_name: str) -> Engine:
    """The engine of a prefect-sqlalchemy `SqlAlchemyConnector` block (credentials stay in the block)."""
    if block_name not in _block_engines:
        from prefect_sqlalchemy import SqlAlchemyConnector

        _block_engines[block_name] = prepare_engine(SqlAlchemyConnector.load(block_name, _sync=True).get_engine())
    return _block_engines[block_name]


def resolve_engine(block_name: str | None = None) -> Engine:
    """A block named by the flow (or DATABASE_BLOCK) wins over DATABASE_URL."""
    name = block_name or get_settings().database_block
    return engine_from_block(name) if name else get_engine()


def table_of(model: type[SQLModel]) -> Table:
    """The table a table model maps (what `model.__table__` is, which SQLModel declares to no type checker)."""
    table = sa_inspect(model).local_table
    if not isinstance(table, Table):
        raise TypeError(f"{model.__name__} maps no table")
    return table


def _sqlite_file(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:")


def _pragma(driver_conn, sql: str) -> None:
    """Run a PRAGMA on the sqlite3 connection and finish its statement (an unread one holds a snapshot)."""
    cur = driver_conn.cursor()
    try:
        cur.execute(sql).fetchall()
    finally:
        cur.close()


def _checkpoint(engine: Engine, mode: str) -> None:
    """Copy the WAL into the database file. PASSIVE copies what it can without waiting for anyone; TRUNCATE
    also empties the WAL file, even when another connection (extract's checkpoints) wrote meanwhile, waiting
    at most CHECKPOINT_WAIT_MS for readers, then leaving the rest to the next one."""
    with engine.connect() as conn:
        driver = conn.connection.driver_connection
        _pragma(driver, f"PRAGMA busy_timeout={CHECKPOINT_WAIT_MS}")
        try:
            _pragma(driver, f"PRAGMA wal_checkpoint({mode})")
        except sqlite3.OperationalError:  # another checkpoint is running: the next one catches up
            pass
        finally:
            _pragma(driver, f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")


@dataclass
class _BulkLoad:
    """A `deferred_checkpoints` block: the one connection its writes go through, its WAL file and the size at
    which the writer waits for it to be emptied, and the checkpointer thread. One connection, because each
    keeps its page cache (up to SQLITE_CACHE_KIB) while it waits in the pool: writes taking whichever
    connection is free (the pool hands out the one idle longest) would leave a full cache on every connection
    they passed through whenever other work (a checkpoint, a run update) got between two batches."""

    writer: Connection
    wal: Path
    checkpoint_bytes: int
    lock: threading.Lock = field(default_factory=threading.Lock)
    checkpoint: threading.Thread | None = None
    emptying: bool = False  # the checkpointer truncates the WAL: the next write transaction waits for it

    def wal_bytes(self) -> int:
        try:
            return self.wal.stat().st_size
        except FileNotFoundError:
            return 0

    def wait_for_checkpoint(self) -> None:
        if self.checkpoint is not None:
            self.checkpoint.join()


@contextmanager
def deferred_checkpoints(engine: Engine, *, checkpoint_bytes: int = CHECKPOINT_WAL_BYTES) -> Iterator[None]:
    """For a bulk load into a SQLite file: a commit of `write_transaction` no longer copies the WAL into the
    database file itself (that copy and its sync were a third of persist's time). A thread of its own copies
    it (a PASSIVE checkpoint) while the writer goes on with its next batches; once the WAL has grown to
    `checkpoint_bytes` the thread copies the rest and truncates it, and the next write transaction waits for
    that, so the WAL stays below about `checkpoint_bytes` plus a batch. Every write transaction of the block
    goes through one connection, held until the end. At the end the WAL is truncated. A no-op on other
    databases."""
    if not _sqlite_file(engine):
        yield
        return
    bulk = _deferred[id(engine)] = _BulkLoad(engine.connect(), Path(f"{engine.url.database}-wal"), checkpoint_bytes)
    driver = bulk.writer.connection.driver_connection
    try:
        _pragma(driver, "PRAGMA wal_autocheckpoint=0")
        yield
    finally:
        bulk.wait_for_checkpoint()
        del _deferred[id(engine)]
        try:
            _pragma(driver, "PRAGMA wal_autocheckpoint=1000")  # the pool's default
        finally:
            bulk.writer.close()
            _checkpoint(engine, "TRUNCATE")


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """`engine.begin()`; under `deferred_checkpoints` a transaction on the block's connection, whose commit
    hands the WAL to the checkpointer thread (unless it is still copying the WAL: it gets the new frames on
    its next round)."""
    bulk = _deferred.get(id(engine))
    if bulk is None:
        with engine.begin() as conn:
            yield conn
        return
    with bulk.lock:
        if bulk.emptying:
            bulk.wait_for_checkpoint()
        with bulk.writer.begin():
            yield bulk.writer
        full = bulk.wal_bytes() >= bulk.checkpoint_bytes
        if full or bulk.checkpoint is None or not bulk.checkpoint.is_alive():
            bulk.wait_for_checkpoint()
            bulk.emptying = full
            bulk.checkpoint = threading.Thread(
                target=_checkpoint, args=(engine, "TRUNCATE" if full else "PASSIVE"), name="sqlite-checkpointer"
            )
            bulk.checkpoint.start()
