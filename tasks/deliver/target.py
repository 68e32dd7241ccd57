"""Where and how to connect: `SftpTarget` from the settings, the passphrase, the run's remote folder."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import SecretStr

from models.secrets import secret_block_text

if TYPE_CHECKING:
    from models.settings import Settings


@dataclass(frozen=True)
class SftpTarget:
    """Where and how to connect. ``passphrase`` is masked in ``repr``."""

    host: str
    port: int
    username: str
    key_path: Path
    known_hosts: Path
    remote_base: str = "/upload"
    passphrase: SecretStr | None = field(default=None, repr=False)
    timeout: float = 30.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "key_path", Path(self.key_path).expanduser())
        object.__setattr__(self, "known_hosts", Path(self.known_hosts).expanduser())
        if isinstance(self.passphrase, str):
            object.__setattr__(self, "passphrase", SecretStr(self.passphrase))

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @classmethod
    def from_settings(cls, settings: Settings, passphrase: SecretStr | None = None) -> SftpTarget:
        """Build the target from settings; ConfigError (a ValueError) names what is missing.

        The passphrase is, in order: the ``passphrase`` argument, ``SFTP_KEY_PASSPHRASE``,
        or the Prefect Secret block named by ``SFTP_KEY_PASSPHRASE_BLOCK``.
        """
        from models.settings import ConfigError

        missing = [
            name
            for name, value in (
                ("SFTP_HOST", settings.sftp_host),
                ("SFTP_USERNAME", settings.sftp_username),
                ("SFTP_KEY_PATH", settings.sftp_key_path),
                ("SFTP_KNOWN_HOSTS", settings.sftp_known_hosts),
            )
            if value is None or not str(value).strip()
        ]
        if missing:
            raise ConfigError(
                "SFTP delivery is not fully configured: set " + ", ".join(missing) + " (see docs/sftp.md)"
            )
        if passphrase is None or not passphrase.get_secret_value():
            passphrase = resolve_key_passphrase(settings)
        return cls(
            host=settings.sftp_host.strip(),  # type: ignore[union-attr]
            port=settings.sftp_port,
            username=settings.sftp_username.strip(),  # type: ignore[union-attr]
            key_path=Path(settings.sftp_key_path),  # type: ignore[arg-type]
            known_hosts=Path(settings.sftp_known_hosts),  # type: ignore[arg-type]
            remote_base=settings.sftp_remote_base,
            passphrase=passphrase,
        )


def resolve_key_passphrase(settings: Settings) -> SecretStr | None:
    """``SFTP_KEY_PASSPHRASE`` if set, else the value of the Prefect Secret block named by
    ``SFTP_KEY_PASSPHRASE_BLOCK`` (needs the Prefect API), else None."""

    if settings.sftp_key_passphrase is not None and settings.sftp_key_passphrase.get_secret_value():
        return settings.sftp_key_passphrase
    name = (settings.sftp_key_passphrase_block or "").strip()
    if not name:
        return None
    return SecretStr(secret_block_text(name, "SFTP_KEY_PASSPHRASE_BLOCK"))


def remote_dir_for(remote_base: str, run_date: date) -> str:
    """The run's remote directory: ``<remote_base>/YYYY-MM-DD``."""
    return f"{remote_base.rstrip('/')}/{run_date.strftime('%Y-%m-%d')}"
