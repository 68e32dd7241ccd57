"""A fourth users source is one module plus a line of configuration (USERS_SOURCES): here a partner's
JSON drop, registered as tasks.extract.partner_drop for the test, goes through rules, masking and storage."""

from __future__ import annotations

import asyncio
import json
import sys
import types
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prefect import task
from prefect.cache_policies import NO_CACHE
from sqlalchemy import text

from dev.sample_api import DummyJsonServer
from flows.users_etl import users_etl
from models.db import engine_for
from models.settings import ConfigError, get_settings
from tasks.extract import source_module
from tasks.staging.batches import Span, StagedInput
from tests.conftest import migrated
from tests.servers.dummyjson import load_real_users

PARTNER_ROWS = [
    {"uid": 7001, "given": "Ann", "family": "Lee", "mail": "ann@partner.test", "years": 33, "team": "Sales"},
    {"uid": 7002, "given": "", "family": "Bad", "mail": "nope", "years": 3, "team": "Sales"},
]


def partner_module() -> types.ModuleType:
    module = types.ModuleType("tasks.extract.partner_drop")
    module.SOURCE, module.FAILURE_REASON = "partner", "partner_malformed"
    module.FIELDS = {
        "id_text": ("uid",),
        "first_name": ("given",),
        "last_name": ("family",),
        "email": ("mail",),
        "age_text": ("years",),
        "department": ("team",),
    }
    module.done = []

    def pending(engine, settings):
        return [] if module.done else [types.SimpleNamespace(name="drop1")]

    @task(name="stage-partner-drop", cache_policy=NO_CACHE)
    def stage(item: types.SimpleNamespace, raw_path: str) -> StagedInput:
        Path(raw_path).parent.mkdir(parents=True, exist_ok=True)
        Path(raw_path).write_text("".join(json.dumps(r) + "\n" for r in PARTNER_ROWS))
        return StagedInput(
            source="partner",
            as_of=datetime.now(UTC).isoformat(),
            raw_path=raw_path,
            span=Span(0, Path(raw_path).stat().st_size),
            records=len(PARTNER_ROWS),
            plugin="partner_drop",
            label=item.name,
        )

    module.pending, module.stage = pending, stage
    module.failure_record = lambda entry: json.dumps({"error": entry.error})
    module.mark_done = lambda engine, entries, run_id: module.done.extend(entries)
    return module


@pytest.mark.usefixtures("prefect_server")
def test_a_new_source_is_a_module_and_a_line_of_configuration(settings_env, tmp_path, monkeypatch):
    url = migrated(f"sqlite:///{tmp_path / 'app.db'}")
    module = partner_module()
    monkeypatch.setitem(sys.modules, "tasks.extract.partner_drop", module)
    settings_env(database_url=url, users_sources="csv_drop,partner_drop")
    with DummyJsonServer(load_real_users()[:5]) as server:
        first = asyncio.run(users_etl(api_base=server.base_url, deliver_files=False))
        second = asyncio.run(users_etl(api_base=server.base_url, deliver_files=False))
    assert first["sources"]["partner"] == {
        "inserted": 1,
        "updated": 0,
        "unchanged": 0,
        "restored": 0,
        "invalidated": 0,
        "failed": 1,
    }
    assert "partner" not in second["sources"] and len(module.done) == 1  # checkpointed by its module
    with engine_for(url).connect() as conn:
        assert conn.execute(
            text("SELECT first_name, last_name, source FROM processed_users WHERE id = 7001")
        ).all() == [("Ann", "Lee", "partner")]
        (reason,) = conn.execute(text("SELECT error_reason FROM dlq_users WHERE source = 'partner'")).one()
    assert set(reason.split("; ")) == {"first_name_missing", "email_invalid", "age_out_of_range"}


def test_an_unknown_or_incomplete_source_module_is_named(settings_env, monkeypatch):
    settings_env(users_sources="csv_drop,not a module")
    with pytest.raises(ConfigError, match="USERS_SOURCES"):
        get_settings()
    monkeypatch.setitem(sys.modules, "tasks.extract.half_done", types.ModuleType("tasks.extract.half_done"))
    with pytest.raises(TypeError, match="tasks.extract.half_done lacks SOURCE"):
        source_module("half_done")
