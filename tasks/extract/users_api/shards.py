"""A sharded run's page walk cut into ranges: the source's total read once, the walk split on page
boundaries (each shard requests exactly the pages one walk would, so its staged lines are the same)."""

from __future__ import annotations

import dataclasses

from tasks.extract.errors import SourceError
from tasks.extract.users_api.client import fetch_page_retried
from tasks.extract.users_api.pages import page_client
from tasks.extract.users_api.paging import WalkRange
from tasks.extract.users_api.walk import ApiSource, fetching_for


def source_total(source: ApiSource) -> int:
    """The total the source reports on its first page (retried like any page)."""
    config, fetching = source.config, fetching_for(source)
    if config.pagination != "offset":
        raise SourceError(
            f"{source.name}: USERS_SHARDS needs an offset-paged source (USERS_API_PAGINATION=offset), "
            f"not {config.pagination}: only an offset walk can be cut into ranges"
        )
    with page_client(fetching) as client:
        page = fetch_page_retried(
            client,
            fetching.paging,
            fetching.paging.first(),
            max_retry_after=source.max_retry_after,
            retries=source.retries,
            retry_base_seconds=source.retry_base_seconds,
            secret_setting=fetching.secret_setting,
        )
    if page.total is None:
        raise SourceError(
            f"{source.name}: USERS_SHARDS needs the source's total (USERS_API_TOTAL_PATH), which its first page "
            "does not give"
        )
    return page.total


def split_walk(total: int, shards: int, page_size: int) -> list[WalkRange]:
    """`shards` ranges of whole pages covering [0, total), the last open-ended (records the source gains
    during the run are read, as one walk would); fewer when the source has fewer pages than shards."""
    pages = max(1, -(-total // page_size))
    count = max(1, min(shards, pages))
    bounds = [page_size * (pages * i // count) for i in range(count)]
    return [WalkRange(start, bounds[i + 1] if i + 1 < count else None) for i, start in enumerate(bounds)]


def shard_source(source: ApiSource, part: WalkRange, index: int, count: int) -> ApiSource:
    """The source as shard `index` (0-based) of `count` reads it: its range, and a checkpoint of its own."""
    return dataclasses.replace(source, part=part, part_label=f"shard-{index + 1}-of-{count}")
