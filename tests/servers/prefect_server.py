"""`make server` on a free port, healthy before it is handed over: for the deployment test and `make bench`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from flows.prefect_api import wait_until_healthy

ROOT = Path(__file__).resolve().parents[2]


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
        proc = subprocess.Popen(["make", "--no-print-directory", "-C", str(ROOT), "server", f"PREFECT_PORT={port}"],
                                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until_healthy(proc, api_url, timeout=timeout, log_path=log, what="`make server`")
        yield port, api_url
    finally:
        stop(proc)
