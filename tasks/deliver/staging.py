"""Delivery in two phases, so the day's folder only ever holds whole files of runs that got through persist.

1. `stage_files`: each file goes to ``<remote_base>/.sluice-incoming/<run id>/<name>.part`` (size checked),
   while persist still works. First, what earlier runs left there is removed when their run is over.
2. `publish_files`: once persist succeeded, every staged file is checked to be still as uploaded, then each
   is renamed over its final name in the day's folder (atomic: ``posix-rename@openssh.com``), and reported
   to `record` the moment it lands. A file already there under that name (an earlier run's) is replaced.
3. `discard_files`: a failed run's staged uploads removed (best effort: the next run does it otherwise).

With `daily_name`, a file's remote name is its staged name without the run's file time, one per day and kind
(`records_20240517_120000.jsonl` -> `records.jsonl`): a rerun for the same day replaces, never adds.
"""

from __future__ import annotations

import posixpath
import re
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import paramiko
from prefect import task

from tasks.deliver.errors import SftpPublishError
from tasks.deliver.session import SftpOperation, SftpSession
from tasks.deliver.target import SftpTarget
from tasks.deliver.transfer import (
    SFTP_RETRIES,
    Location,
    check_local_files,
    makedirs,
    replace,
    run_logger,
    stat_or_none,
    write_verified,
)
from tasks.staging import files as staged_files
from tasks.staging.runner import timed_work

INCOMING_DIR = ".sluice-incoming"  # under SFTP_REMOTE_BASE: this deployment's uploads until published
PART_SUFFIX = ".part"
STALE_IDLE_SECONDS = 24 * 3600  # a run's uploads untouched this long are stale, whatever its state says
LEGACY_PART = re.compile(r"^\..+\.part-[0-9a-f]{12}$")  # temporaries of the one-step delivery it replaced
LEGACY_IDLE_SECONDS = 3600
RUN_STAMP = re.compile(r"_\d{8}_\d{6}(?=(\.[A-Za-z0-9]+)*$)")
SAFE_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class StagedFile:
    """One uploaded file waiting to be published: where it is (`local_path`: a path or a location in the staging
    store), where it goes, and how the server had it."""

    local_path: str
    temp_path: str
    remote_path: str
    bytes: int
    sha256: str
    mtime: int


def daily_name(staged_name: str) -> str:
    """The remote name of one day and kind: the staged name without its run's file time (`_YYYYMMDD_HHMMSS`)."""
    return RUN_STAMP.sub("", staged_name, count=1)


def incoming_dir(remote_base: str, run_id: str) -> str:
    if not SAFE_RUN_ID.fullmatch(run_id):
        raise ValueError(f"a run id names a remote folder: letters, digits, '.', '_' and '-' only, not {run_id!r}")
    return posixpath.join(remote_base.rstrip("/") or "/", INCOMING_DIR, run_id)


def _remove_tree(sftp: paramiko.SFTPClient, path: str) -> int:
    """`path` and what is in it; how many files went."""
    removed = 0
    for entry in sftp.listdir_attr(path):
        child = posixpath.join(path, entry.filename)
        if entry.st_mode is not None and stat.S_ISDIR(entry.st_mode):
            removed += _remove_tree(sftp, child)
        else:
            sftp.remove(child)
            removed += 1
    sftp.rmdir(path)
    return removed


def remove_stale(sftp: paramiko.SFTPClient, remote_base: str, keep: str, is_live: Callable[[str], bool]) -> list[str]:
    """Other runs' folders under ``.sluice-incoming``, removed when `is_live(run id)` says that run is over
    (or unknown) or nothing in them changed for `STALE_IDLE_SECONDS`; the folders removed."""
    parent = posixpath.dirname(incoming_dir(remote_base, keep))
    if stat_or_none(sftp, parent) is None:
        return []
    removed, now = [], time.time()
    for entry in sftp.listdir_attr(parent):
        path = posixpath.join(parent, entry.filename)
        if entry.filename == keep:
            continue
        if entry.st_mode is None or not stat.S_ISDIR(entry.st_mode):
            sftp.remove(path)  # nothing but run folders belongs here
            removed.append(path)
            continue
        touched = max([entry.st_mtime or 0] + [e.st_mtime or 0 for e in sftp.listdir_attr(path)])
        if now - touched < STALE_IDLE_SECONDS:
            try:
                if is_live(entry.filename):
                    continue
            except Exception as exc:  # noqa: BLE001  (cleaning is best effort: when in doubt, keep)
                run_logger().warning("kept %s: could not tell whether its run is over (%s)", path, exc)
                continue
        _remove_tree(sftp, path)
        removed.append(path)
    return removed


def _remove_legacy_parts(sftp: paramiko.SFTPClient, folder: str) -> int:
    now, removed = time.time(), 0
    for entry in sftp.listdir_attr(folder):
        if LEGACY_PART.match(entry.filename) and now - (entry.st_mtime or 0) > LEGACY_IDLE_SECONDS:
            sftp.remove(posixpath.join(folder, entry.filename))
            removed += 1
    return removed


def stage_files(
    target: SftpTarget,
    files: list[Path | str],
    remote_dir: str,
    run_id: str,
    names: list[str] | None = None,
    is_live: Callable[[str], bool] = lambda _run_id: True,
) -> list[StagedFile]:
    """Phase 1: `files` uploaded to this run's incoming folder, each meant for ``<remote_dir>/<name>``
    (`names`: the remote names, default the files' own). Stale folders of runs that are over go first."""
    paths: list[Location] = check_local_files(files, names)
    names = names or [staged_files.name(p) for p in paths]
    incoming, logger = incoming_dir(target.remote_base, run_id), run_logger()
    staged: list[StagedFile] = []
    with SftpSession(target) as session, SftpOperation(session) as op:
        sftp = session.sftp
        assert sftp is not None
        op.step = f"removing stale uploads under {posixpath.dirname(incoming)}"
        for folder in remove_stale(sftp, target.remote_base, run_id, is_live):
            logger.info("removed the stale uploads of an earlier run: %s", folder)
        if not paths:
            return staged
        op.step = f"creating {incoming}"
        makedirs(sftp, incoming)
        for path, name in zip(paths, names, strict=True):
            temp, final = posixpath.join(incoming, name + PART_SUFFIX), posixpath.join(remote_dir, name)
            op.step = f"uploading {staged_files.name(path)} to {temp}"
            started = time.perf_counter()
            written = write_verified(sftp, path, temp, final)
            logger.info(
                "staged %s -> %s:%s (%d bytes, %.1f MB/s, sha256 %s)",
                staged_files.name(path),
                target.address,
                temp,
                written.size,
                written.size / max(time.perf_counter() - started, 1e-9) / 1e6,
                written.sha256[:12],
            )
            staged.append(
                StagedFile(
                    local_path=str(path),
                    temp_path=temp,
                    remote_path=final,
                    bytes=written.size,
                    sha256=written.sha256,
                    mtime=written.mtime,
                )
            )
    return staged


def _landed_before(sftp: paramiko.SFTPClient, f: StagedFile) -> bool:
    """The staged file is gone because an earlier attempt published it: the final name has its size and
    mtime (a rename keeps both)."""
    attrs = stat_or_none(sftp, f.remote_path)
    return attrs is not None and (attrs.st_size, int(attrs.st_mtime or 0)) == (f.bytes, f.mtime)


def _check_staged(sftp: paramiko.SFTPClient, target: SftpTarget, staged: list[StagedFile]) -> list[StagedFile]:
    """The staged files still to rename; SftpPublishError, before anything is renamed, if one is not as
    uploaded (and not published by an earlier attempt)."""
    pending = []
    for f in staged:
        attrs = stat_or_none(sftp, f.temp_path)
        if attrs is None and _landed_before(sftp, f):
            continue
        found = "missing" if attrs is None else f"{attrs.st_size} bytes, modified at {int(attrs.st_mtime or 0)}"
        if attrs is None or (attrs.st_size, int(attrs.st_mtime or 0)) != (f.bytes, f.mtime):
            raise SftpPublishError(
                f"the staged upload {f.temp_path} on {target.address} is not as uploaded ({found}; expected "
                f"{f.bytes} bytes, modified at {f.mtime}): nothing was published. Another process changed or "
                "removed it; run the flow again to deliver anew"
            )
        pending.append(f)
    return pending


def publish_files(
    target: SftpTarget, staged: list[StagedFile], record: Callable[[list[StagedFile]], None] | None = None
) -> list[StagedFile]:
    """Phase 2: every staged file checked, then renamed over its final name one by one, `record` told the
    files landed so far after each; the run's incoming folder removed. Returns the files landed.
    A retry (after a lost connection) picks up where the last attempt stopped."""
    if not staged:
        return []
    logger = run_logger()
    with SftpSession(target) as session, SftpOperation(session) as op:
        sftp = session.sftp
        assert sftp is not None
        op.step = "checking the staged uploads"
        pending = _check_staged(sftp, target, staged)
        landed = [f for f in staged if f not in pending]
        if landed and record is not None:
            record(landed)
        for folder in sorted({posixpath.dirname(f.remote_path) for f in pending}):
            op.step = f"creating {folder}"
            makedirs(sftp, folder)
            if removed := _remove_legacy_parts(sftp, folder):
                logger.info("removed %d stale partial upload(s) of the one-step delivery in %s", removed, folder)
        for f in pending:
            op.step = f"publishing {posixpath.basename(f.temp_path)} as {f.remote_path}"
            replace(sftp, f.temp_path, f.remote_path)
            landed = [g for g in staged if g in landed or g == f]
            logger.info(
                "delivered %s -> %s:%s (%d bytes)",
                staged_files.name(f.local_path),
                target.address,
                f.remote_path,
                f.bytes,
            )
            if record is not None:
                record(landed)
        folder = posixpath.dirname(staged[0].temp_path)
        op.step = f"removing {folder}"
        if stat_or_none(sftp, folder) is not None:
            _remove_tree(sftp, folder)
    return landed


def discard_files(target: SftpTarget, run_id: str) -> int:
    """This run's incoming folder removed (a run that failed before publishing); how many files went."""
    folder = incoming_dir(target.remote_base, run_id)
    with SftpSession(target) as session, SftpOperation(session) as op:
        sftp = session.sftp
        assert sftp is not None
        op.step = f"removing {folder}"
        return _remove_tree(sftp, folder) if stat_or_none(sftp, folder) is not None else 0


stage_task = task(name="sftp-stage", **SFTP_RETRIES)(timed_work(stage_files))  # type: ignore[call-overload]
publish_task = task(name="sftp-publish", **SFTP_RETRIES)(timed_work(publish_files))  # type: ignore[call-overload]
