"""`deliver` and `deliver-publish`: the run's staged files to the SFTP drop, in two phases (child flows of
users-etl and feeds-etl; `tasks/deliver/staging.py` has the how).

A parent that persists while it delivers calls ``deliver(..., publish=False)`` alongside persist (the
uploads, to this run's incoming folder), then ``publish_delivery(staged, ...)`` once persist succeeded, or
``discard_delivery(run_id)`` if the run failed: a run that fails before persist is done delivers nothing.
``deliver(...)`` with ``publish=True`` (the default) does both phases at once, for a parent that delivers
after persist. With a `run_id`, each file is recorded in that run's `etl_runs` row as it lands."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

from prefect import flow, get_client, get_run_logger
from prefect.exceptions import ObjectNotFound
from prefect.runtime import flow_run as current_run

from models.db import resolve_engine
from models.settings import get_settings
from tasks import runs
from tasks.deliver import (
    SftpTarget,
    StagedFile,
    daily_name,
    discard_files,
    publish_task,
    remote_dir_for,
    stage_task,
)
from tasks.deliver_files import files_to_deliver
from tasks.staging.files import name as file_name

DISCARD_TIMEOUT_SECONDS = 10.0  # a failing run does not wait long on a server that may be why it failed


@dataclass
class DeliveryResult:
    """What `deliver` or `publish_delivery` did: the files that landed (local and remote path, bytes, sha256:
    what the run's summary lists), and the uploads waiting to be published (`deliver(..., publish=False)`)."""

    delivered: list[dict] = field(default_factory=list)
    staged: list[StagedFile] = field(default_factory=list)


def run_is_live(run_id: str) -> bool:
    """Whether Prefect knows `run_id` as a flow run not yet over (its uploads are not stale)."""
    try:
        flow_run_id = UUID(run_id)
    except ValueError:
        return False
    try:
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(flow_run_id).state
    except ObjectNotFound:
        return False
    return state is not None and not state.is_final()


def _delivered(landed: list[StagedFile]) -> list[dict]:
    return [
        {"local_path": f.local_path, "remote_path": f.remote_path, "bytes": f.bytes, "sha256": f.sha256} for f in landed
    ]


def _recorder(run_id: str | None, database_block: str | None):
    """Each landed file in the run's row (remote paths and sizes only), or nothing without a run id."""
    if run_id is None:
        return None
    engine = resolve_engine(database_block)

    def record(landed: list[StagedFile]) -> None:
        runs.update_run(
            engine,
            run_id=run_id,
            delivered=[{"remote_path": f.remote_path, "bytes": f.bytes} for f in landed],
            delivered_files=len(landed),
            delivered_bytes=sum(f.bytes for f in landed),
        )

    return record


@flow(name="deliver")
def deliver(
    files: list[str],
    run_date: str,
    raw_files: list[str] | None = None,
    run_id: str | None = None,
    database_block: str | None = None,
    publish: bool = True,
    daily_names: bool = False,
) -> DeliveryResult:
    """The run's JSONL files (local paths or `s3://` locations in the staging store) -> SFTP_REMOTE_BASE/<run
    date>/ (skipped, and said so, when SFTP_HOST is unset).
    `raw_files`, those of `files` that are raw-layer files, go as DELIVER_RAW says: masked copies by default,
    as staged (`full`) or not at all (`none`). `daily_names`: one remote name per day and kind (the staged
    name without its file_time), replaced by a rerun; else the staged names. `publish=False` stops after the
    uploads: the result's `staged` is then for `publish_delivery`. `run_id` (default: this flow run's, or its
    parent's with `publish=False`) names the run's incoming folder and, when given, the etl_runs row recording
    what landed."""
    settings, logger = get_settings(), get_run_logger()
    if not settings.sftp_enabled:
        logger.warning("SFTP_HOST is not set: delivery skipped")
        return DeliveryResult()
    target = SftpTarget.from_settings(settings)  # passphrase: SFTP_KEY_PASSPHRASE or its Secret block
    remote_dir = remote_dir_for(target.remote_base, datetime.fromisoformat(run_date).date())
    paths = files_to_deliver(files, raw_files or [], settings.deliver_raw)
    if raw_files:
        logger.info("deliver: %d raw file(s), DELIVER_RAW=%s", len(raw_files), settings.deliver_raw)
    names = [daily_name(file_name(p)) if daily_names else file_name(p) for p in paths]
    # the uploads wait in a folder named after a run that stays live until they are published
    folder = run_id or (current_run.id if publish else current_run.parent_flow_run_id or current_run.id)
    staged = stage_task(target, paths, remote_dir, folder, names=names, is_live=run_is_live)
    logger.info("deliver: %d files, %d bytes staged on %s", len(staged), sum(f.bytes for f in staged), target.host)
    if not publish:
        return DeliveryResult(staged=staged)
    landed = publish_task(target, staged, record=_recorder(run_id, database_block))
    logger.info(
        "deliver: %d files, %d bytes to %s:%s", len(landed), sum(f.bytes for f in landed), target.host, remote_dir
    )
    return DeliveryResult(delivered=_delivered(landed))


@flow(name="deliver-publish")
def publish_delivery(
    staged: list[StagedFile], run_id: str | None = None, database_block: str | None = None
) -> DeliveryResult:
    """`deliver`'s staged uploads renamed into place, once the run's data is persisted; each file recorded in
    `run_id`'s etl_runs row as it lands."""
    settings, logger = get_settings(), get_run_logger()
    if not staged or not settings.sftp_enabled:
        return DeliveryResult()
    target = SftpTarget.from_settings(settings)
    landed = publish_task(target, staged, record=_recorder(run_id, database_block))
    logger.info("deliver: %d files, %d bytes to %s", len(landed), sum(f.bytes for f in landed), target.host)
    return DeliveryResult(delivered=_delivered(landed))


def discard_delivery(run_id: str) -> None:
    """A failed run's staged uploads removed, best effort (the next run removes what is left)."""
    settings, logger = get_settings(), get_run_logger()
    if not settings.sftp_enabled:
        return
    try:
        target = dataclasses.replace(SftpTarget.from_settings(settings), timeout=DISCARD_TIMEOUT_SECONDS)
        removed = discard_files(target, run_id)
    except Exception as exc:  # noqa: BLE001  (the run is failing already: say so, do not mask its error)
        logger.warning("this run's staged uploads are left for the next run to remove: %s", exc)
        return
    if removed:
        logger.info("removed this run's %d staged upload(s): nothing of it was published", removed)
