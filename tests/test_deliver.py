"""SFTP delivery's configuration, no server needed: remote names and directories, the target from settings (its
passphrase from a Prefect Secret block too), a private key loaded once."""

from __future__ import annotations

import time
from pathlib import Path

import asyncssh
import pytest
from pydantic import SecretStr

from models.settings import ConfigError, Settings
from tasks.deliver import KeyPassphraseError, SftpTarget, daily_name, incoming_dir, load_private_key, remote_dir_for
from tests.deliver_helpers import RUN_DATE


def test_remote_dir_for() -> None:
    assert remote_dir_for("/upload/", RUN_DATE) == "/upload/2024-05-17"
    assert remote_dir_for("/upload", RUN_DATE) == "/upload/2024-05-17"
    assert remote_dir_for("/", RUN_DATE) == "/2024-05-17"


def test_target_from_settings_and_repr_hides_passphrase(tmp_path: Path) -> None:
    settings = Settings(
        _env_file=None,
        sftp_host="sftp.example.com",
        sftp_port=2222,
        sftp_username="etl",
        sftp_key_path=tmp_path / "id",
        sftp_known_hosts=tmp_path / "kh",
        sftp_key_passphrase=SecretStr("hunter2-passphrase"),
        sftp_remote_base="/in",
    )
    target = SftpTarget.from_settings(settings)
    assert (target.host, target.port, target.username, target.remote_base) == ("sftp.example.com", 2222, "etl", "/in")
    assert target.passphrase is not None
    assert target.passphrase.get_secret_value() == "hunter2-passphrase"
    assert "hunter2" not in repr(target) and "hunter2" not in str(target)
    explicit = SftpTarget.from_settings(settings, passphrase=SecretStr("from-block"))
    assert explicit.passphrase is not None and explicit.passphrase.get_secret_value() == "from-block"


def test_target_from_incomplete_settings_names_the_variables() -> None:
    settings = Settings(
        _env_file=None,
        sftp_host="sftp.example.com",
        sftp_username=None,
        sftp_key_path=None,
        sftp_known_hosts=None,
        sftp_key_passphrase=None,
        sftp_key_passphrase_block=None,
    )
    with pytest.raises(ValueError) as info:
        SftpTarget.from_settings(settings)
    assert isinstance(info.value, ConfigError)
    for name in ("SFTP_USERNAME", "SFTP_KEY_PATH", "SFTP_KNOWN_HOSTS"):
        assert name in str(info.value)


def test_one_remote_name_per_day_and_kind() -> None:
    assert [
        daily_name(n)
        for n in (
            "records_20240517_120000.jsonl",
            "etl_20240517_120000.jsonl",
            "invalid_users_20240517_120000.jsonl",
            "csv_users_b_20240517_120000.jsonl",
            "notes.jsonl",
        )
    ] == ["records.jsonl", "etl.jsonl", "invalid_users.jsonl", "csv_users_b.jsonl", "notes.jsonl"]
    assert incoming_dir("/upload/", "0f1e") == "/upload/.sluice-incoming/0f1e"
    assert incoming_dir("/", "0f1e") == "/.sluice-incoming/0f1e"
    for bad in ("../up", "a/b", ""):
        with pytest.raises(ValueError, match="run id"):
            incoming_dir("/upload", bad)


def test_a_loaded_key_is_reused_only_with_the_same_file_and_passphrase(tmp_path: Path) -> None:
    """Upload and publish connect apiece: the key's KDF runs once, yet a wrong passphrase is still refused."""
    path = tmp_path / "id"
    path.write_bytes(asyncssh.generate_private_key("ssh-ed25519").export_private_key(passphrase="right one"))
    first = load_private_key(path, SecretStr("right one"))
    started = time.perf_counter()
    assert load_private_key(path, SecretStr("right one")) is first
    assert time.perf_counter() - started < 0.05
    with pytest.raises(KeyPassphraseError, match="wrong"):
        load_private_key(path, SecretStr("wrong one"))
    path.write_bytes(asyncssh.generate_private_key("ssh-ed25519").export_private_key(passphrase="right one"))
    assert load_private_key(path, SecretStr("right one")).get_base64() != first.get_base64()


def test_passphrase_from_prefect_secret_block(prefect_server: str, tmp_path: Path) -> None:
    from prefect.blocks.system import Secret

    Secret(value="0123").save("sluice-test-sftp-passphrase", overwrite=True)
    common = dict(
        _env_file=None,
        sftp_host="h",
        sftp_username="u",
        sftp_key_path=tmp_path / "id",
        sftp_known_hosts=tmp_path / "kh",
        sftp_key_passphrase=None,
    )
    target = SftpTarget.from_settings(Settings(**common, sftp_key_passphrase_block="sluice-test-sftp-passphrase"))
    assert target.passphrase is not None
    assert target.passphrase.get_secret_value() == "0123"  # kept a string, not JSON-decoded
    with pytest.raises(ConfigError, match="SFTP_KEY_PASSPHRASE_BLOCK"):
        SftpTarget.from_settings(Settings(**common, sftp_key_passphrase_block="no-such-block"))
