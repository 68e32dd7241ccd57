"""The API's page walk as Prefect tasks: `fetch_batch` fetches a run of pages into the staged file, moving
the checkpoint after each; `walk_findings` says what the totals the source reported mean for the walk."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.extract.dummyjson.checkpoint import CheckpointWriter
from tasks.extract.dummyjson.client import fetch_page_retried, tls_context
from tasks.extract.dummyjson.lines import write_lines
from tasks.extract.errors import source_logger as _logger
from tasks.staging import handoff
from tasks.staging.runner import timed_work


@dataclass(frozen=True)
class FetchedPages:
    """What one `fetch_batch` staged: `records` lines ending at `offset`; the walk goes on at `next_skip`."""

    records: int
    next_skip: int
    total: int | None
    offset: int
    done: bool


def walk_findings(totals: list[int], records: int) -> list[str]:
    """What is wrong with a page walk that staged `records` while the source reported `totals` (in order,
    repeats dropped): a total that changed on the way, or a walk that ended short of one (an early empty page).
    Either way the extraction is not a complete picture of the source."""
    found = []
    if len(totals) > 1:
        found.append(f"the source's total changed from {' to '.join(map(str, totals))} during the walk")
    if totals and records < max(totals):
        found.append(f"the walk ended at {records} records, short of the total {max(totals)}")
    return found


@task(name="fetch-users-pages", cache_policy=NO_CACHE)  # no task retry: each page has its retries (see below)
@timed_work
def fetch_batch(
    checkpoints: CheckpointWriter,
    *,
    base_url: str,
    page_size: int,
    skip: int,
    max_records: int,
    staged_path: str,
    offset: int,
    records_before: int,
    timeout: float = 30.0,
    max_retry_after: float = 120.0,
    retries: int = 4,
    retry_base_seconds: float = 2.0,
    run_dir: str | None = None,
) -> FetchedPages:
    """Fetch pages from `skip` until `max_records` are in hand or the source is exhausted, append them to
    the staged file at `offset`, handing the new position and the total the source reported to `checkpoints`
    after each page: a killed run refetches only the pages in flight.
    Each page is written as it arrives (one page in memory at a time) and flushed to the kernel before its
    position is given, so the process dying cannot lose it. A page the source fails for a moment is retried
    on its own (`fetch_page_retried`); one that fails past its retries fails the task, and the next run
    resumes at it from the checkpoint (retrying the task too would only multiply the same page's tries). The
    flow posts a batch to the later stages only once it returns. With `run_dir` it stops before the next page
    once the run is cancelled (what it staged is checkpointed for the next run)."""
    cursor, total, got = skip, None, 0
    with (
        httpx.Client(
            timeout=httpx.Timeout(timeout), headers={"Accept": "application/json"}, verify=tls_context()
        ) as client,
        open(staged_path, "r+b") as fh,
    ):
        fh.truncate(offset)
        fh.seek(offset)
        while got < max_records:
            handoff.check_cancelled(run_dir, "extract")  # a failed stage or a SIGTERM stops it within a page
            page = fetch_page_retried(
                client,
                base_url,
                limit=page_size,
                skip=cursor,
                max_retry_after=max_retry_after,
                retries=retries,
                retry_base_seconds=retry_base_seconds,
            )
            users, total = page["users"], page["total"]
            if not users:
                break
            write_lines(fh, users)
            fh.flush()
            got += len(users)
            cursor += len(users)
            checkpoints.advance(
                skip=cursor, total=total, offset=fh.tell(), records=records_before + got, staged_path=staged_path
            )
            del page, users  # (the page's body) before the next is read
            if cursor >= total:
                break
        new_offset = fh.tell()
    done = got == 0 or (total is not None and cursor >= total)
    if new_offset == offset and total is not None:  # an empty page: the checkpoint still learns its total
        checkpoints.advance(
            skip=cursor, total=total, offset=new_offset, records=records_before + got, staged_path=staged_path
        )
    _logger().info("pages skip=%d..%d: %d records staged (total %s)", skip, cursor, got, total)
    return FetchedPages(records=got, next_skip=cursor, total=total, offset=new_offset, done=done)
