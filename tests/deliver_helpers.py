"""What the SFTP delivery tests share: the run's date, a target pointing at a test sshd, the tree it received."""

from __future__ import annotations

import hashlib
from datetime import date
from pathlib import Path

from pydantic import SecretStr

from models.settings import BUNDLED_DEPARTMENTS
from tasks.deliver import SftpSession, SftpTarget
from tasks.users.transform import read_departments, transform_batch
from tests.servers.dummyjson import break_users, load_real_users, staged_lines
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


def stage_real_run(run_dir: Path) -> tuple[list[dict], Path, Path, Path]:
    """A run's folder as users-etl leaves it: the real users (some broken) staged, then transformed; the users
    and the raw, processed and DLQ files."""
    users, _ = break_users(load_real_users())
    raw = run_dir / "raw_users" / "records_20240517_120000.jsonl"
    processed = run_dir / "processed_users" / "etl_20240517_120000.jsonl"
    dlq = run_dir / "dlq" / "invalid_users_20240517_120000.jsonl"
    for path in (raw, processed, dlq):
        path.parent.mkdir(parents=True)
    raw.write_bytes(staged_lines(users))
    transform_batch.fn(
        read_departments(BUNDLED_DEPARTMENTS),
        raw_path=str(raw),
        offset=0,
        length=raw.stat().st_size,
        processed_path=str(processed),
        dlq_path=str(dlq),
    )
    return users, raw, processed, dlq
