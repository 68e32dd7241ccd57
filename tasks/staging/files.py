"""Staged files: byte spans of JSONL and Arrow files, read piece by piece and appended to, never rewritten."""

from __future__ import annotations

import functools
import hashlib
import io
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import polars as pl

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


def read_span(path: Path | str, offset: int, length: int) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(offset)
        return fh.read(length)


def read_pieces(path: Path | str, piece_bytes: int, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
    """A JSONL file's span (`split_spans`' arguments) read a piece of about `piece_bytes` at a time, each
    piece whole lines: a stage working piece by piece holds one piece's bytes and frames at a time."""
    for piece_offset, piece_length in split_spans(path, piece_bytes, offset, length):
        yield read_span(path, piece_offset, piece_length)


def append_with(path: Path | str, write: Callable[[BinaryIO], object] | None) -> tuple[int, int]:
    """Append what `write` writes to the file (nothing when None); returns the (offset, length) it occupies."""
    with open(path, "ab") as fh:
        start = fh.tell()
        if write is not None:
            write(fh)
        return start, fh.tell() - start


def file_size(path: Path | str) -> int:
    """Where an appended output would start: the file's size, 0 while it does not exist."""
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return 0


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
