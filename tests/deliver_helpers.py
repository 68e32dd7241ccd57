"""What the SFTP delivery tests share: the run's date, a target pointing at a test sshd, the tree it received."""

from __future__ import annotations

import hashlib
from datetime import date
from pathlib import Path

from pydantic import SecretStr

from tasks.deliver import SftpSession, SftpTarget
from tests.servers.sshd import SshdServer

RUN_DATE = date(2024, 5, 17)
DAY = "2024-05-17"


def make_target(server: SshdServer, **overrides: object) -> SftpTarget:
    values: dict[str, object] = dict(
        host=server.host,
        port=server.port,
        username=server.username,
        key_path=server.key_path,
        known_hosts=server.known_hosts,
        remote_base=server.remote_base,
        passphrase=SecretStr(server.passphrase),
        timeout=10.0,
    )
    values.update(overrides)
    return SftpTarget(**values)  # type: ignore[arg-type]


def tree(root: Path) -> dict[str, bytes]:
    """Every file below ``root`` (hidden ones too), relative path -> contents."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def download(server: SshdServer, remote_dir: str) -> dict[str, bytes]:
    """Every file in `remote_dir`, fetched over SFTP as the receiving side would."""
    with SftpSession(make_target(server)) as session:
        sftp = session.sftp
        assert sftp is not None
        out = {}
        for name in sorted(sftp.listdir(remote_dir)):
            with sftp.open(f"{remote_dir}/{name}", "rb") as fh:
                out[name] = fh.read()
        return out
