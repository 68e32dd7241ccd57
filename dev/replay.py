"""`make replay`: the dlq-replay flow once (REASON=<rule> and RUN_ID=<run id> narrow it), then what it did.

The machinery of `make run` (dev/run.py): the process tuned and given Prefect's logging configuration, the
database migrated, a local Prefect server when no Prefect API is configured; a run stopped by a signal or whose
Prefect API does not answer ends with one line on stderr."""

from __future__ import annotations

import argparse
import os
import sys

from dev.run import LOGGING_FILE, VAR_DIR, prepared_settings, run_flow


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    from models.rules import dlq_reasons  # (names only: nothing heavy)

    parser = argparse.ArgumentParser(
        prog="make replay",
        description="Judge the open DLQ records again with today's rules and DEPARTMENTS_CSV.",
    )
    parser.add_argument("--reason", choices=dlq_reasons(), metavar="RULE", help="only records that failed this rule")
    parser.add_argument("--run-id", help="only records that this run rejected first or last")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    from flows.process import tune

    tune()  # before anything loads Polars
    os.environ.setdefault("PREFECT_LOGGING_SETTINGS_PATH", str(LOGGING_FILE))  # before anything loads Prefect
    from dev.prefect_server import local_prefect_api

    with local_prefect_api(VAR_DIR) as api:
        if prepared_settings(api) is None:
            return 2
        from flows.dlq_replay import dlq_replay  # imported while that server starts

        api.wait_ready()
        state = run_flow(dlq_replay, api.url, reason=args.reason, run_id=args.run_id)
    if isinstance(state, int):
        return state
    if not state.is_completed():
        print(f"sluice: dlq-replay {state.name}: {state.message}", file=sys.stderr)
        return 1
    report(state.result())
    return 0


def report(summary: dict) -> None:
    c = summary["counts"]
    filters = ", ".join(f"{k}={v}" for k, v in summary["filters"].items()) or "none (every open record)"
    print()
    print(f"dlq-replay run {summary['run_id']} completed")
    print(f"  database   {summary['database']}")
    print(f"  filters    {filters}")
    print(
        f"  records    {c['examined']} examined: {c['valid']} valid now, {c['still_invalid']} still invalid"
        + (f" ({c['skipped']} without a raw record to judge)" if c["skipped"] else "")
    )
    print(
        f"  users      {c['inserted']} new, {c['updated']} updated, {c['restored']} current again, "
        f"{c['unchanged']} unchanged"
    )
    print(
        f"  dlq_users  {c['replayed']} resolved as replayed, {c['superseded']} superseded by a newer observation, "
        f"{c['reasons_changed']} with new reasons"
    )
    for rule, n in summary["dlq_reasons"].items():
        print(f"  still      {rule}: {n}")
    print("  look       `make api`, then http://127.0.0.1:8000/ (the console) or GET /dlq")


if __name__ == "__main__":
    sys.exit(main())
