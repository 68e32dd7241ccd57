"""SFTP delivery against a real OpenSSH sshd on loopback (paramiko client, no mocks)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import stat
import threading
import time
import traceback
from datetime import date
from pathlib import Path

import asyncssh
import polars as pl
import pytest
from pydantic import SecretStr

from dev.demo_sftp import running_demo_sftp
from flows.deliver import deliver
from models.settings import BUNDLED_DEPARTMENTS, ConfigError, Settings
from tasks.deliver import (
    AuthRefusedError,
    HostKeyError,
    KeyPassphraseError,
    SftpConnectionLostError,
    SftpRemoteError,
    SftpSession,
    SftpTarget,
    SftpUnavailableError,
    daily_name,
    deliver_files_task,
    incoming_dir,
    is_transient,
    load_private_key,
    publish_task,
    remote_dir_for,
    stage_task,
    upload_files,
)
from tasks.deliver_files import files_to_deliver, write_masked_copy
from tasks.staging.files import split_spans
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


@pytest.fixture()
def run_files(tmp_path: Path) -> list[Path]:
    out = tmp_path / "out"
    out.mkdir()
    files = {
        "users.csv": b"id,name\n1,Ada\n2,Grace\n",
        "departments.json": b'[{"id": 1, "name": "R&D"}]\n',
        "empty.txt": b"",
        "users.parquet": os.urandom(3 * 1024 * 1024 + 12345),  # a few MB, not chunk-aligned
    }
    paths = []
    for name, data in files.items():
        (out / name).write_bytes(data)
        paths.append(out / name)
    return paths


# -- configuration (no server needed) -------------------------------------------------------


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


@pytest.mark.parametrize("task", [deliver_files_task, stage_task, publish_task], ids=lambda t: t.name)
def test_task_retry_policy(task) -> None:
    assert task.name in ("sftp-upload", "sftp-stage", "sftp-publish")
    assert task.retries == 3
    assert task.retry_delay_seconds == [2, 4, 8]
    assert task.retry_jitter_factor
    quick = task.with_options(retry_delay_seconds=0)
    assert quick.retry_delay_seconds == 0 and quick.retry_condition_fn is task.retry_condition_fn


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


# -- real sshd ------------------------------------------------------------------------------


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


# -- the Prefect task -----------------------------------------------------------------------


def _task_run_count(state: object) -> int:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_task_run(state.state_details.task_run_id).run_count  # type: ignore[attr-defined]


@pytest.mark.sshd
def test_task_retries_transient_failure(prefect_server: str, sshd: SshdServer, run_files: list[Path]) -> None:
    from prefect import flow

    # First attempt: something listening on the port that hangs up during the SSH
    # handshake (as an overloaded or restarting server does). sshd is back before the
    # hang-up, so the retry finds it.
    sshd.stop()
    listener = socket.create_server((sshd.host, sshd.port))
    ready = threading.Event()

    def flaky_server() -> None:
        conn, _ = listener.accept()
        listener.close()
        try:
            sshd.start()
        finally:
            ready.set()
            conn.close()

    thread = threading.Thread(target=flaky_server, daemon=True)
    thread.start()
    target = make_target(sshd)
    remote_dir = remote_dir_for(sshd.remote_base, RUN_DATE)

    states = []

    @flow(name="deliver-retry-test")
    def deliver() -> None:
        states.append(
            deliver_files_task.with_options(retry_delay_seconds=0.2)(target, run_files, remote_dir, return_state=True)
        )

    try:
        deliver()
        (state,) = states
    finally:
        thread.join(timeout=30)
        listener.close()
    assert ready.is_set()
    assert state.is_completed(), state
    assert len(state.result()) == len(run_files)
    assert _task_run_count(state) == 2
    assert tree(sshd.local_root) == {f"{DAY}/{p.name}": p.read_bytes() for p in run_files}


@pytest.mark.sshd
def test_task_does_not_retry_host_key_error(
    prefect_server: str, sshd: SshdServer, run_files: list[Path], tmp_path: Path
) -> None:
    from prefect import flow

    target = make_target(sshd, known_hosts=sshd.wrong_known_hosts(tmp_path / "known_hosts"))

    states = []

    @flow(name="deliver-no-retry-test")
    def deliver() -> None:
        states.append(
            deliver_files_task.with_options(retry_delay_seconds=5)(
                target, run_files, f"/upload/{DAY}", return_state=True
            )
        )

    deliver()
    (task_state,) = states
    assert task_state.is_failed()
    assert isinstance(task_state.result(raise_on_failure=False), HostKeyError)
    assert _task_run_count(task_state) == 1
    assert tree(sshd.local_root) == {}


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


# -- the deliver flow: which files go, the raw file masked -----------------------------------


def sftp_env(set_env, server: SshdServer, **more: object) -> None:
    """The SFTP settings pointing at `server`, through the environment as a user sets them."""
    set_env(**server.sftp_settings(), **more)


def download(server: SshdServer, remote_dir: str) -> dict[str, bytes]:
    """Every file in `remote_dir`, fetched over SFTP as the receiving side would."""
    with SftpSession(make_target(server)) as session:
        sftp = session.sftp
        out = {}
        for name in sorted(sftp.listdir(remote_dir)):
            with sftp.open(f"{remote_dir}/{name}", "rb") as fh:
                out[name] = fh.read()
        return out


@pytest.fixture()
def staged_run(tmp_path: Path) -> tuple[list[dict], Path, Path, Path]:
    """A run's folder as users-etl leaves it: the real users (some broken) staged, then transformed."""
    run_dir = tmp_path / "runs" / "run-1"
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


def sensitive_values(users: list[dict]) -> list[str]:
    return [
        v
        for u in users
        for v in (u.get("ssn"), u["bank"].get("cardNumber"), u["bank"].get("iban"), u.get("password"))
        if v
    ]


@pytest.mark.sshd
def test_delivered_raw_file_is_masked_by_default_as_everywhere_else(
    prefect_server: str, sshd: SshdServer, settings_env, staged_run
) -> None:
    users, raw, processed, dlq = staged_run
    sftp_env(settings_env, sshd, deliver_raw=None)
    staged = raw.read_bytes()

    out = deliver([str(raw), str(processed), str(dlq)], DAY, raw_files=[str(raw)])

    got = download(sshd, f"/upload/{DAY}")
    assert set(got) == {raw.name, processed.name, dlq.name}  # the names as staged
    assert raw.read_bytes() == staged  # the raw layer stays as received
    copy = raw.parent.parent / "deliver" / raw.name
    assert out.delivered[0]["local_path"] == str(copy) and got[raw.name] == copy.read_bytes()
    assert got[processed.name] == processed.read_bytes() and got[dlq.name] == dlq.read_bytes()
    everything = b"".join(got.values()).decode()
    assert "password" not in everything
    for value in sensitive_values(users):
        assert value not in everything

    # one user, one mask: the delivered raw line, the processed row, the DLQ record
    lines = [json.loads(line) for line in got[raw.name].decode().splitlines()]
    assert len(lines) == len(users) and [r["id"] for r in lines] == [u["id"] for u in users]
    assert (lines[0]["ssn"], lines[0]["bank"]["cardNumber"], lines[0]["bank"]["iban"]) == (
        "***-**-0289",
        "**** **** **** 5044",
        "****U8F8",
    )
    first_line = {}
    for line in lines:
        first_line.setdefault(line["id"], line)
    rows = pl.read_ndjson(got[processed.name]).select("id", "ssn_masked", "card_number_masked", "iban_masked").rows()
    assert len(rows) > 150
    for user_id, ssn, card, iban in rows:
        line = first_line[user_id]
        assert (line["ssn"], line["bank"]["cardNumber"], line["bank"]["iban"]) == (ssn, card, iban)
    records = [json.loads(line)["record"] for line in got[dlq.name].decode().splitlines()]
    assert len(records) == 13 and all(r in lines for r in records)  # each the delivered raw line, masked alike


@pytest.mark.sshd
@pytest.mark.parametrize("mode", ["full", "none"])
def test_deliver_raw_full_or_none(prefect_server: str, sshd: SshdServer, settings_env, staged_run, mode: str) -> None:
    users, raw, processed, dlq = staged_run
    sftp_env(settings_env, sshd, deliver_raw=mode)

    out = deliver([str(raw), str(processed), str(dlq)], DAY, raw_files=[str(raw)])

    got = download(sshd, f"/upload/{DAY}")
    assert not (raw.parent.parent / "deliver").exists()  # no masked copy made
    if mode == "full":  # as staged: every value, never a password (none is ever staged)
        assert got == {p.name: p.read_bytes() for p in (raw, processed, dlq)}
        assert users[0]["ssn"] in got[raw.name].decode() and b"password" not in got[raw.name]
    else:
        assert got == {p.name: p.read_bytes() for p in (processed, dlq)}
        assert [d["local_path"] for d in out.delivered] == [str(processed), str(dlq)]


def test_masked_copy_is_made_piece_by_piece(staged_run, tmp_path: Path) -> None:
    """A raw file is masked a piece at a time (it can be GBs): the same bytes as in one piece."""
    _, raw, _, _ = staged_run
    whole = write_masked_copy(raw, tmp_path / "whole" / raw.name, piece_bytes=1 << 30)
    pieces = write_masked_copy(raw, tmp_path / "pieces" / raw.name, piece_bytes=16_000)
    assert len(split_spans(raw, 16_000)) > 10
    assert pieces.read_bytes() == whole.read_bytes()
    assert len(whole.read_bytes().splitlines()) == len(raw.read_bytes().splitlines())
    assert [p.name for p in pieces.parent.iterdir()] == [raw.name]  # no temporary left


def test_raw_files_are_among_the_files_to_deliver(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not among the files to deliver"):
        files_to_deliver([str(tmp_path / "a.jsonl")], [str(tmp_path / "b.jsonl")], "masked")
    with pytest.raises(ValueError, match="DELIVER_RAW"):
        files_to_deliver([str(tmp_path / "a.jsonl")], [str(tmp_path / "a.jsonl")], "sometimes")
