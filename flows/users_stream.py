"""The users stages as a run (or a shard of one) starts them: extract, transform and persist streaming into each
other through their manifests, and the files they staged, by kind. users_etl.py and users_shard.py share it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flows.users_extract import extract
from flows.users_persist import persist
from flows.users_transform import transform
from models.settings import get_settings
from tasks.extract.users_api import ApiSource
from tasks.staging import handoff
from tasks.staging.batches import ExtractResult, TransformResult, input_kind
from tasks.staging.runner import StageRunner


@dataclass(frozen=True)
class Streaming:
    """Where and how a run's stages work: its manifests in `run_dir` (this host), its staged files under
    `files_root` (a location in the staging store)."""

    run_id: str
    run_dir: str
    files_root: str
    file_time: str
    batch_records: int
    database_block: str | None
    csv_dir: str | None


def start_streaming(
    stages: StageRunner, on: Streaming, sources: list[ApiSource], *, plugins: bool = True, extract_first: bool = False
) -> None:
    """Start extract, transform and persist side by side (`stages.result` waits for each). `plugins`: extract
    also stages the USERS_SOURCES inputs (CSV drops); `extract_first`: transform starts once extract is done."""
    settings = get_settings()
    extracted = handoff.open_manifest(Path(on.run_dir) / "stages" / "extracted.jsonl")
    transformed = handoff.open_manifest(Path(on.run_dir) / "stages" / "transformed.jsonl")
    csv = str(on.csv_dir or settings.users_csv_dir or "") or None
    stages.start(
        "extract",
        extract,
        on.run_dir,
        on.file_time,
        sources,
        on.database_block,
        csv,
        manifest=extracted,
        plugins=plugins,
        files_root=on.files_root,
    )
    if extract_first:
        stages.result("extract")
    stages.start(
        "transform",
        transform,
        extracted,
        on.run_dir,
        on.file_time,
        str(settings.departments_csv),
        on.batch_records,
        on.database_block,
        on.run_id,
        manifest=transformed,
        after=("extract", extracted),
        files_root=on.files_root,
    )
    stages.start(
        "persist",
        persist,
        on.run_id,
        transformed,
        extracted,
        on.run_dir,
        on.database_block,
        after=("transform", transformed),
    )


def run_files(ex: ExtractResult, tr: TransformResult) -> dict[str, str]:
    """The run's staged files by kind: the API's raw file, transform's files, each other API's raw file, each
    other input's raw file."""
    default, *more = ex.apis
    files = {"raw": str(default.staged.raw_path), **tr.files}
    files |= {f"{a.staged.source}:raw": str(a.staged.raw_path) for a in more}
    return files | {input_kind(s, n): s.raw_path for n, s in enumerate(ex.others) if s.raw_path}
