"""How streaming stages hand batches to each other: an append-only JSONL manifest per stage.

A stage posts one small line per staged batch (a path and a byte span, never the data) as soon as the batch
is on disk, then an end line saying `done` or `failed`. The next stage follows the manifest and works on
each batch while its upstream is still producing, so extract, transform and persist overlap. A manifest
that is complete can also be replayed on its own: a stage re-runs from what the previous one staged.

A failing stage raises its own error; the stages it feeds get `UpstreamFailedError` once they have handled
every batch posted before the failure (nothing already staged is dropped), and the stages feeding it see
the run's cancel flag between batches and stop with `RunCancelledError`.

The stages of a run share one process, so a failure and a cancel are also told in memory, first: a stage
that fails because the disk is full, and so cannot write its end line or flag, still stops the others
within a poll. A follower waits on a manifest without limit only while its writer is known to be running in
this process (`writing`); a manifest nobody here writes is abandoned after IDLE_TIMEOUT_SECONDS of silence."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import orjson

T = TypeVar("T")
END = "_end"
STAGES = ("extract", "transform", "persist")  # stream order: a failure stops the stages before it (deliver,
# which starts once transform is done, stops nothing: what is being stored gets stored)
RUN = "run"  # the parent itself failed: every stage stops
POLL_SECONDS = 0.01
IDLE_TIMEOUT_SECONDS = 60.0  # a manifest no stage of this process writes, silent this long, is abandoned


class UpstreamFailedError(RuntimeError):
    """The stage feeding this one failed; its error is the run's."""


class RunCancelledError(RuntimeError):
    """A later stage failed, so this one stopped early."""


_lock = threading.Lock()
_failed: dict[str, str] = {}  # manifest -> the error its stage closed it with (told in memory too)
_cancelled: dict[str, set[str]] = {}  # run dir -> the stages (or RUN) that failed
_writers: dict[str, int] = {}  # manifest -> stages of this process writing it now


def _key(path: str | Path) -> str:
    return os.path.abspath(os.fspath(path))


@contextmanager
def writing(manifest: str | Path) -> Iterator[None]:
    """While the block runs, a stage of this process is writing `manifest`: its followers wait for it."""
    key = _key(manifest)
    with _lock:
        _writers[key] = _writers.get(key, 0) + 1
    try:
        yield
    finally:
        with _lock:
            _writers[key] -= 1
            if not _writers[key]:
                del _writers[key]


def forget(run_dir: str | Path) -> None:
    """The run is over: drop what this process kept in memory about its stages."""
    root = _key(run_dir)
    with _lock:
        _cancelled.pop(root, None)
        for manifest in [m for m in _failed if m.startswith(root + os.sep)]:
            del _failed[manifest]


def reopen(run_dir: str | Path) -> None:
    """The stages start again in `run_dir` (a shard run again on the same host): an earlier attempt's failure
    flags go, on disk and in memory."""
    forget(run_dir)
    for flag in (Path(run_dir) / "stages").glob("failed.*"):
        flag.unlink(missing_ok=True)


def post(manifest: str | Path, entry: object) -> None:
    """Append one entry, a dataclass of tasks/staging/batches.py (or a dict), as a single write of one line,
    so a follower never sees half of it."""
    fd = os.open(manifest, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, msgspec.json.encode(entry) + b"\n")
    finally:
        os.close(fd)


def open_manifest(manifest: str | Path) -> str:
    """An empty manifest (any earlier one replaced, and its stage no longer marked started); returns its path."""
    Path(manifest).parent.mkdir(parents=True, exist_ok=True)
    Path(manifest).write_bytes(b"")
    _started_mark(manifest).unlink(missing_ok=True)
    with _lock:
        _failed.pop(_key(manifest), None)
    return str(manifest)


def _started_mark(manifest: str | Path) -> Path:
    """The file beside `manifest` that says its stage is running."""
    return Path(f"{manifest}.started")


def mark_started(manifest: str | Path) -> None:
    """The stage that posts to `manifest` is running (its child flow run exists)."""
    _started_mark(manifest).touch()


def has_started(manifest: str | Path) -> bool:
    return _started_mark(manifest).exists()


def close(manifest: str | Path, *, error: str | None = None, **summary) -> None:
    """The end line. A failure is told in memory first, and its end line is written if the disk lets it."""
    if not error:
        post(manifest, {END: "done", "error": None, **summary})
        return
    with _lock:
        _failed[_key(manifest)] = error
    try:
        post(manifest, {END: "failed", "error": error, **summary})
    except OSError:  # a full disk, say: this process's followers know already
        pass


def _flag(run_dir: str | Path, stage: str) -> Path:
    return Path(run_dir) / "stages" / f"failed.{stage}"


def cancel(run_dir: str | Path, failed_stage: str) -> None:
    """`failed_stage` failed: the stages feeding it stop at their next batch (those it feeds are told by its
    manifest's end line, after the batches already posted). Told in memory, then by a flag file if the disk
    lets it."""
    with _lock:
        _cancelled.setdefault(_key(run_dir), set()).add(failed_stage)
    try:
        _flag(run_dir, failed_stage).parent.mkdir(parents=True, exist_ok=True)
        _flag(run_dir, failed_stage).touch()
    except OSError:
        pass


def check_cancelled(run_dir: str | Path | None, stage: str) -> None:
    """Raise if a stage that `stage` feeds (or the run itself) has failed."""
    if run_dir is None:
        return
    told = _cancelled.get(_key(run_dir), ())
    for later in (*STAGES[STAGES.index(stage) + 1 :], RUN):
        if later in told or _flag(run_dir, later).exists():
            raise RunCancelledError(f"{stage} stopped: {later} failed")


def follow(
    manifest: str | Path,
    into: type[T] | None = None,
    *,
    stage: str | None = None,
    run_dir: str | Path | None = None,
    poll: float = POLL_SECONDS,
    idle_timeout: float = IDLE_TIMEOUT_SECONDS,
) -> Iterator[Any]:
    """Each entry of `manifest` as it is posted, until its end line; waits while the upstream is working (as
    long as it takes while its stage runs in this process, else up to `idle_timeout` without a new line).
    With `run_dir`, `stage` (the follower) stops when a stage it feeds has failed."""
    buf, last_growth, key = b"", time.monotonic(), _key(manifest)
    with open(manifest, "rb") as fh:
        while True:
            failed, writer_running = _failed.get(key), key in _writers  # before the read: nothing is missed
            chunk = fh.read()
            if chunk:
                last_growth = time.monotonic()
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    entry = orjson.loads(line)
                    if END not in entry:
                        if stage:
                            check_cancelled(run_dir, stage)
                        yield entry if into is None else msgspec.convert(entry, into)
                    elif entry[END] == "failed":
                        raise UpstreamFailedError(f"{Path(manifest).stem} failed: {entry.get('error')}")
                    else:
                        return
                continue
            if failed is not None:  # every line posted before the failure was read: its end line may never come
                raise UpstreamFailedError(f"{Path(manifest).stem} failed: {failed}")
            if stage:
                check_cancelled(run_dir, stage)
            if not writer_running and time.monotonic() - last_growth > idle_timeout:
                raise UpstreamFailedError(f"{manifest}: no end line after {idle_timeout:.0f}s without news")
            time.sleep(poll)


def read_all(manifest: str | Path, into: type[T] | None = None) -> list:
    """The entries of a finished manifest (its end line excluded), as `into` when given."""
    return list(follow(manifest, into, idle_timeout=0.0))


def end_summary(manifest: str | Path) -> dict:
    """What a finished manifest's end line says (the summary its stage closed it with); {} before its end."""
    with open(manifest, "rb") as fh:
        for line in reversed(fh.read().splitlines()):
            entry = orjson.loads(line)
            if END in entry:
                return {k: v for k, v in entry.items() if k not in (END, "error")}
    return {}
