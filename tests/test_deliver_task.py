"""The Prefect tasks that deliver over SFTP: their retry policy, a transient failure retried against a real sshd,
a refused host key not retried."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from tasks.deliver import HostKeyError, deliver_files_task, publish_task, remote_dir_for, stage_task
from tests.deliver_helpers import DAY, RUN_DATE, make_target, tree
from tests.servers.sshd import SshdServer


@pytest.mark.parametrize("task", [deliver_files_task, stage_task, publish_task], ids=lambda t: t.name)
def test_task_retry_policy(task) -> None:
    assert task.name in ("sftp-upload", "sftp-stage", "sftp-publish")
    assert task.retries == 3
    assert task.retry_delay_seconds == [2, 4, 8]
    assert task.retry_jitter_factor
    quick = task.with_options(retry_delay_seconds=0)
    assert quick.retry_delay_seconds == 0 and quick.retry_condition_fn is task.retry_condition_fn


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
