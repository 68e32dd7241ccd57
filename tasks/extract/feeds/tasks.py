"""RSS/Atom feeds as Prefect tasks: `fetch_feed` (GET with If-None-Match / If-Modified-Since, parse, stage the
items as JSONL), `merge_parts` (the feeds' staged items as the run's one raw file), `load_validators` and
`record_outcomes` (each feed's checkpoint row in `etl_checkpoints`, source `feed:<url>`: status, last error,
and in `state` the ETag / Last-Modified).

A feed's new validators are only stored once its items are persisted (`record_outcomes` from the persist
stage): a run that dies in between refetches the whole feed next time instead of being told 304."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from datetime import UTC, datetime
from typing import BinaryIO

import httpx
import orjson
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from models.runs import EtlCheckpoint
from tasks.extract.errors import is_transient
from tasks.extract.errors import source_logger as _logger
from tasks.extract.feeds.client import FeedError, Validators, check_url, get_document, parse_items
from tasks.extract.feeds.constants import (
    ACCEPT,
    CHECKPOINT_PREFIX,
    CHECKPOINT_SOURCE_MAX,
    REQUEST_TIMEOUT_SECONDS,
    USER_AGENT,
)
from tasks.extract.feeds.outcome import FeedOutcome
from tasks.staging import files
from tasks.staging.runner import timed_work


def checkpoint_source(url: str) -> str:
    source = CHECKPOINT_PREFIX + url
    if len(source) <= CHECKPOINT_SOURCE_MAX:
        return source
    return f"{CHECKPOINT_PREFIX}sha256:{hashlib.sha256(url.encode()).hexdigest()}"


@task(
    name="fetch-feed",
    task_run_name="fetch-feed {url}",
    retries=4,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_jitter_factor=0.5,
    retry_condition_fn=is_transient,
    cache_policy=NO_CACHE,
)
@timed_work
def fetch_feed(
    url: str, *, validators: Validators, part_path: str, timeout: float = REQUEST_TIMEOUT_SECONDS
) -> FeedOutcome:
    """Conditional GET of one feed. 304: nothing staged. 200: its items written to `part_path` as JSONL
    (a retry rewrites the file). Returns the outcome, with the response's validators to store once the
    items are persisted."""
    check_url(url)
    headers = {"Accept": ACCEPT, "User-Agent": USER_AGENT} | validators.headers()
    with httpx.Client(timeout=httpx.Timeout(timeout), follow_redirects=True) as client:
        resp, body = get_document(client, url, headers)
    if resp.status_code == 304:
        if not validators.headers():
            raise FeedError(f"GET {url} answered 304 Not Modified to an unconditional request")
        _logger().info("GET %s: 304 Not Modified", url)
        return FeedOutcome(url=url, status="not_modified", http_status=304)
    items, warning = parse_items(body, url=url, content_type=resp.headers.get("content-type"), base_url=str(resp.url))
    if warning:
        _logger().warning("GET %s: the feed has errors feedparser recovered from (%s)", url, warning)
    files.reset(part_path)
    files.append_with(part_path, functools.partial(_write_items, items))
    got = Validators(resp.headers.get("etag"), resp.headers.get("last-modified"))
    _logger().info(
        "GET %s: HTTP %d, %d items, %d bytes%s",
        url,
        resp.status_code,
        len(items),
        len(body),
        " (no ETag or Last-Modified: next run fetches it whole)" if got == Validators() else "",
    )
    return FeedOutcome(
        url=url,
        status="fetched",
        http_status=resp.status_code,
        items=len(items),
        bytes=len(body),
        path=part_path,
        validators=got,
        warning=warning,
    )


def _write_items(items: list, fh: BinaryIO) -> None:
    fh.write(b"".join(orjson.dumps(item) + b"\n" for item in items))


def merge_parts(outcomes: list[FeedOutcome], parts_dir: str, target: str) -> list[FeedOutcome]:
    """The fetched feeds' staged parts (in `parts_dir`), in feed order, as the run's one raw file `target`
    (bytes copied a piece at a time, nothing parsed); the outcomes, the fetched ones now pointing at `target`.
    Both are locations (tasks/staging/files.py)."""
    files.reset(target)
    for o in outcomes:
        if o.status == "fetched" and o.path:
            for piece in files.read_pieces(o.path, files.PIECE_BYTES):
                files.append_bytes(target, piece)
    files.remove(parts_dir)
    return [dataclasses.replace(o, path=str(target)) if o.status == "fetched" else o for o in outcomes]


# ---------------------------------------------------------------- checkpoints


def _now() -> datetime:
    return datetime.now(UTC)


def load_validators(engine: Engine, urls: list[str]) -> dict[str, Validators]:
    """Each feed's stored ETag / Last-Modified (None where none is stored)."""
    sources = {checkpoint_source(u): u for u in urls}
    with Session(engine) as session:
        rows = session.exec(
            select(EtlCheckpoint.source, EtlCheckpoint.state).where(col(EtlCheckpoint.source).in_(list(sources)))
        ).all()
    stored = {sources[source]: Validators.from_state(state) for source, state in rows}
    return {u: stored.get(u, Validators()) for u in urls}


def record_outcomes(engine: Engine, *, run_id: str, outcomes: list[FeedOutcome]) -> None:
    """Checkpoint rows for a set of feeds in one transaction. `fetched`: the new validators and what was
    staged; `not_modified`: the 304 is a success; `failed`: the error, validators kept."""
    if not outcomes:
        return
    now = _now()
    with Session(engine) as session:
        for out in outcomes:
            source = checkpoint_source(out.url)
            cp = session.get(EtlCheckpoint, source) or EtlCheckpoint(source=source)
            cp.run_id, cp.updated_at = run_id, now
            if out.status == "failed":
                cp.status, cp.last_failure_at, cp.last_error = "failed", now, (out.error or "")[:2000]
            else:
                cp.status, cp.last_success_at, cp.last_error = (
                    ("complete" if out.status == "fetched" else "not_modified"),
                    now,
                    None,
                )
            if out.status == "fetched":
                cp.state = (out.validators or Validators()).state(out.url)
                cp.staged_path, cp.staged_records, cp.staged_bytes = out.path, out.items, out.bytes
                cp.cursor, cp.total = out.items, out.items
            session.add(cp)
        session.commit()
