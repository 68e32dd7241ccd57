"""`make run`: every configured flow once, offline in one command, then where the results are.

This is the flow process's entry point: it tunes the process first (flows/process.py) and names Prefect's
logging configuration for it and its Prefect server (flows/logging.yml: LOG_FORMAT=json writes JSON lines on
stderr; the run's summary stays on stdout). The database is
migrated (as `make migrate` does). What is not configured is started here and handed to the flows as a user
would configure it: with USERS_API_BASE unset, the generated 300-user sample on a loopback port
(dev/sample_api.py); with SFTP_HOST unset, a loopback SFTP server of the project's own (key in var/sftp,
dev/demo_sftp.py); with no Prefect API configured, a local Prefect server (dev/prefect_server.py).

A run that does not end by itself ends with one line on stderr, not a traceback: stopped by SIGTERM or Ctrl-C
(after its run is marked crashed in etl_runs), or its Prefect API gone (at the start, or for
API_LOST_SECONDS during the run: see flows/runtime.py)."""

from __future__ import annotations

import asyncio
import os
import sys
from contextlib import ExitStack
from pathlib import Path

VAR_DIR = Path("var")
# Prefect's logging configuration for flow processes (models/logs.py), the one a deployed run gets from
# prefect.yaml; named here without importing `models` (this module loads nothing heavy before the server starts)
LOGGING_FILE = Path(__file__).resolve().parents[1] / "flows" / "logging.yml"


def main() -> int:
    from flows.process import tune

    tune()  # before anything loads Polars
    os.environ.setdefault("PREFECT_LOGGING_SETTINGS_PATH", str(LOGGING_FILE))  # before anything loads Prefect
    from dev.prefect_server import local_prefect_api

    with ExitStack() as stack:
        # first, before the settings' imports: a server of its own takes the longest to be ready (it is
        # stopped at once on a bad setting)
        api = stack.enter_context(local_prefect_api(VAR_DIR))
        settings = prepared_settings(api)
        if settings is None:
            return 2
        from flows.feeds_etl import feeds_etl  # imported while that server starts
        from flows.users_etl import users_etl

        api.wait_ready()
        demo_root = serve_what_is_not_configured(stack, settings)
        state = run_flow(users_etl, api.url)
        if isinstance(state, int):
            return state
        if not state.is_completed():
            print(f"sluice: users-etl {state.name}: {state.message}", file=sys.stderr)
            return 1
        summary = state.result()
        feeds = run_flow(feeds_etl, api.url) if settings.feed_urls else None
    report(summary, demo_root)
    if isinstance(feeds, int):
        return feeds
    if feeds is not None:
        if not feeds.is_completed():
            print(f"sluice: feeds-etl {feeds.name}: {feeds.message}", file=sys.stderr)
            return 1
        f = feeds.result()["counts"]
        print(
            f"feeds-etl: {f['extracted']} items read, {f['inserted']} new, {f['updated']} updated, "
            f"{f['unchanged']} unchanged, {f['invalid']} to the DLQ"
        )
    return 0


def prepared_settings(api):
    """The settings, with the database migrated; None (after saying why) when either fails. Notes a local
    Prefect server started for the run."""
    from models.settings import ConfigError, get_settings

    try:
        settings = get_settings()
    except ConfigError as exc:
        print(f"sluice: {exc}", file=sys.stderr)
        return None
    if not settings.database_block and not migrate_database(settings.database_url_value):
        return None
    if api.process is not None:
        print(f"sluice: no Prefect API configured; started a local Prefect server at {api.url}", file=sys.stderr)
    return settings


def serve_what_is_not_configured(stack: ExitStack, settings) -> Path | None:
    """The sample users API unless USERS_API_BASE is set, the demo SFTP server unless SFTP_HOST is, each for
    as long as `stack` lasts, their addresses in this process's environment meanwhile (the settings read
    again); the demo server's folder on disk, if it was started."""
    from models.settings import get_settings

    env: dict[str, str] = {}
    if not settings.users_api_base:
        from dev.sample_api import offline_users_api

        env["USERS_API_BASE"] = stack.enter_context(offline_users_api())
    demo_root = None
    if not settings.sftp_enabled:
        from dev.demo_sftp import running_demo_sftp

        demo = stack.enter_context(running_demo_sftp(VAR_DIR))
        env |= demo.env()
        demo_root = demo.root
    if env:
        before = {name: os.environ.get(name) for name in env}
        stack.callback(_restore_environment, before)
        os.environ.update(env)
        get_settings.cache_clear()
    return demo_root


def _restore_environment(before: dict[str, str | None]) -> None:
    from models.settings import get_settings

    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    get_settings.cache_clear()


def run_flow(parent, api_url: str | None, **parameters):
    """The parent flow's final state (run with `parameters`); or, having said why in one line, the exit code
    of a run stopped by a signal (its record marked by the flow) or whose Prefect API does not answer."""
    import httpx
    from prefect.exceptions import TerminationSignal

    try:
        return asyncio.run(parent(**parameters, return_state=True))
    except (KeyboardInterrupt, TerminationSignal) as exc:
        how, code = ("Ctrl-C", 130) if isinstance(exc, KeyboardInterrupt) else ("SIGTERM", 143)
        print(f"sluice: {parent.name} stopped ({how}); its run is marked crashed in etl_runs", file=sys.stderr)
        return code
    except Exception as exc:
        cause = exc  # Prefect's client raises its own error from httpx's (at the start: "Failed to reach API")
        while cause is not None and not isinstance(cause, httpx.TransportError):
            cause = cause.__cause__
        if cause is None:
            raise
        print(
            f"sluice: {parent.name}: the Prefect API at {api_url or 'the configured URL'} does not answer "
            f"({type(cause).__name__}: {cause})",
            file=sys.stderr,
        )
        return 1


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
        print(
            f"sluice: database migrated from schema revision {before or 'none'} to {head_revision()}", file=sys.stderr
        )
    return True


def report(summary: dict, demo_root: Path | None) -> None:
    counts = summary["counts"]
    print()
    print(f"users-etl run {summary['run_id']} completed")
    print(f"  database   {summary['database']}")
    print(
        "  tables     raw_users (+{raw_inserted}), processed_users (+{inserted} new, {updated} updated, "
        "{unchanged} unchanged), dlq_users (+{dlq_inserted})".format(**counts)
    )
    print(f"  records    {counts['extracted']} extracted, {counts['valid']} valid, {counts['invalid']} to the DLQ")
    for kind, path in summary["files"].items():
        print(f"  {kind:<10} {path}")
    for item in summary["delivered"]:
        where = f" (on disk: {demo_root})" if demo_root else ""
        print(f"  delivered  sftp:{item['remote_path']} {item['bytes']} bytes{where}")
    print("  look       `make api`, then open http://127.0.0.1:8000/ (the console) or /docs")


if __name__ == "__main__":
    sys.exit(main())
