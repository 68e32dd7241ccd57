"""`dlq-replay`: open dead-letter records of the users pipeline judged again by today's rules and today's
DEPARTMENTS_CSV, for records rejected because of reference data or a rule since fixed. Those valid now become
users (the newest observation of a user still wins) and their entries resolve with this run (`replayed`); the
rest stay open with today's reasons. Filtered like GET /dlq: by rule (`reason`) and by the first or last run
that rejected the record (`run_id`). Recorded in etl_runs like any run: `extracted` counts the entries examined,
`valid` and `invalid` what today's rules say of them. This module only coordinates: the work is in
tasks/users/replay.py."""

from __future__ import annotations

from prefect import get_run_logger

from flows.runtime import RunStart, begin_run, parent_flow, record_failure
from models.rules import dlq_reasons
from models.settings import get_settings
from tasks import runs
from tasks.staging.files import file_sha256
from tasks.users.replay import REPLAY_PAGE, ReplayTally, judge_page, read_entries, store_page
from tasks.users.replay_judge import source_fields
from tasks.users.transform import load_departments

FLOW_NAME = "dlq-replay"
STAGE = "replay"


@parent_flow(name=FLOW_NAME, on_failure=[record_failure], on_crashed=[record_failure])
def dlq_replay(
    reason: str | None = None,
    run_id: str | None = None,
    page_size: int = REPLAY_PAGE,
    database_block: str | None = None,
) -> dict:
    """`reason`: only records that failed this rule (a name GET /dlq lists, e.g. department_unknown);
    `run_id`: only records the run of that id rejected first or last; `page_size`: entries judged and stored
    per transaction. Without filters every open record is judged again."""
    run = begin_run(FLOW_NAME, database_block)
    try:
        if reason is not None and reason not in dlq_reasons():
            raise ValueError(f"reason {reason!r} is no rule name: see GET /dlq's `reason` for the names")
        tally = run.stages.run(STAGE, replay_pages, run, reason=reason, run_id=run_id, page_size=page_size)
    except BaseException:
        runs.update_run(run.engine, run_id=run.run_id, failed_stage=STAGE, stage_seconds=run.stages.seconds)
        raise
    return finish(run, tally, filters={"reason": reason, "run_id": run_id})


def replay_pages(run: RunStart, *, reason: str | None, run_id: str | None, page_size: int) -> ReplayTally:
    """Every matching open entry, a page at a time: read, judged, stored (one transaction per page)."""
    settings = get_settings()
    path = str(settings.departments_csv)
    departments = load_departments(path, file_sha256(path))
    fields = source_fields(settings)
    tally, after = ReplayTally(), 0
    while True:
        entries = read_entries(run.engine, after=after, limit=page_size, reason=reason, run_id=run_id)
        if entries.height == 0:
            return tally
        after = int(entries.get_column("id").max())
        judged = judge_page(entries, departments, fields)
        tally.add(judged, store_page(run.engine, judged, run_id=run.run_id))


def finish(run: RunStart, tally: ReplayTally, *, filters: dict[str, str | None]) -> dict:
    """The run recorded as completed in etl_runs (the still failing rules as its DLQ reasons), its summary."""
    reasons = dict(sorted(tally.reasons.items()))
    runs.finish_run(
        run.engine,
        run_id=run.run_id,
        status="completed",
        stage_seconds=run.stages.seconds,
        dlq_reasons=reasons,
        **tally.run_fields(),
    )
    summary = {
        "run_id": run.run_id,
        "status": "completed",
        "filters": {k: v for k, v in filters.items() if v is not None},
        "counts": tally.summary(),
        "dlq_reasons": reasons,
        "stage_seconds": run.stages.seconds,
        "database": run.engine.url.render_as_string(hide_password=True),
    }
    get_run_logger().info("dlq-replay done: %s", summary["counts"])
    return summary
