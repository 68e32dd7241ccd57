"""The API's page walk as Prefect tasks: `fetch_batch` fetches a run of pages into the staged file, moving
the checkpoint after each; `walk_findings` says what the totals the source reported mean for the walk."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import httpx
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.extract.errors import source_logger as _logger
from tasks.extract.users_api.checkpoint import CheckpointWriter
from tasks.extract.users_api.client import fetch_page_retried, tls_context
from tasks.extract.users_api.lines import write_lines
from tasks.extract.users_api.paging import Paging, Position, WalkRange
from tasks.staging import files, handoff
from tasks.staging.runner import timed_work


@dataclass(frozen=True)
class FetchedPages:
    """What one `fetch_batch` staged: `records` lines ending at `offset`; the walk goes on at `next` (None: the
    source has no more pages)."""

    records: int
    next: Position | None
    total: int | None
    offset: int

    @property
    def done(self) -> bool:
        return self.next is None


@dataclass(frozen=True)
class Fetching:
    """How a source's pages are fetched: its pagination and credentials, and the client's limits."""

    paging: Paging
    auth: httpx.Auth | None = None
    secret_setting: str = "USERS_API_SECRET"
    timeout: float = 30.0
    max_retry_after: float = 120.0
    retries: int = 4
    retry_base_seconds: float = 2.0


def page_client(fetching: Fetching) -> httpx.Client:
    """The HTTP client a source's pages are fetched with: its timeout, TLS trust and credentials."""
    return httpx.Client(
        timeout=httpx.Timeout(fetching.timeout),
        headers={"Accept": "application/json"},
        verify=tls_context(),
        auth=fetching.auth,
    )


def walk_findings(totals: list[int], records: int, part: WalkRange | None = None) -> list[str]:
    """What is wrong with a page walk (or its range `part`) that staged `records` while the source reported
    `totals` (in order, repeats dropped): a total that changed on the way, or a walk that ended short of one
    (an early empty page). Either way the extraction is not a complete picture of the source."""
    found = []
    if len(totals) > 1:
        found.append(f"the source's total changed from {' to '.join(map(str, totals))} during the walk")
    expected = (part or WalkRange(0)).expected(max(totals)) if totals else 0
    if totals and records < expected:
        short = f"short of the total {max(totals)}" if part is None else f"short of the {expected} its range holds"
        found.append(f"the walk ended at {records} records, {short}")
    return found


@task(name="fetch-users-pages", cache_policy=NO_CACHE)  # no task retry: each page has its retries (see below)
@timed_work
def fetch_batch(
    checkpoints: CheckpointWriter,
    fetching: Fetching,
    *,
    position: Position,
    max_records: int,
    staged_path: str,
    offset: int,
    records_before: int,
    run_dir: str | None = None,
) -> FetchedPages:
    """Fetch pages from `position` until `max_records` are in hand or the source has no more, append them to
    the staged file (a location: tasks/staging/files.py) at `offset`, handing the new position and the total
    the source reported to `checkpoints` after each page: a killed run refetches only the pages in flight.
    Each page is appended as it arrives (one page in memory at a time; in the staging store, a part of its
    own) before its position is given, so the process dying cannot lose it. A page the source fails for a moment is retried
    on its own (`fetch_page_retried`); one that fails past its retries fails the task, and the next run
    resumes at it from the checkpoint (retrying the task too would only multiply the same page's tries). With
    `run_dir` it stops before the next page once the run is cancelled (what it staged is checkpointed)."""
    paging, at, total, got = fetching.paging, position, None, 0
    after: Position | None = position
    files.truncate(staged_path, offset)
    with page_client(fetching) as client:
        while got < max_records:
            handoff.check_cancelled(run_dir, "extract")  # a failed stage or a SIGTERM stops it within a page
            page = fetch_page_retried(
                client,
                paging,
                at,
                max_retry_after=fetching.max_retry_after,
                retries=fetching.retries,
                retry_base_seconds=fetching.retry_base_seconds,
                secret_setting=fetching.secret_setting,
            )
            total = page.total if page.total is not None else total
            if page.records:
                start, length = files.append_with(staged_path, functools.partial(write_lines, users=page.records))
                offset = start + length
                got += len(page.records)
            after = paging.after(at, page)
            checkpoints.advance(
                position=after or paging.last(at, page),
                total=page.total,
                offset=offset,
                records=records_before + got,
                staged_path=staged_path,
            )
            del page  # (the page's body) before the next is read
            if after is None:
                break
            at = after
    _logger().info("pages from %s: %d records staged (total %s)", _where(position), got, total)
    return FetchedPages(records=got, next=after, total=total, offset=offset)


def _where(position: Position) -> str:
    return f"#{position.number}" + (" (after a cursor)" if position.token else "")
