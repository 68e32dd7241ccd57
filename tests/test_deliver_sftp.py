"""SFTP delivery against a real OpenSSH sshd on loopback (paramiko client, no mocks): byte-identical files under
the dated directory, each refusal named and not retried, a lost connection transient and leaving no partial file
under a final name; and the demo server `make run` starts."""

from __future__ import annotations

import logging
import os
import socket
import stat
import threading
import time
import traceback
from pathlib import Path

import asyncssh
import pytest
from pydantic import SecretStr

from dev.demo_sftp import running_demo_sftp
from tasks.deliver import (
    AuthRefusedError,
    HostKeyError,
    KeyPassphraseError,
    SftpConnectionLostError,
    SftpRemoteError,
    SftpSession,
    SftpTarget,
    SftpUnavailableError,
    is_transient,
    remote_dir_for,
    upload_files,
)
from tests.deliver_helpers import DAY, RUN_DATE, make_target, sha256, tree
from tests.servers.sshd import SshdServer


@pytest.mark.sshd
def test_delivers_byte_identical_files_under_dated_dir(
    sshd: SshdServer, run_files: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    remote_dir = remote_dir_for(sshd.remote_base, RUN_DATE)
    results = upload_files(make_target(sshd), run_files, remote_dir)

    expected = {f"{DAY}/{p.name}": p.read_bytes() for p in run_files}
    assert tree(sshd.local_root) == expected  # final names only: no temp files left
    assert [r["remote_path"] for r in results] == [f"/upload/{DAY}/{p.name}" for p in run_files]
    for result, path in zip(results, run_files, strict=True):
        data = path.read_bytes()
        assert result == {
            "local_path": str(path),
            "remote_path": f"/upload/{DAY}/{path.name}",
            "bytes": len(data),
            "sha256": sha256(data),
        }
    assert sshd.passphrase not in caplog.text

    # delivering again (a retried or re-run flow) replaces each file: still one copy each
    changed = run_files[0]
    changed.write_bytes(b"id,name\n1,Ada\n")
    upload_files(make_target(sshd), run_files, remote_dir)
    expected[f"{DAY}/{changed.name}"] = changed.read_bytes()
    assert tree(sshd.local_root) == expected


@pytest.mark.sshd
def test_openssh_negotiates_aes_gcm(sshd: SshdServer) -> None:
    """Against OpenSSH the session uses AES-GCM both ways (no per-packet HMAC in Python)."""
    with SftpSession(make_target(sshd)) as session:
        transport = session.client.get_transport()
        assert (transport.local_cipher, transport.remote_cipher) == ("aes128-gcm@openssh.com",) * 2


@pytest.mark.sshd
def test_changed_host_key_is_refused(sshd: SshdServer, run_files: list[Path], tmp_path: Path) -> None:
    wrong = sshd.wrong_known_hosts(tmp_path / "known_hosts")
    with pytest.raises(HostKeyError) as info:
        upload_files(make_target(sshd, known_hosts=wrong), run_files, remote_dir_for("/upload", RUN_DATE))
    message = str(info.value)
    assert "CHANGED" in message and str(wrong) in message
    assert f"ssh-keyscan -p {sshd.port} 127.0.0.1" in message
    assert not is_transient(info.value)
    assert tree(sshd.local_root) == {}


@pytest.mark.sshd
@pytest.mark.parametrize(
    "entry", ["", "[127.0.0.1]:1 {key}\n", "127.0.0.1 {key}\n"], ids=["empty", "other-port", "port-22-entry"]
)
def test_unknown_host_is_refused(sshd: SshdServer, run_files: list[Path], tmp_path: Path, entry: str) -> None:
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(entry.format(key=sshd.host_public_key))
    with pytest.raises(HostKeyError) as info:
        upload_files(make_target(sshd, known_hosts=known_hosts), run_files, f"/upload/{DAY}")
    message = str(info.value)
    assert "UNKNOWN HOST" in message and f"[127.0.0.1]:{sshd.port}" in message
    assert str(known_hosts) in message and f"ssh-keyscan -p {sshd.port} 127.0.0.1" in message
    assert not is_transient(info.value)
    assert tree(sshd.local_root) == {}


@pytest.mark.sshd
def test_missing_known_hosts_file(sshd: SshdServer, run_files: list[Path], tmp_path: Path) -> None:
    with pytest.raises(HostKeyError, match="does not exist"):
        upload_files(make_target(sshd, known_hosts=tmp_path / "nope"), run_files, f"/upload/{DAY}")


@pytest.mark.sshd
@pytest.mark.parametrize("given", ["wrong-passphrase-123", None])
def test_bad_passphrase(
    sshd: SshdServer, run_files: list[Path], given: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    target = make_target(sshd, passphrase=SecretStr(given) if given else None)
    with pytest.raises(KeyPassphraseError) as info:
        upload_files(target, run_files, f"/upload/{DAY}")
    rendered = "".join(traceback.format_exception(info.value))
    assert str(sshd.key_path) in rendered
    assert ("wrong" if given else "no passphrase") in str(info.value)
    assert sshd.passphrase not in rendered and sshd.passphrase not in caplog.text
    if given:
        assert given not in rendered and given not in caplog.text
    assert not is_transient(info.value)
    assert tree(sshd.local_root) == {}


@pytest.mark.sshd
def test_key_not_authorized_is_refused(sshd: SshdServer, run_files: list[Path], tmp_path: Path) -> None:
    other = sshd.make_client_key(tmp_path / "id_other", passphrase="other-pass")
    target = make_target(sshd, key_path=other, passphrase=SecretStr("other-pass"))
    with pytest.raises(AuthRefusedError) as info:
        upload_files(target, run_files, f"/upload/{DAY}")
    assert "refused" in str(info.value) and sshd.username in str(info.value)
    assert "other-pass" not in str(info.value)
    assert not is_transient(info.value)
    assert tree(sshd.local_root) == {}


@pytest.mark.sshd
def test_server_down_is_unavailable_and_transient(sshd: SshdServer, run_files: list[Path]) -> None:
    sshd.stop()
    with pytest.raises(SftpUnavailableError) as info:
        upload_files(make_target(sshd), run_files, f"/upload/{DAY}")
    assert f"127.0.0.1:{sshd.port}" in str(info.value)
    assert is_transient(info.value)
    assert tree(sshd.local_root) == {}


@pytest.mark.sshd
def test_remote_permission_error_is_not_transient(sshd: SshdServer, run_files: list[Path]) -> None:
    with pytest.raises(SftpRemoteError) as info:  # the chroot's / belongs to root
        upload_files(make_target(sshd), run_files, f"/not-writable/{DAY}")
    assert not is_transient(info.value)


@pytest.mark.sshd
def test_connection_dropped_mid_upload_then_retry_leaves_one_whole_copy(sshd: SshdServer, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(40 * 1024 * 1024))
    small = tmp_path / "small.csv"
    small.write_bytes(b"a,b\n1,2\n")
    day_dir = sshd.local_root / DAY
    killed: list[int] = []
    stop = threading.Event()

    def drop_connection_mid_upload() -> None:
        # wait until the server has written part of the temp file, then kill the
        # per-connection sshd processes: a real dropped connection, seen by the client
        while not stop.is_set():
            partial = (
                [p for p in day_dir.glob(".big.bin.part-*") if p.stat().st_size >= 4 * 1024 * 1024]
                if day_dir.is_dir()
                else []
            )
            if partial:
                killed.append(sshd.kill_connections())
                return
            time.sleep(0.002)

    watcher = threading.Thread(target=drop_connection_mid_upload, daemon=True)
    watcher.start()
    try:
        with pytest.raises(SftpConnectionLostError) as info:
            upload_files(make_target(sshd), [small, big], f"/upload/{DAY}")
    finally:
        stop.set()
        watcher.join(timeout=10)
    assert killed and killed[0] > 0
    assert is_transient(info.value)
    assert f"127.0.0.1:{sshd.port}" in str(info.value)
    leftovers = sorted(p.name for p in day_dir.iterdir())
    assert "big.bin" not in leftovers  # never a partial file under the final name
    assert any(name.startswith(".big.bin.part-") for name in leftovers), leftovers

    # the retry: one whole copy of each file, the stale partial cleaned up
    results = upload_files(make_target(sshd), [small, big], f"/upload/{DAY}")
    assert tree(sshd.local_root) == {f"{DAY}/small.csv": small.read_bytes(), f"{DAY}/big.bin": big.read_bytes()}
    assert results[1]["sha256"] == sha256(big.read_bytes())


# -- the demo server ------------------------------------------------------------------------


def test_demo_server_receives_identical_files(tmp_path: Path, run_files: list[Path]) -> None:
    with running_demo_sftp(tmp_path / "var") as demo:
        results = upload_files(demo.target(), run_files, remote_dir_for(demo.remote_base, RUN_DATE))
        assert tree(demo.root) == {f"{DAY}/{p.name}": p.read_bytes() for p in run_files}
        assert [r["sha256"] for r in results] == [sha256(p.read_bytes()) for p in run_files]
        assert demo.known_hosts.read_text().startswith(f"[127.0.0.1]:{demo.port} ssh-ed25519 ")
        env = demo.env()
        assert env["SFTP_PORT"] == str(demo.port) and env["SFTP_KNOWN_HOSTS"] == str(demo.known_hosts)
        assert demo.passphrase.get_secret_value() not in repr(demo)
        for secret_file in (demo.key_path, demo.key_path.with_name("passphrase")):
            assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600

        # only the demo key, only the demo user
        other = tmp_path / "id_other"
        other.write_bytes(asyncssh.generate_private_key("ssh-ed25519").export_private_key())
        with pytest.raises(AuthRefusedError):
            upload_files(
                SftpTarget(**{**demo.target().__dict__, "key_path": other, "passphrase": None}), run_files, "/x"
            )
        with pytest.raises(AuthRefusedError):
            upload_files(SftpTarget(**{**demo.target().__dict__, "username": "root"}), run_files, "/x")
        host_line = demo.known_hosts.read_text().split(" ", 1)[1]
        port = demo.port
    with pytest.raises(OSError):  # stopped
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    with running_demo_sftp(tmp_path / "var") as again:  # keys are kept, port may change
        assert again.known_hosts.read_text().split(" ", 1)[1] == host_line
        assert again.passphrase.get_secret_value() == demo.passphrase.get_secret_value()
