"""Which files a run delivers: its processed and DLQ files as they are (masked already), its raw files as
DELIVER_RAW says: masked copies (the default, as everywhere outside the raw layer), as staged (`full`;
passwords are never staged) or not at all (`none`). The staged raw files themselves stay as received."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.parse import read_lines
from tasks.redact import mask_sensitive
from tasks.staging.files import PIECE_BYTES, append_text_lines, read_pieces

DeliverRaw = Literal["masked", "full", "none"]
MASKED_DIR = "deliver"  # beside the staged file's folder, in its run's folder


def masked_path(raw_path: Path | str) -> Path:
    """Where a raw file's masked copy goes: `<run folder>/deliver/<its name>` (delivered under that name)."""
    raw = Path(raw_path)
    return raw.parent.parent / MASKED_DIR / raw.name


def write_masked_copy(raw_path: Path | str, out_path: Path | str, piece_bytes: int = PIECE_BYTES) -> Path:
    """A raw JSONL file with its sensitive values masked (`tasks.redact.mask_sensitive`), worked through a
    piece at a time (a raw file can be GBs), written under a temporary name and renamed when whole."""
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(f".{out.name}.part")
    part.write_bytes(b"")
    for data in read_pieces(raw_path, piece_bytes):
        lines = read_lines(data, "line")
        del data
        append_text_lines(part, lines.select(mask_sensitive(pl.col("line"))).to_series())
    os.replace(part, out)
    return out


mask_raw_file = task(name="mask-raw-file", cache_policy=NO_CACHE)(write_masked_copy)


def files_to_deliver(files: list[str], raw_files: list[str], mode: DeliverRaw) -> list[Path]:
    """`files` as they are to be delivered, in order: each of `raw_files` (a subset of `files`) masked
    (a copy made), as staged, or left out, as `mode` says."""
    paths, raw = [Path(f) for f in files], {Path(f) for f in raw_files}
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
