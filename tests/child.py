"""Helpers for tests that run users-etl in a child process and watch it from outside."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def child_process(script: str, *args: str, log: Path, env: dict | None = None) -> Iterator[subprocess.Popen]:
    """A Python child process running `script` from the project root (this process's environment unless
    `env`), its output in `log`; killed on leaving if still alive."""
    with log.open("w") as out:
        child = subprocess.Popen(
            [sys.executable, "-c", script, *args],
            cwd=ROOT,
            env=env or os.environ.copy(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield child
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(30)


def wait_for(what: str, check, *, timeout: float, child: subprocess.Popen | None = None, log: Path | None = None):
    """`check()`'s first truthy answer; fails naming `what` (with the child's log) on a timeout or the child's
    early end."""
    deadline = time.monotonic() + timeout
    while not (found := check()):
        if child is not None and child.poll() is not None:
            pytest.fail(f"the run ended (exit {child.returncode}) before {what}:\n{log.read_text()[-4000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {timeout}s" + (f":\n{log.read_text()[-4000:]}" if log else ""))
        time.sleep(0.05)
    return found


@pytest.fixture
def env(settings_env, database_url):
    """A child run's database, and a source retried twice a page."""
    settings_env(database_url=database_url, extract_retries=2)
    return database_url
