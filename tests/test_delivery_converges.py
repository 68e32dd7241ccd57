"""Delivery that converges, against a real OpenSSH sshd, a real Prefect API and a real SQLite database: a run
uploads while it persists and publishes only once persist succeeded, records each file as it lands, leaves
nothing half-published when it fails, and a rerun for the same day replaces its files, never adds copies."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prefect import Flow, flow
from prefect.runtime import flow_run as current_run
from sqlalchemy import text
from sqlmodel import Session

from dev.sample_api import DummyJsonServer
from flows.deliver import deliver, discard_delivery, publish_delivery
from flows.users_etl import users_etl
from models.db import engine_for
from models.runs import EtlRun
from tasks import runs
from tasks.deliver import INCOMING_DIR, SftpPublishError, SftpRemoteError, SftpUnavailableError
from tasks.staging.runner import StageRunner
from tests.conftest import migrated
from tests.servers.dummyjson import load_real_users
from tests.servers.sshd import SshdServer

DAY = "2024-05-17"
DAILY = ("records.jsonl", "etl.jsonl", "invalid_users.jsonl")


class PersistFailed(RuntimeError):
    pass


def tree(root: Path) -> dict[str, bytes]:
    """Every file below `root`, hidden ones too: what the receiving side could see."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def staged_run(base: Path, stamp: str, users: int, note: str = "") -> list[Path]:
    """A run's files as users-etl stages them: raw, processed, DLQ (stamped names), raw first."""
    raw = base / stamp / "raw_users" / f"records_{stamp}.jsonl"
    processed = base / stamp / "processed_users" / f"etl_{stamp}.jsonl"
    dlq = base / stamp / "dlq" / f"invalid_users_{stamp}.jsonl"
    for path in (raw, processed, dlq):
        path.parent.mkdir(parents=True)
    pad = "x" * 400
    raw.write_text("".join(json.dumps({"id": i, "firstName": f"U{i}", "pad": pad}) + "\n" for i in range(users)))
    processed.write_text("".join(json.dumps({"id": i, "note": note}) + "\n" for i in range(users - 1)))
    dlq.write_text(json.dumps({"record": {"id": users - 1}, "reason": "bad_email"}) + "\n")
    return [raw, processed, dlq]


def run_row(url: str, run_id: str) -> EtlRun:
    with Session(engine_for(url)) as session:
        return session.get(EtlRun, run_id)


@pytest.fixture()
def env(prefect_server: str, sshd: SshdServer, settings_env, tmp_path: Path) -> str:
    """SFTP settings pointing at the test sshd, the raw file delivered as staged, a migrated SQLite database."""
    url = migrated(f"sqlite:///{tmp_path / 'app.db'}")
    settings_env(
        **sshd.sftp_settings(),
        deliver_raw="full",
        database_url=url,
    )
    return url


def users_shaped(before_failing: Callable[[str], None] | None = None) -> Flow:
    """A parent of users-etl's shape: deliver's uploads start alongside persist, publish once persist
    succeeded, discard if the run failed (the call sites proposed for flows/users_etl.py). Its persist
    stand-in fails when `before_failing` is given, after calling it with the run id."""

    @flow(name="converge-parent")
    def parent(files: list[str], url: str, persist_fails: bool = False) -> dict:
        run_id = str(current_run.id)
        engine = engine_for(url)
        runs.start_run(engine, run_id=run_id, flow_name="users-etl")
        stages = StageRunner()

        def persist() -> dict:
            if persist_fails:
                if before_failing is not None:
                    before_failing(run_id)
                raise PersistFailed("persist failed")
            return {}

        try:
            stages.start(
                "deliver", deliver, files, DAY, raw_files=[files[0]], run_id=run_id, publish=False, daily_names=True
            )
            stages.start("persist", persist)
            stages.result("persist")
            staged = stages.result("deliver").staged
            delivered = stages.run("publish", publish_delivery, staged, run_id=run_id).delivered
        except BaseException:
            stages.close()  # the uploads end (or fail) first
            discard_delivery(run_id)
            raise
        finally:
            stages.close()
        runs.finish_run(engine, run_id=run_id, status="completed")
        return {"run_id": run_id, "delivered": delivered}

    return parent


def run_parent(files: list[Path], url: str) -> dict:
    return users_shaped()([str(f) for f in files], url)


def failed_run(
    files: list[Path], url: str, persist_fails: bool = False, before_failing: Callable[[str], None] | None = None
) -> tuple[str, BaseException]:
    state = users_shaped(before_failing)([str(f) for f in files], url, persist_fails, return_state=True)
    assert state.is_failed(), state
    return str(state.state_details.flow_run_id), state.result(raise_on_failure=False)


@pytest.mark.sshd
def test_sftp_down_past_the_retries_then_back(env: str, sshd: SshdServer, tmp_path: Path) -> None:
    """The reported case: SFTP goes away mid-delivery and stays away past the retries. Nothing is published
    and the record says so; once it is back, the rerun leaves exactly one copy of each file and no `.part`."""
    first = staged_run(tmp_path, "20240517_060000", users=250_000)  # a raw file of ~110 MB
    incoming = sshd.local_root / INCOMING_DIR
    stop = threading.Event()

    def take_sftp_down_mid_upload() -> None:
        while not stop.is_set():
            if any(p.stat().st_size >= 1 << 20 for p in incoming.glob("*/records.jsonl.part")):
                sshd.kill_connections()  # first: stop() alone leaves open sessions running
                sshd.stop()  # the listener gone: every retry is refused
                return
            time.sleep(0.002)

    watcher = threading.Thread(target=take_sftp_down_mid_upload, daemon=True)
    watcher.start()
    try:
        run_id, error = failed_run(first, env)
    finally:
        stop.set()
        watcher.join(timeout=10)
    assert isinstance(error, SftpUnavailableError) and f"127.0.0.1:{sshd.port}" in str(error)
    row = run_row(env, run_id)
    assert (row.delivered_files, row.delivered_bytes, json.loads(row.delivered)) == (0, 0, [])
    assert not (sshd.local_root / DAY).exists()  # nothing published: not even the files staged whole
    # down while the raw file was on its way (discard could not reach the server: the next run cleans)
    assert [p.name for p in (incoming / run_id).iterdir()] == ["records.jsonl.part"]
    assert (incoming / run_id / "records.jsonl.part").stat().st_size < first[0].stat().st_size

    sshd.start()
    second = staged_run(tmp_path, "20240517_070000", users=50_000, note="rerun")
    out = run_parent(second, env)

    on_server = tree(sshd.local_root)
    assert on_server == {f"{DAY}/{name}": f.read_bytes() for name, f in zip(DAILY, second, strict=True)}
    assert len(on_server[f"{DAY}/records.jsonl"].splitlines()) == 50_000  # not 150k lines for 50k users
    assert list(incoming.iterdir()) == []  # the failed run's uploads went with the rerun
    row = run_row(env, out["run_id"])
    assert json.loads(row.delivered) == [
        {"remote_path": f"/upload/{DAY}/{name}", "bytes": f.stat().st_size}
        for name, f in zip(DAILY, second, strict=True)
    ]
    assert (row.delivered_files, row.delivered_bytes) == (3, sum(f.stat().st_size for f in second))


@pytest.mark.sshd
def test_rerun_for_the_same_day_replaces_never_duplicates(env: str, sshd: SshdServer, tmp_path: Path) -> None:
    first = staged_run(tmp_path, "20240517_060000", users=300, note="first")
    run_parent(first, env)
    assert tree(sshd.local_root) == {f"{DAY}/{n}": f.read_bytes() for n, f in zip(DAILY, first, strict=True)}

    second = staged_run(tmp_path, "20240517_070000", users=200, note="second")
    out = run_parent(second, env)
    assert tree(sshd.local_root) == {f"{DAY}/{n}": f.read_bytes() for n, f in zip(DAILY, second, strict=True)}
    assert [d["remote_path"] for d in out["delivered"]] == [f"/upload/{DAY}/{n}" for n in DAILY]
    assert [d["local_path"] for d in out["delivered"]] == [str(f) for f in second]


@pytest.mark.sshd
def test_a_run_failing_in_persist_delivers_nothing(env: str, sshd: SshdServer, tmp_path: Path) -> None:
    earlier = staged_run(tmp_path, "20240517_050000", users=100, note="earlier")
    run_parent(earlier, env)
    published = tree(sshd.local_root)

    files = staged_run(tmp_path, "20240517_060000", users=20_000)
    run_id, error = failed_run(files, env, persist_fails=True)
    assert isinstance(error, PersistFailed)
    assert tree(sshd.local_root) == published  # the earlier run's files, untouched; no upload of this run left
    assert list((sshd.local_root / INCOMING_DIR).iterdir()) == []
    row = run_row(env, run_id)
    assert (row.delivered_files, json.loads(row.delivered)) == (0, [])


@pytest.mark.sshd
def test_uploads_a_failed_run_could_not_remove_go_with_the_next_run(env: str, sshd: SshdServer, tmp_path: Path) -> None:
    files = staged_run(tmp_path, "20240517_060000", users=2_000)
    incoming = sshd.local_root / INCOMING_DIR
    sizes = sorted(f.stat().st_size for f in files)

    def server_goes_down_once_uploaded(run_id: str) -> None:
        deadline = time.monotonic() + 60
        while sorted(p.stat().st_size for p in (incoming / run_id).glob("*.part")) != sizes:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        sshd.stop()

    run_id, error = failed_run(files, env, persist_fails=True, before_failing=server_goes_down_once_uploaded)
    assert isinstance(error, PersistFailed)
    assert sorted(p.name for p in (incoming / run_id).iterdir()) == sorted(f"{n}.part" for n in DAILY)
    assert not (sshd.local_root / DAY).exists()

    sshd.start()
    again = staged_run(tmp_path, "20240517_070000", users=1_000)
    run_parent(again, env)
    assert tree(sshd.local_root) == {f"{DAY}/{n}": f.read_bytes() for n, f in zip(DAILY, again, strict=True)}


def _waiting_delivery(env: str, tmp_path: Path) -> tuple[str, list[Path], list]:
    """A run's row and its files uploaded to its incoming folder, waiting to be published."""
    run_id = str(uuid.uuid4())
    runs.start_run(engine_for(env), run_id=run_id, flow_name="users-etl")
    files = staged_run(tmp_path, "20240517_060000", users=500)
    staged = deliver(
        [str(f) for f in files], DAY, raw_files=[str(files[0])], run_id=run_id, publish=False, daily_names=True
    ).staged
    return run_id, files, staged


@pytest.mark.sshd
def test_publish_checks_every_staged_file_before_renaming_any(env: str, sshd: SshdServer, tmp_path: Path) -> None:
    run_id, files, staged = _waiting_delivery(env, tmp_path)
    part = sshd.local_root / INCOMING_DIR / run_id / "invalid_users.jsonl.part"
    part.write_bytes(b"changed by someone else\n")

    with pytest.raises(SftpPublishError) as info:
        publish_delivery(staged, run_id=run_id)
    assert "nothing was published" in str(info.value) and "run the flow again" in str(info.value)
    assert not (sshd.local_root / DAY).exists()
    assert run_row(env, run_id).delivered_files == 0


@pytest.mark.sshd
def test_a_publish_failing_midway_records_exactly_what_landed(env: str, sshd: SshdServer, tmp_path: Path) -> None:
    run_id, files, staged = _waiting_delivery(env, tmp_path)
    owner = sshd.local_root.stat()
    for folder in (sshd.local_root / DAY, sshd.local_root / DAY / "invalid_users.jsonl"):  # a folder in the way
        folder.mkdir()
        os.chown(folder, owner.st_uid, owner.st_gid)

    with pytest.raises(SftpRemoteError) as info:
        publish_delivery(staged, run_id=run_id)
    assert f"publishing invalid_users.jsonl.part as /upload/{DAY}/invalid_users.jsonl" in str(info.value)
    row = run_row(env, run_id)
    assert json.loads(row.delivered) == [
        {"remote_path": f"/upload/{DAY}/{n}", "bytes": f.stat().st_size}
        for n, f in zip(DAILY[:2], files[:2], strict=True)
    ]
    assert (row.delivered_files, row.delivered_bytes) == (2, files[0].stat().st_size + files[1].stat().st_size)
    assert tree(sshd.local_root / DAY) == {n: f.read_bytes() for n, f in zip(DAILY[:2], files[:2], strict=True)}


@pytest.mark.sshd
def test_cleaning_spares_runs_still_going(env: str, sshd: SshdServer, tmp_path: Path) -> None:
    """A run's uploads waiting for its persist are never taken for stale by another run (feeds-etl may deliver
    meanwhile); those of runs Prefect does not know and the one-step delivery's leftovers are."""
    owner = sshd.local_root.stat()
    gone = sshd.local_root / INCOMING_DIR / str(uuid.uuid4())
    legacy = sshd.local_root / DAY / ".records_20240516_060000.jsonl.part-0123456789ab"
    for folder in (gone.parent, gone, legacy.parent):
        folder.mkdir()
        os.chown(folder, owner.st_uid, owner.st_gid)
    (gone / "etl.jsonl.part").write_bytes(b"half")
    legacy.write_bytes(b"half")
    os.utime(legacy, (time.time() - 7200,) * 2)
    users = staged_run(tmp_path, "20240517_060000", users=300)
    feeds = tmp_path / "feed_items_20240517_060500.jsonl"
    feeds.write_text('{"guid": "urn:1"}\n')

    @flow(name="converge-two-runs")
    def two_runs() -> list[dict]:
        waiting = deliver([str(f) for f in users], DAY, run_id=str(current_run.id), publish=False, daily_names=True)
        other = deliver([str(feeds)], DAY)  # another flow's whole delivery, while this run's uploads wait
        assert not gone.exists()
        return other.delivered + publish_delivery(waiting.staged).delivered

    delivered = two_runs()
    assert [Path(d["remote_path"]).name for d in delivered] == [feeds.name, *DAILY]
    assert tree(sshd.local_root) == {f"{DAY}/{feeds.name}": feeds.read_bytes()} | {
        f"{DAY}/{n}": f.read_bytes() for n, f in zip(DAILY, users, strict=True)
    }


@pytest.mark.sshd
def test_users_etl_publishes_once_persisted_and_a_rerun_replaces(env: str, sshd: SshdServer, settings_env) -> None:
    """users-etl itself: a run whose persist fails leaves nothing on the server; two runs the same day leave
    one copy of each file, and each run's row lists exactly what landed."""
    settings_env(users_page_size=50, deliver_raw=None)
    with engine_for(env).begin() as conn:
        conn.execute(
            text(
                "CREATE TRIGGER refuse_150 BEFORE INSERT ON processed_users WHEN NEW.id = 150 "
                "BEGIN SELECT RAISE(ABORT, 'user 150 refused'); END"
            )
        )
    with DummyJsonServer(load_real_users()) as server:
        state = asyncio.run(users_etl(api_base=server.base_url, batch_records=50, return_state=True))
        assert state.is_failed() and "user 150 refused" in state.message
        assert tree(sshd.local_root) == {}  # uploaded alongside persist, never published, then removed
        with engine_for(env).begin() as conn:
            conn.execute(text("DROP TRIGGER refuse_150"))
            failed = conn.execute(text("SELECT failed_stage, delivered_files, delivered FROM etl_runs")).one()
        assert failed == ("persist", 0, "[]")
        first = asyncio.run(users_etl(api_base=server.base_url, batch_records=50))
        second = asyncio.run(users_etl(api_base=server.base_url, batch_records=50))
    day = datetime.now(UTC).date().isoformat()
    on_server = tree(sshd.local_root)
    assert sorted(on_server) == sorted(f"{day}/{n}" for n in DAILY)
    assert len(on_server[f"{day}/records.jsonl"].splitlines()) == 208  # one copy, not one per run
    for summary in (first, second):
        row = run_row(env, summary["run_id"])
        recorded = json.loads(row.delivered)
        assert sorted(d["remote_path"] for d in recorded) == sorted(f"/upload/{day}/{n}" for n in DAILY)
        assert all(set(d) == {"remote_path", "bytes"} for d in recorded)  # no local paths, nothing else
        assert (row.delivered_files, row.delivered_bytes) == (3, sum(d["bytes"] for d in recorded))
    assert row.delivered_bytes == sum(len(v) for v in on_server.values())
