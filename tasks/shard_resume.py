"""A shard's staged raw lines mirrored to the staging store batch by batch, so that a shard run again on another
host (its worker died) resumes its range where the last mirrored batch ended instead of walking it again."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from sqlalchemy import Engine
from sqlmodel import Session

from models.runs import EtlCheckpoint
from tasks.staging import handoff
from tasks.staging.batches import StagedInput
from tasks.staging.files import read_span
from tasks.staging.store import StagingStore

RAW_PARTS = "raw-parts"


class Part(NamedTuple):
    """One mirrored span of the shard's raw file: `length` bytes from `offset`, holding `records` lines."""

    offset: int
    length: int
    records: int
    key: str


def part_key(prefix: str, offset: int, length: int, records: int) -> str:
    return f"{prefix}/{RAW_PARTS}/{offset:015d}-{length:015d}-{records}"


def mirrored(store: StagingStore, prefix: str) -> list[Part]:
    """The mirrored parts that join up from the file's start, in order (a resumed walk's first part, which
    covers what it resumed from, wins over the earlier ones it covers)."""
    parts: dict[int, Part] = {}
    for key in store.keys(f"{prefix}/{RAW_PARTS}"):
        try:
            offset, length, records = (int(n) for n in key.rsplit("/", 1)[1].split("-"))
        except ValueError:  # (a folder store's file being written)
            continue
        if offset not in parts or length > parts[offset].length:
            parts[offset] = Part(offset, length, records, key)
    chain, end = [], 0
    while end in parts and parts[end].length:
        chain.append(parts[end])
        end += parts[end].length
    return chain


def mirror_raw(extracted: str, store: StagingStore, prefix: str) -> int:
    """Each API batch extract posts, copied to the store as it comes (those already there skipped); the bytes
    mirrored. Ends with the manifest."""
    covered = sum(p.length for p in mirrored(store, prefix))
    copied = 0
    for entry in handoff.follow(extracted, StagedInput):
        span = entry.span
        if entry.plugin is not None or entry.raw_path is None or span.offset + span.length <= covered:
            continue
        data = read_span(entry.raw_path, span.offset, span.length)
        store.write_bytes(part_key(prefix, span.offset, span.length, entry.records), data)
        copied += span.length
    return copied


def restore_raw(
    engine: Engine, store: StagingStore, prefix: str, *, key: str, fingerprint: str, start: int, local_path: Path
) -> int:
    """When the shard's checkpoint points to a raw file this host does not have (the range was begun on another
    host), the mirrored part of it is written to `local_path` and the checkpoint moved there, so that extract
    resumes after it; the records restored (0: nothing to restore, or the file is here)."""
    with Session(engine) as session:
        cp = session.get(EtlCheckpoint, key)
        if cp is None or cp.status not in ("in_progress", "failed") or cp.fingerprint != fingerprint:
            return 0
        here = Path(cp.staged_path) if cp.staged_path else None
        if here is not None and here.exists() and here.stat().st_size >= cp.staged_bytes:
            return 0  # the walk resumes from its own file
        chain = mirrored(store, prefix)
        if not chain:
            return 0
        local_path.parent.mkdir(parents=True, exist_ok=True)
        with open(local_path, "wb") as fh:
            for part in chain:
                store.copy_range_to(part.key, fh)
        records = sum(p.records for p in chain)
        cp.staged_path, cp.staged_bytes, cp.staged_records = (
            str(local_path),
            chain[-1].offset + chain[-1].length,
            records,
        )
        cp.cursor, cp.state = start + records, "{}"
        session.add(cp)
        session.commit()
    return records
