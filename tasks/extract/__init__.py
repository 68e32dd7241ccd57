"""Sources: one module per source; each exposes its Prefect tasks and keeps helpers private.

Users sources besides the paginated API are plug-ins named in USERS_SOURCES (default `csv_drop`): a module
here with SOURCE, FIELDS, FAILURE_REASON, `pending`, `stage`, `failure_record` and `mark_done`
(see csv_drop.py)."""

from __future__ import annotations

import importlib
from types import ModuleType

PLUGIN_API = ("SOURCE", "FIELDS", "FAILURE_REASON", "pending", "stage", "failure_record", "mark_done")


def source_module(name: str) -> ModuleType:
    """The users source module `tasks.extract.<name>`, checked for what the flow calls."""
    module = importlib.import_module(f"tasks.extract.{name}")
    missing = [attr for attr in PLUGIN_API if not hasattr(module, attr)]
    if missing:
        raise TypeError(f"USERS_SOURCES: tasks.extract.{name} lacks {', '.join(missing)}")
    return module
