"""A database filled the way users fill theirs: one real users-etl run over a DummyJSON-contract server."""

from __future__ import annotations

import asyncio
import os

import pytest

from models.settings import get_settings
from tests.servers.dummyjson import DummyJsonServer

# configuration a developer's shell may carry that would change what the flow does
PIPELINE_PREFIXES = ("USERS_", "SFTP_", "DATABASE_", "DATA_DIR", "DEPARTMENTS_", "EXTRACT_", "FEED_")


def run_pipeline(url: str, data_dir: str, users: list[dict]) -> dict:
    """users-etl (no delivery) over `users` into the database at `url`; the run's summary."""
    from flows.users_etl import users_etl

    with pytest.MonkeyPatch.context() as mp, DummyJsonServer(users) as server:
        for name in list(os.environ):
            if name.startswith(PIPELINE_PREFIXES):
                mp.delenv(name)
        mp.setenv("DATABASE_URL", url)
        mp.setenv("DATA_DIR", data_dir)
        get_settings.cache_clear()
        try:
            return asyncio.run(users_etl(api_base=server.base_url, deliver_files=False))
        finally:
            get_settings.cache_clear()
