"""Schema drift: the fields and types a source delivered this run against the last accepted snapshot."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import polars as pl
from sqlalchemy import Engine
from sqlmodel import Session

from models.drift import SchemaDrift
from models.runs import EtlCheckpoint
from tasks.staging.batches import TransformResult

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


@dataclass
class DriftReport:
    """Each source's observed field types this run, its changes against the accepted snapshot, and the
    changes described (a source other than the API named in front)."""

    observed: dict[str, dict[str, str]]
    changes: dict[str, list[dict]]
    described: list[str]


def check_sources(
    engine: Engine,
    types: dict[str, list[dict]],
    *,
    policy: Callable[[str], str],
    run_id: str,
    api_source: str,
    logger: logging.Logger | logging.LoggerAdapter,
) -> DriftReport:
    """Every source's schema against its snapshot; a source whose policy is `fail` and that changed is
    recorded at once (nothing of it reaches persist)."""
    report = DriftReport({}, {}, [])
    for source, seen in types.items():
        observed = report.observed[source] = merge_types(seen)
        changes = report.changes[source] = schema_changes(engine, source=source, types=observed)
        if changes and policy(source) == "fail":
            record_schema(engine, run_id=run_id, source=source, types=observed, policy="fail", changes=changes)
        if changes:
            (logger.info if policy(source) == "evolve" else logger.warning)(
                "schema drift in %s (policy %s): %s", source, policy(source), "; ".join(describe(c) for c in changes)
            )
        report.described += [describe(c) if source == api_source else f"{source}: {describe(c)}" for c in changes]
    return report


def record_schemas(engine: Engine, *, run_id: str, result: TransformResult, policy: Callable[[str], str]) -> None:
    """The schemas a run saw, stored once its persist is done (transform's write would wait for its
    transaction)."""
    for source, observed in result.observed_schema.items():
        record_schema(
            engine,
            run_id=run_id,
            source=source,
            types=observed,
            policy=policy(source),
            changes=result.schema_changes[source],
        )
