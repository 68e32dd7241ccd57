"""`make run`: every configured flow once, then where the results are.

The database is migrated first (as `make migrate` does). With SFTP_HOST unset, a loopback SFTP server of the
project's own (key in var/sftp) receives the delivery; with no Prefect API configured, a local Prefect server
started at once (flows/prefect_api.py) runs the flows."""

from __future__ import annotations

import asyncio
import os
import sys
from contextlib import ExitStack
from pathlib import Path

VAR_DIR = Path("var")


def main() -> int:
    from flows.prefect_api import local_prefect_api

    with ExitStack() as stack:
        # first, before the settings' imports: a server of its own takes the longest to be ready (it is
        # stopped at once on a bad setting)
        api = stack.enter_context(local_prefect_api(VAR_DIR))
        from models.settings import ConfigError, get_settings

        try:
            settings = get_settings()
        except ConfigError as exc:
            print(f"sluice: {exc}", file=sys.stderr)
            return 2
        if not settings.database_block and not migrate_database(settings.database_url_value):
            return 2
        if api.process is not None:
            print(f"sluice: no Prefect API configured; started a local Prefect server at {api.url} for this run",
                  file=sys.stderr)
        from flows.feeds_etl import feeds_etl  # imported while that server starts
        from flows.users_etl import users_etl

        api.wait_ready()
        demo = None
        if not settings.sftp_enabled:
            from tasks.demo_sftp import running_demo_sftp

            demo = stack.enter_context(running_demo_sftp(VAR_DIR))
            os.environ.update(demo.env())
            get_settings.cache_clear()
        state = asyncio.run(users_etl(return_state=True))
        if not state.is_completed():
            print(f"sluice: users-etl {state.name}: {state.message}", file=sys.stderr)
            return 1
        summary = state.result()
        feeds = asyncio.run(feeds_etl(return_state=True)) if settings.feed_urls else None
    report(summary, demo.root if demo else None)
    if feeds is not None:
        if not feeds.is_completed():
            print(f"sluice: feeds-etl {feeds.name}: {feeds.message}", file=sys.stderr)
            return 1
        f = feeds.result()["counts"]
        print(f"feeds-etl: {f['extracted']} items read, {f['inserted']} new, {f['updated']} updated, "
              f"{f['unchanged']} unchanged, {f['invalid']} to the DLQ")
    return 0


def migrate_database(url: str) -> bool:
    """`make migrate` for the database of this run (DATABASE_URL; a block's database is migrated where it is
    deployed); False, having said why, when it fails."""
    from models.migrate import head_revision, upgrade

    try:
        before = upgrade(url)
    except Exception as exc:  # noqa: BLE001 (unreachable, or a database no revision knows: said as it is)
        print(f"sluice: migrating the database failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return False
    if before != head_revision():
        print(f"sluice: database migrated from schema revision {before or 'none'} to {head_revision()}",
              file=sys.stderr)
    return True


def report(summary: dict, demo_root: Path | None) -> None:
    counts = summary["counts"]
    print()
    print(f"users-etl run {summary['run_id']} completed")
    print(f"  database   {summary['database']}")
    print("  tables     raw_users (+{raw_inserted}), processed_users (+{inserted} new, {updated} updated, "
          "{unchanged} unchanged), dlq_users (+{dlq_inserted})".format(**counts))
    print(f"  records    {counts['extracted']} extracted, {counts['valid']} valid, {counts['invalid']} to the DLQ")
    for kind, path in summary["files"].items():
        print(f"  {kind:<10} {path}")
    for item in summary["delivered"]:
        where = f" (on disk: {demo_root})" if demo_root else ""
        print(f"  delivered  sftp:{item['remote_path']} {item['bytes']} bytes{where}")


if __name__ == "__main__":
    sys.exit(main())
