"""Sources: a package per source (dummyjson: the users API; feeds: RSS/Atom; csv_drop: a users plug-in), their
shared errors in errors.py.

Users sources besides the paginated API are plug-ins named in USERS_SOURCES (default `csv_drop`): a package
here with SOURCE, FIELDS, FAILURE_REASON, `pending`, `stage`, `failure_record` and `mark_done`
(see csv_drop/)."""

from __future__ import annotations

import importlib
from dataclasses import replace
from logging import Logger, LoggerAdapter
from types import ModuleType
from typing import TYPE_CHECKING

from tasks.staging import handoff
from tasks.staging.batches import StagedInput
from tasks.staging.files import within

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from models.settings import Settings

PLUGIN_API = ("SOURCE", "FIELDS", "FAILURE_REASON", "pending", "stage", "failure_record", "mark_done")


def source_module(name: str) -> ModuleType:
    """The users source module `tasks.extract.<name>`, checked for what the flow calls."""
    module = importlib.import_module(f"tasks.extract.{name}")
    missing = [attr for attr in PLUGIN_API if not hasattr(module, attr)]
    if missing:
        raise TypeError(f"USERS_SOURCES: tasks.extract.{name} lacks {', '.join(missing)}")
    return module


def stage_plugins(
    engine: Engine,
    settings: Settings,
    *,
    run_dir: str,
    file_time: str,
    manifest: str | None,
    logger: Logger | LoggerAdapter,
    files_root: str | None = None,
) -> list[StagedInput]:
    """Every USERS_SOURCES plug-in's pending inputs staged under `files_root` (default `run_dir`), each posted
    to `manifest` once staged."""
    staged = []
    for name in settings.users_sources:
        plugin = source_module(name)
        for item in plugin.pending(engine, settings):
            handoff.check_cancelled(run_dir, "extract")
            out = plugin.stage(
                item, within(files_root or run_dir, "raw_users", f"{plugin.SOURCE}_{item.name}_{file_time}.jsonl")
            )
            if out.error:
                logger.error("%s input rejected, sent to the DLQ: %s", plugin.SOURCE, out.error)
            staged.append(replace(out, plugin=name))
            if manifest:
                handoff.post(manifest, staged[-1])
    return staged


def mark_plugins_done(engine: Engine, staged: list[StagedInput], *, run_id: str) -> None:
    """Each plug-in checkpoints its inputs once all their rows are stored."""
    for name in {s.plugin for s in staged if s.plugin}:
        source_module(name).mark_done(engine, [s for s in staged if s.plugin == name], run_id=run_id)
