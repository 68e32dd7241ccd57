"""Prefect servers for the tests and the bench: empty migrated Prefect databases for the servers the tests
start (dev/prefect_server.py), and `make server` on a free port (the deployment test, `make bench`)."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dev.prefect_server import ROOT, wait_until_healthy

# an empty Prefect database, migrated once; each test server starts on a copy of it
PREFECT_DB_TEMPLATE = ROOT / "var" / "prefect-test-template.db"
MIGRATE_TIMEOUT = 300


def copy_empty_prefect_db(dest: Path) -> Path:
    """An empty, migrated Prefect database at `dest` (a copy of the template, made first if missing). A
    template from an older Prefect is migrated further when a server starts on the copy."""
    if not PREFECT_DB_TEMPLATE.exists():
        PREFECT_DB_TEMPLATE.parent.mkdir(parents=True, exist_ok=True)
        fresh = PREFECT_DB_TEMPLATE.with_suffix(f".{os.getpid()}.tmp")
        subprocess.run(
            [str(Path(sys.executable).parent / "prefect"), "server", "database", "upgrade", "-y"],
            env=os.environ | {"PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{fresh}"},
            check=True,
            capture_output=True,
            timeout=MIGRATE_TIMEOUT,
        )
        fresh.replace(PREFECT_DB_TEMPLATE)
    with sqlite3.connect(PREFECT_DB_TEMPLATE) as src, sqlite3.connect(dest) as dst:
        src.backup(dst)
    return dest


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen | None) -> None:
    """SIGTERM the process group, SIGKILL what is left after 15 s."""
    if proc is None or proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@contextmanager
def make_server(env: dict[str, str], log: Path, timeout: float) -> Iterator[tuple[int, str]]:
    """`make server` with `env` on a free port; yields (port, API URL) once /health answers 200."""
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["make", "--no-print-directory", "-C", str(ROOT), "server", f"PREFECT_PORT={port}"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until_healthy(proc, api_url, timeout=timeout, log_path=log, what="`make server`")
        yield port, api_url
    finally:
        stop(proc)
