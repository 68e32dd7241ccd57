"""Which files a run delivers: its processed and DLQ files as they are (masked already), its raw files as
DELIVER_RAW says: masked copies (the default, as everywhere outside the raw layer), as staged (`full`;
passwords are never staged) or not at all (`none`). The staged raw files themselves stay as received.

A file is named by its location (tasks/staging/files.py): a local path, kept as a Path, or `s3://...` in the
staging store, kept as its string (`tasks.deliver.transfer.as_location`)."""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.deliver.transfer import Location, as_location
from tasks.parse import read_lines
from tasks.redact import mask_sensitive
from tasks.staging.files import PIECE_BYTES, append_text_lines, read_pieces, reset
from tasks.staging.parts import is_remote

DeliverRaw = Literal["masked", "full", "none"]
MASKED_DIR = "deliver"  # beside the staged file's folder, in its run's folder
REMOTE_SCHEME = "s3://"


def masked_path(raw_path: Path | str) -> Location:
    """Where a raw file's masked copy goes: `<run folder>/deliver/<its name>` (delivered under that name); for
    a file in the staging store, there in the store."""
    if not is_remote(raw_path):
        raw = Path(raw_path)
        return raw.parent.parent / MASKED_DIR / raw.name
    key = str(raw_path).removeprefix(REMOTE_SCHEME)
    run_folder = posixpath.dirname(posixpath.dirname(key))
    if not run_folder:  # a file at a bucket's top: its copy would name another bucket
        raise ValueError(f"{raw_path} is not in a run's folder (<run folder>/<its folder>/<name>)")
    return REMOTE_SCHEME + posixpath.join(run_folder, MASKED_DIR, posixpath.basename(key))


def _masked_lines(raw_path: Location, piece_bytes: int) -> Iterator[pl.Series]:
    """The raw file's lines masked, a piece at a time (a raw file can be GBs)."""
    for data in read_pieces(raw_path, piece_bytes):
        lines = read_lines(data, "line")
        del data
        yield lines.select(mask_sensitive(pl.col("line"))).to_series()


def write_masked_copy(raw_path: Path | str, out_path: Path | str, piece_bytes: int = PIECE_BYTES) -> Location:
    """A raw JSONL file with its sensitive values masked (`tasks.redact.mask_sensitive`), worked through a
    piece at a time: locally written under a temporary name and renamed when whole; in the staging store
    made anew (emptied, then appended to)."""
    raw = as_location(raw_path)
    out = as_location(out_path)
    if isinstance(out, str):  # in the staging store (`as_location` leaves only those strings)
        reset(out)
        for lines in _masked_lines(raw, piece_bytes):
            append_text_lines(out, lines)
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(f".{out.name}.part")
    part.write_bytes(b"")
    for lines in _masked_lines(raw, piece_bytes):
        append_text_lines(part, lines)
    os.replace(part, out)
    return out


mask_raw_file = task(name="mask-raw-file", cache_policy=NO_CACHE)(write_masked_copy)


def files_to_deliver(files: list[str], raw_files: list[str], mode: DeliverRaw) -> list[Location]:
    """`files` as they are to be delivered, in order (local paths as Paths, files in the staging store as
    their locations): each of `raw_files` (a subset of `files`) masked (a copy made), as staged, or left
    out, as `mode` says."""
    paths, raw = [as_location(f) for f in files], {as_location(f) for f in raw_files}
    stray = raw - set(paths)
    if stray:
        raise ValueError(f"raw files not among the files to deliver: {', '.join(sorted(map(str, stray)))}")
    if mode == "masked":
        return [mask_raw_file(p, masked_path(p)) if p in raw else p for p in paths]
    if mode == "full":
        return paths
    if mode == "none":
        return [p for p in paths if p not in raw]
    raise ValueError(f"DELIVER_RAW must be masked, full or none, not {mode!r}")
