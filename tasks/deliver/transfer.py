"""Moving bytes: a file streamed to a remote name and checked, a rename over the final name, `mkdir -p`;
and `upload_files`, the one-shot upload (temporary name beside the final one, then renamed) that the
benchmark and the demo use. The flows deliver in two phases instead (`tasks.deliver.staging`)."""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import logging
import os
import posixpath
import re
import secrets
import socket
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko
from paramiko.sftp import CMD_STATUS
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from tasks.deliver.errors import SftpRemoteError, SftpVerificationError, is_transient
from tasks.deliver.session import SftpOperation, SftpSession
from tasks.deliver.target import SftpTarget
from tasks.retry import retry_when
from tasks.staging import files as staged
from tasks.staging.parts import is_remote
from tasks.staging.runner import timed_work

log = logging.getLogger(__name__)

# One SFTP write request per SSH packet: the peer's max packet is 32 KiB for session
# channels (OpenSSH, asyncssh), and paramiko leaves 64 bytes of it for framing; a write
# request adds ~30 bytes of header. A 32 KiB payload would spill into a second tiny packet.
WRITE_CHUNK = 32 * 1024 - 256
READ_BLOCK = 1024 * 1024
STORE_READ_BLOCK = 8 * 1024 * 1024  # a file in the staging store is read a ranged GET at a time: fewer, larger
TEMP_MARKER = ".part-"  # upload_files' temporaries: `.<name>.part-<12 hex>` beside the final name
SFTP_RETRIES = dict(  # network trouble is retried, never trust or configuration errors
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_when(is_transient),
    cache_policy=NO_CACHE,  # a side effect, and the target holds a secret: never hash/cache
)


Location = Path | str  # a file to deliver: a local path, or s3://... in the staging store (tasks/staging/files.py)


def as_location(file: Path | str) -> Location:
    """A file to deliver as the stages name it: a local one as a Path, one in the staging store as its
    `s3://` string (a Path would collapse `s3://` to `s3:/`)."""
    return file if is_remote(file) else Path(file)


@contextlib.contextmanager
def read_blocks(location: Location) -> Iterator[Iterator[bytes]]:
    """The file's bytes a block at a time (never the whole file), opened before anything is sent: a local
    file read through, a file in the staging store as consecutive ranges of the size it has now."""
    if is_remote(location):
        size = staged.file_size(location)
        yield (
            staged.read_span(location, offset, min(STORE_READ_BLOCK, size - offset))
            for offset in range(0, size, STORE_READ_BLOCK)
        )
        return
    with open(location, "rb") as source:
        yield iter(functools.partial(source.read, READ_BLOCK), b"")


@dataclass(frozen=True)
class Written:
    """A file as the server has it after `write_verified`: size and mtime (as the server reports them)."""

    size: int
    sha256: str
    mtime: int


def run_logger() -> Any:
    try:
        from prefect.logging import get_run_logger

        return get_run_logger()
    except Exception:  # noqa: BLE001  (MissingContextError outside a flow/task run)
        return log


def is_missing(exc: OSError) -> bool:
    return isinstance(exc, FileNotFoundError) or exc.errno == errno.ENOENT


def stat_or_none(sftp: paramiko.SFTPClient, path: str) -> paramiko.SFTPAttributes | None:
    try:
        return sftp.stat(path)
    except OSError as exc:
        if is_missing(exc):
            return None
        raise


def makedirs(sftp: paramiko.SFTPClient, path: str) -> None:
    """``mkdir -p`` over SFTP (tolerates a concurrent creator)."""
    path = path.rstrip("/") or "/"
    attrs = stat_or_none(sftp, path)
    if attrs is not None:
        if attrs.st_mode is not None and not stat.S_ISDIR(attrs.st_mode):
            raise SftpRemoteError(f"remote path {path} exists and is not a directory")
        return
    parent = posixpath.dirname(path)
    if parent and parent != path:
        makedirs(sftp, parent)
    try:
        sftp.mkdir(path)
    except OSError:
        attrs = sftp.stat(path)  # raced with another creator? then it is a directory now
        if attrs.st_mode is None or not stat.S_ISDIR(attrs.st_mode):
            raise


def _await_write_acks(remote: paramiko.SFTPFile) -> None:
    """Collect the server's status for every pipelined write.

    paramiko files pipelined writes under no file object, so an error status for one of
    the last outstanding writes would be dropped silently at close. Reading them here
    turns such a status (disk full, quota, ...) into an exception.
    """
    pending = getattr(remote, "_reqs", None)
    expecting = getattr(remote.sftp, "_expecting", None)
    if pending is None or expecting is None:
        return  # a paramiko without these internals: rely on the size check alone
    while pending:
        request = pending.popleft()
        if request not in expecting:
            continue  # its reply was already consumed (out-of-order server); don't wait for it
        kind, _ = remote.sftp._read_response(request)
        if kind != CMD_STATUS:
            raise paramiko.SFTPError("unexpected reply to an SFTP write")


def write_verified(sftp: paramiko.SFTPClient, local: Location, remote: str, final: str) -> Written:
    """`local` (a path or a location in the staging store) written to `remote` (pipelined), every write
    acknowledged, then its size on the server checked (`final` is the name the file is meant for, for the
    message)."""
    digest, sent = hashlib.sha256(), 0
    with read_blocks(local) as blocks, sftp.open(remote, "wb") as out:
        out.set_pipelined(True)
        for block in blocks:
            digest.update(block)
            view = memoryview(block)
            for offset in range(0, len(view), WRITE_CHUNK):
                out.write(view[offset : offset + WRITE_CHUNK])
            sent += len(block)
        _await_write_acks(out)
    attrs = sftp.stat(remote)
    if attrs.st_size != sent:
        raise SftpVerificationError(
            f"upload of {staged.name(local)} to {final} is incomplete: the server has {attrs.st_size} bytes, "
            f"{sent} were sent"
        )
    return Written(size=sent, sha256=digest.hexdigest(), mtime=int(attrs.st_mtime or 0))


def replace(sftp: paramiko.SFTPClient, source: str, dest: str) -> None:
    """Rename ``source`` over ``dest``, atomically when the server supports POSIX rename."""
    try:
        sftp.posix_rename(source, dest)
        return
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.EACCES):
            raise
    # Server without posix-rename@openssh.com: SFTPv3 rename refuses to overwrite.
    try:
        sftp.remove(dest)
    except FileNotFoundError:
        pass
    sftp.rename(source, dest)


def check_local_files(files: list[Path | str], names: list[str] | None = None) -> list[Location]:
    """The files as locations (`as_location`), each there and readable; their remote `names` (default: their
    own) distinct."""
    locations = [as_location(f) for f in files]
    seen: dict[str, Location] = {}
    for path, name in zip(locations, names or [staged.name(p) for p in locations], strict=True):
        if isinstance(path, str):  # in the staging store (`as_location` leaves only those strings)
            if not staged.exists(path):
                raise FileNotFoundError(f"file to deliver is not in the staging store: {path}")
        elif not path.is_file():
            raise FileNotFoundError(f"file to deliver does not exist or is not a file: {path}")
        elif not os.access(path, os.R_OK):
            raise PermissionError(f"file to deliver is not readable: {path}")
        if name in seen:
            raise ValueError(f"two files to deliver share the name {name!r}: {seen[name]} and {path}")
        seen[name] = path
    return locations


def _temp_pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"^\.{re.escape(name)}{re.escape(TEMP_MARKER)}[0-9a-f]{{12}}$")


def _upload_one(sftp: paramiko.SFTPClient, local: Location, remote_dir: str, listing: list[str]) -> dict[str, Any]:
    name = staged.name(local)
    final = posixpath.join(remote_dir, name)
    stale = [e for e in listing if _temp_pattern(name).match(e)]
    for entry in stale:
        try:
            sftp.remove(posixpath.join(remote_dir, entry))
        except FileNotFoundError:
            pass
    if stale:
        run_logger().info("removed %d stale partial upload(s) of %s in %s", len(stale), name, remote_dir)
    temp = posixpath.join(remote_dir, f".{name}{TEMP_MARKER}{secrets.token_hex(6)}")
    renamed = False
    try:
        written = write_verified(sftp, local, temp, final)
        replace(sftp, temp, final)
        renamed = True
    except BaseException as exc:
        channel = sftp.get_channel()
        connection_ok = (
            channel is not None
            and not channel.closed
            and not isinstance(exc, (socket.timeout, TimeoutError, EOFError, ConnectionError, paramiko.SSHException))
        )
        if not renamed and connection_ok:
            try:  # best effort; otherwise the next attempt removes it
                sftp.remove(temp)
            except Exception:  # noqa: BLE001
                pass
        raise
    return {"local_path": str(local), "remote_path": final, "bytes": written.size, "sha256": written.sha256}


def upload_files(target: SftpTarget, files: list[Path | str], remote_dir: str) -> list[dict[str, Any]]:
    """Upload ``files`` into ``remote_dir`` (created with parents if missing).

    Each file goes to a temporary ``.<name>.part-<random>`` in ``remote_dir``, its size is
    checked with ``stat``, then it is renamed over ``<remote_dir>/<name>`` (replacing an
    earlier copy). Leftover temporaries of the same name from an interrupted attempt are
    removed first. Returns, per file, ``local_path``, ``remote_path``, ``bytes``, ``sha256``.
    """
    locations = check_local_files(files)
    logger = run_logger()
    results: list[dict[str, Any]] = []
    if not locations:
        logger.info("nothing to deliver to %s", target.address)
        return results
    remote_dir = remote_dir.rstrip("/") or "/"
    with SftpSession(target) as session, SftpOperation(session) as op:
        sftp = session.sftp
        assert sftp is not None
        op.step = f"creating {remote_dir}"
        makedirs(sftp, remote_dir)
        listing = sftp.listdir(remote_dir)
        for path in locations:
            op.step = f"uploading {staged.name(path)} to {remote_dir}"
            started = time.perf_counter()
            result = _upload_one(sftp, path, remote_dir, listing)
            logger.info(
                "delivered %s -> %s:%s (%d bytes, %.1f MB/s, sha256 %s)",
                staged.name(path),
                target.address,
                result["remote_path"],
                result["bytes"],
                result["bytes"] / max(time.perf_counter() - started, 1e-9) / 1e6,
                result["sha256"][:12],
            )
            results.append(result)
    return results


deliver_files_task = task(name="sftp-upload", **SFTP_RETRIES)(timed_work(upload_files))  # type: ignore[call-overload]
