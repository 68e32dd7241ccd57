"""What `make bench` measures of the host beside the runs (figures that vary with the machine, so not tests):
- persist on SQLite writes a batch's WAL frames and nothing besides: a statement journal, which SQLite keeps
  for a statement that may abort halfway inside a transaction, doubled the writes;
- fetched pages are freed once staged without the garbage collector: a page body kept on httpx's response
  (a reference cycle) piled up between collections.

Run as `python -m bench.host_checks DIR` (a fresh process, tuned as a flow process is); prints JSON."""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

PAGE_SIZE = 25
FETCH_ROUNDS = 10
WAL_WRITE_RATIO = 1.02  # persist may write this much more than the WAL frames it adds
PAGES_HELD_BYTES = 1_000_000  # what fetching may leave held, whatever the pages' size


def _bytes_written() -> int:
    """What this thread has handed to write calls so far (files, WAL, temporary files alike)."""
    with open("/proc/thread-self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("wchar:"))


def _sqlite(path: Path):
    from models.db import engine_for
    from models.migrate import upgrade

    url = f"sqlite:///{path}"
    upgrade(url)
    return engine_for(url)


def persist_writes(folder: Path) -> dict:
    """Bytes persist writes for one batch (the real users: small enough that no checkpoint copies the WAL
    into the database meanwhile) into a new SQLite database, and the WAL frames the batch adds."""
    from dev.real_users import load_real_users
    from models.settings import BUNDLED_DEPARTMENTS
    from tasks.extract.users_api.lines import write_lines
    from tasks.staging.batches import RunFiles
    from tasks.users.persist import persist_spans
    from tasks.users.transform import read_departments, transform_batch

    raw = folder / "raw.jsonl"
    with raw.open("wb") as fh:
        write_lines(fh, load_real_users())
    files = RunFiles(
        processed=str(folder / "processed.jsonl"), dlq=str(folder / "dlq.jsonl"), raw_keys=str(folder / "keys.arrows")
    )
    out = transform_batch.fn(
        read_departments(BUNDLED_DEPARTMENTS),
        raw_path=str(raw),
        offset=0,
        length=raw.stat().st_size,
        processed_path=files.processed,
        dlq_path=files.dlq,
        keys_path=files.raw_keys,
    )
    batch = out.batch(source="dummyjson", as_of=datetime.now(UTC).isoformat(), raw_path=str(raw), files=files)
    engine = _sqlite(folder / "persist.db")
    wal = folder / "persist.db-wal"
    with engine.connect() as conn:  # the WAL exists once a connection opened it
        conn.exec_driver_sql("SELECT 1")
    wal_before, written_before = wal.stat().st_size, _bytes_written()
    stored = persist_spans(engine, batch, run_id="bench")
    written, grown = _bytes_written() - written_before, wal.stat().st_size - wal_before
    return {"records": stored["raw_inserted"], "written_bytes": written, "wal_bytes": grown}


def pages_held(folder: Path) -> dict:
    """Memory still held after fetching and staging page after page with the garbage collector off."""
    import gc
    import tracemalloc

    from dev.real_users import load_real_users
    from dev.sample_api import DummyJsonServer
    from models.sources import ApiSourceConfig
    from tasks.extract.users_api.checkpoint import CheckpointWriter, begin_extract
    from tasks.extract.users_api.pages import Fetching, fetch_batch
    from tasks.extract.users_api.paging import Paging, Position

    engine = _sqlite(folder / "checkpoint.db")
    plan = begin_extract(engine, run_id="bench", fingerprint="bench", new_path=folder / "pages.jsonl")
    users = load_real_users()
    with DummyJsonServer(users) as server, CheckpointWriter(engine) as checkpoints:

        def fetch_all(offset: int) -> int:
            got = fetch_batch.fn(
                checkpoints,
                Fetching(Paging(ApiSourceConfig(base_url=server.base_url, page_size=PAGE_SIZE))),
                position=Position(0),
                max_records=len(users),
                staged_path=plan.staged_path,
                offset=offset,
                records_before=0,
            )
            return got.offset

        end = fetch_all(0)  # the first call warms up what stays (imports, the HTTP client...)
        gc.collect()
        gc.disable()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for n in range(1, FETCH_ROUNDS + 1):
                fetch_all(n * end)
            held = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
            gc.enable()
    return {"fetched_bytes": FETCH_ROUNDS * end, "held_bytes": held}


def main() -> None:
    from flows.process import tune

    tune()  # as the flow process has it
    folder = Path(sys.argv[1])
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["DATA_DIR"] = str(folder / "data")
    print(json.dumps({"persist": persist_writes(folder), "pages": pages_held(folder)}))


def check(host: dict) -> list[tuple[str, bool]]:
    """The two host checks as (what was measured, met?), beside the bench's targets."""
    p, f = host["persist"], host["pages"]
    return [
        (
            f"persist on SQLite writes its WAL frames and nothing besides (<= {WAL_WRITE_RATIO:g}x): "
            f"{p['written_bytes']:,} bytes written for {p['wal_bytes']:,} bytes of WAL ({p['records']:,} records)",
            p["written_bytes"] <= p["wal_bytes"] * WAL_WRITE_RATIO,
        ),
        (
            f"fetched pages freed without the garbage collector (< {PAGES_HELD_BYTES:,} bytes held): "
            f"{f['held_bytes']:,} bytes held after {f['fetched_bytes']:,} bytes of pages",
            f["held_bytes"] < PAGES_HELD_BYTES,
        ),
    ]


if __name__ == "__main__":
    main()
