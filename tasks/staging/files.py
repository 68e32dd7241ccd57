"""Staged files: byte spans of JSONL and Arrow files, read piece by piece and appended to, never rewritten.

A staged file is named by its location: a local path, or `s3://...` in the staging store (STAGING_URL), where
each append is a part of its own (tasks/staging/parts.py). Every function here takes either."""

from __future__ import annotations

import functools
import hashlib
import io
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import polars as pl

from tasks.staging.parts import PartsFile, is_remote, staging_store

# a stage works through a batch in pieces of about this many bytes of staged JSONL (about 1,500 DummyJSON
# users): the stage's memory is a piece's
PIECE_BYTES = 2 << 20


def file_sha256(path: Path | str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def split_spans(
    path: Path | str, target_bytes: int, offset: int = 0, length: int | None = None
) -> list[tuple[int, int]]:
    """Cut a JSONL file (or its span from `offset`, `length` bytes) into (offset, length) spans of about
    `target_bytes`, each ending on a newline."""
    if is_remote(path):
        return _remote_spans(PartsFile(str(path)), target_bytes, offset, length)
    size = Path(path).stat().st_size if length is None else offset + length
    spans, start = [], offset
    with open(path, "rb") as fh:
        while start < size:
            fh.seek(min(start + target_bytes, size))
            fh.readline()
            end = min(fh.tell(), size)
            spans.append((start, end - start))
            start = end
    return spans


def _remote_spans(staged: PartsFile, target_bytes: int, offset: int, length: int | None) -> list[tuple[int, int]]:
    """`split_spans` of a file in the store: each cut is the end of the line under its target (a ranged read
    of that line's bytes)."""
    size = staged.size() if length is None else offset + length
    spans, start = [], offset
    while start < size:
        end = at = min(start + target_bytes, size)
        while at < size:
            window = staged.read(at, min(64 << 10, size - at))
            newline = window.find(b"\n")
            if newline >= 0:
                end = at + newline + 1
                break
            at = end = at + len(window)
        spans.append((start, end - start))
        start = end
    return spans


def read_span(path: Path | str, offset: int, length: int) -> bytes:
    if is_remote(path):
        return PartsFile(str(path)).read(offset, length)
    with open(path, "rb") as fh:
        fh.seek(offset)
        data = fh.read(length)
    if len(data) != length:
        raise OSError(f"{path} ends before the span asked ({length} bytes from {offset}): got {len(data)} bytes")
    return data


def read_pieces(path: Path | str, piece_bytes: int, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
    """A JSONL file's span (`split_spans`' arguments) read a piece of about `piece_bytes` at a time, each
    piece whole lines: a stage working piece by piece holds one piece's bytes and frames at a time."""
    for piece_offset, piece_length in split_spans(path, piece_bytes, offset, length):
        yield read_span(path, piece_offset, piece_length)


def append_with(path: Path | str, write: Callable[[BinaryIO], object] | None) -> tuple[int, int]:
    """Append what `write` writes to the file (nothing when None); returns the (offset, length) it occupies."""
    if is_remote(path):
        buffer = io.BytesIO()
        if write is not None:
            write(buffer)
        return PartsFile(str(path)).append(buffer.getvalue())
    with open(path, "ab") as fh:
        start = fh.tell()
        if write is not None:
            write(fh)
        return start, fh.tell() - start


def file_size(path: Path | str) -> int:
    """Where an appended output would start: the file's size, 0 while it does not exist."""
    if is_remote(path):
        return PartsFile(str(path)).size()
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return 0


def reset(path: Path | str) -> str:
    """The staged file, created empty (an earlier one replaced); returns its location."""
    if is_remote(path):
        PartsFile(str(path)).reset()
    else:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(b"")
    return str(path)


def exists(path: Path | str) -> bool:
    return PartsFile(str(path)).exists() if is_remote(path) else Path(path).is_file()


def truncate(path: Path | str, length: int) -> None:
    """The staged file cut back to `length` bytes."""
    if is_remote(path):
        PartsFile(str(path)).truncate(length)
    else:
        with open(path, "r+b") as fh:
            fh.truncate(length)


def sync(path: Path | str) -> None:
    """What was appended to the file is durable (a local file's bytes on disk; a part in the store already is)."""
    if is_remote(path):
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove(path: Path | str) -> None:
    """A staged file or folder, gone (nothing there is no error)."""
    if is_remote(path):
        store = staging_store()
        key = store.key_of(str(path))
        if key is None:
            raise ValueError(f"{path} is not in the staging store {store.url}")
        store.remove(key)
    elif Path(path).is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        Path(path).unlink(missing_ok=True)


def within(root: Path | str, *parts: str) -> str:
    """The location of `parts` under the folder location `root`."""
    return "/".join([str(root).rstrip("/"), *parts])


def name(path: Path | str) -> str:
    """The file's name (its location's last part)."""
    return str(path).rstrip("/").rsplit("/", 1)[-1]


def append_bytes(path: Path | str, data: bytes) -> tuple[int, int]:
    """Append bytes as they are (whole lines: a piece of another staged file)."""
    return append_with(path, functools.partial(_write, data))


def _write(data: bytes, fh: BinaryIO) -> None:
    fh.write(data)


def append_lines(path: Path | str, df: pl.DataFrame) -> tuple[int, int]:
    """Append a frame as JSONL."""
    return append_with(path, df.write_ndjson if df.height else None)


def append_frame(path: Path | str, df: pl.DataFrame) -> tuple[int, int]:
    """Append a frame as one Arrow IPC stream (`read_frame` reads its span back)."""
    return append_with(path, df.write_ipc_stream)


def read_frame(data: bytes) -> pl.DataFrame:
    return pl.read_ipc_stream(io.BytesIO(data))


def append_text_lines(path: Path | str, lines: pl.Series) -> tuple[int, int]:
    """Append text lines as they are (no quoting)."""
    if not lines.len():
        return append_with(path, None)
    frame = pl.DataFrame({"l": lines})
    return append_with(
        path, functools.partial(frame.write_csv, include_header=False, quote_style="never", separator="\x1f")
    )
