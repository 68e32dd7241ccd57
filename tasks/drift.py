"""Schema drift: the fields and types a source delivered this run against the last accepted snapshot."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import polars as pl
from sqlalchemy import Engine
from sqlmodel import Session

from models.drift import SchemaDrift
from models.runs import EtlCheckpoint

MIXED = "mixed"


class SchemaDriftError(RuntimeError):
    """The source's schema changed and its policy is `fail`."""


def field_types(schema: pl.Schema | dict, prefix: str = "") -> dict[str, str]:
    """Dotted field paths -> type names, nested structs flattened (`address.coordinates.lat`: Float64)."""
    out: dict[str, str] = {}
    for name, dtype in schema.items():
        if name.startswith("_"):
            continue
        path = f"{prefix}{name}"
        if isinstance(dtype, pl.Struct):
            out.update(field_types({f.name: f.dtype for f in dtype.fields}, prefix=f"{path}."))
        else:
            out[path] = "Null" if dtype == pl.Null else str(dtype)
    return out


def merge_types(batches: list[dict[str, str]]) -> dict[str, str]:
    """One view over all batches: a field typed differently in two batches is `mixed`; Null yields."""
    merged: dict[str, str] = {}
    for batch in batches:
        for name, kind in batch.items():
            seen = merged.get(name)
            if seen is None or seen == "Null":
                merged[name] = kind
            elif kind not in (seen, "Null"):
                merged[name] = MIXED
    return merged


def compare(before: dict[str, str], now: dict[str, str]) -> list[dict]:
    changes = [
        {"field": f, "change": "added", "old_type": None, "new_type": t} for f, t in now.items() if f not in before
    ]
    changes += [
        {"field": f, "change": "missing", "old_type": t, "new_type": None} for f, t in before.items() if f not in now
    ]
    changes += [
        {"field": f, "change": "retyped", "old_type": before[f], "new_type": t}
        for f, t in now.items()
        if f in before and t != before[f] and "Null" not in (t, before[f])
    ]
    return sorted(changes, key=lambda c: (c["change"], c["field"]))


def describe(change: dict) -> str:
    if change["change"] == "retyped":
        return f"{change['field']} retyped {change['old_type']} -> {change['new_type']}"
    return f"{change['field']} {change['change']}"


def _snapshot(session: Session, source: str) -> EtlCheckpoint:
    key = f"schema:{source}"
    return session.get(EtlCheckpoint, key) or EtlCheckpoint(source=key)


def schema_changes(engine: Engine, *, source: str, types: dict[str, str]) -> list[dict]:
    """What changed since the source's last accepted snapshot (nothing on its first run). Only reads: on
    SQLite a write would wait for persist's transaction of the moment."""
    with Session(engine) as session:
        before = json.loads(_snapshot(session, source).state or "{}")
    return compare(before, types) if before else []


def record_schema(
    engine: Engine, *, run_id: str, source: str, types: dict[str, str], policy: str, changes: list[dict]
) -> None:
    """Store the changes `schema_changes` found; `fail` raises before the snapshot moves, so the run fails
    again until the change is accepted (a run with policy warn or evolve), which moves it to `types`."""
    now = datetime.now(UTC)
    with Session(engine) as session:
        for c in changes:
            session.add(SchemaDrift(run_id=run_id, source=source, policy=policy, detected_at=now, **c))
        if changes and policy == "fail":
            session.commit()
            raise SchemaDriftError(
                f"schema drift in source {source!r} (policy fail): " + "; ".join(describe(c) for c in changes)
            )
        snap = _snapshot(session, source)
        snap.state, snap.status, snap.run_id, snap.updated_at = (
            json.dumps(types, sort_keys=True),
            "complete",
            run_id,
            now,
        )
        session.add(snap)
        session.commit()
