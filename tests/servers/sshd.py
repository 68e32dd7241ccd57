"""A real OpenSSH sshd on loopback for the SFTP delivery tests (pytest plugin): dev/sshd.py's server.

Register with ``pytest_plugins = ["tests.servers.sshd"]`` in ``tests/conftest.py``.

Needs root and OpenSSH. Without them the tests are skipped, except in CI (``CI=true``),
where a missing prerequisite fails the run instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from dev.sshd import SshdServer, SshdUnavailable, build_sshd, running_sshd

__all__ = ["SshdServer", "sshd_server", "sshd"]


def _unavailable(reason: str) -> None:
    """Skip locally; fail in CI, where the SFTP tests must run."""
    if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
        pytest.fail(f"sshd test server unavailable in CI: {reason}", pytrace=False)
    pytest.skip(f"sshd test server unavailable: {reason}")


@pytest.fixture(scope="session")
def sshd_server() -> Iterator[SshdServer]:
    """Session-wide real OpenSSH SFTP server (see dev/sshd.py)."""
    try:
        server = build_sshd()
    except SshdUnavailable as exc:
        _unavailable(str(exc))
    with running_sshd(server):
        yield server


@pytest.fixture()
def sshd(sshd_server: SshdServer) -> Iterator[SshdServer]:
    """The session server, running, with an empty upload directory; restarted afterwards
    if a test stopped it."""
    sshd_server.start()
    sshd_server.clear_uploads()
    try:
        yield sshd_server
    finally:
        sshd_server.kill_connections()
        sshd_server.start()
