"""One run across two workers: a Prefect server of its own (`make server`), prefect.yaml deployed to it (`make
deploy`), two process workers (`prefect worker start`, each with a data folder of its own, as on two hosts),
PostgreSQL as the store, staging in S3 served by moto on loopback (or in a folder both workers see), the users
from a DummyJSON-contract server, delivery to a real OpenSSH sshd.

A sharded run's stored rows, DLQ and delivered files equal an unsharded run's over the same source, also when
a shard's worker is killed in the middle of it (the shard runs again on another worker)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

from dev.prefect_helpers import make_server, stop
from dev.prefect_server import log_tail as tail
from models.db import engine_for
from tests.conftest import create_pg_database, drop_pg_database, migrated, skip_or_fail
from tests.servers.dummyjson import DummyJsonServer, Fault, break_users, load_real_users
from tests.tables import rows

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

ROOT = Path(__file__).resolve().parents[1]
POOL = "sluice-shards-test"
PAGE_SIZE = 20
RUN_TIMEOUT = 300
LOST_SECONDS = 20  # USERS_SHARD_LOST_SECONDS: a killed worker's shard is noticed this soon
CLEARED = ("USERS_", "SFTP_", "DATABASE_", "DATA_DIR", "DEPARTMENTS_", "EXTRACT_", "FEED_", "PREFECT_API_")
CLEARED += ("PREFECT_PROFILE", "SLUICE_WORK_POOL", "WORK_POOL", "STAGING_", "AWS_")

# what a user compares: every stored row but the columns that name the run or the moment
SNAPSHOT = {
    "raw_users": "SELECT source, source_id, record_hash, data FROM raw_users ORDER BY record_hash",
    "processed_users": (
        "SELECT id, source, first_name, last_name, email, age, department, department_code, ssn_masked, "
        "card_number_masked, iban_masked, status FROM processed_users ORDER BY id"
    ),
    "dlq_users": (
        "SELECT record_hash, source, user_id, error_reason, data, resolved_at IS NULL FROM dlq_users ORDER BY record_hash"
    ),
}


@dataclass
class Cluster:
    api_url: str
    db_url: str
    env: dict[str, str]
    workers: list[subprocess.Popen]
    logs: list[Path]
    tmp: Path
    s3_url: str
    s3: Any  # a boto3 S3 client of the store

    def start_worker(self, n: int, *, limit: int | None = None) -> subprocess.Popen:
        """`prefect worker start` on the pool, as on host `n` (a data folder of its own); `limit`: at most
        that many flow runs at once."""
        log = self.tmp / f"worker-{n}.log"
        env = {**self.env, "DATA_DIR": str(self.tmp / f"host-{n}" / "data")}
        cmd = [str(ROOT / ".venv/bin/prefect"), "worker", "start", "--pool", POOL, "--type", "process"]
        with log.open("ab") as out:
            self.workers.append(
                subprocess.Popen(
                    cmd + (["--limit", str(limit)] if limit else []),
                    env=env,
                    cwd=ROOT,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        self.logs.append(log)
        return self.workers[-1]

    def stop_workers(self) -> None:
        for worker in self.workers:
            stop(worker)

    def use_staging(self, staging: str) -> None:
        """Two workers staging in S3 (`s3`) or in a folder both see (`folder`)."""
        url = self.s3_url if staging == "s3" else str(self.tmp / "shared-staging")
        if self.env["STAGING_URL"] != url or not any(w.poll() is None for w in self.workers):
            self.stop_workers()
            self.env["STAGING_URL"] = url
            self.start_worker(len(self.workers) + 1)
            self.start_worker(len(self.workers) + 1)

    def staged(self, folder: str) -> list[str]:
        """The keys under `folder` (e.g. 'runs/<run id>/shard-2/raw_users/') of the S3 staging store."""
        bucket, prefix = self.s3_url.removeprefix("s3://").split("/", 1)
        listed = self.s3.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/{folder}")
        return [o["Key"].removeprefix(f"{prefix}/{folder}") for o in listed.get("Contents", [])]

    def logs_tail(self) -> str:
        return "\n".join(f"--- {log.name}\n{tail(log, 80)}" for log in self.logs)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, moto_s3, sshd_server) -> Iterator[Cluster]:
    if not (ROOT / ".venv" / "bin" / "prefect").exists():
        skip_or_fail(f"no virtualenv with prefect at {ROOT / '.venv'} (run `make install`)")
    tmp = tmp_path_factory.mktemp("sharded")
    env = {k: v for k, v in os.environ.items() if not k.startswith(CLEARED)}
    env |= {
        "PREFECT_HOME": str(tmp / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_LOGGING_LEVEL": "INFO",
    }
    bucket = "sluice-shards"
    moto_s3.client().create_bucket(Bucket=bucket)
    db_url = migrated(create_pg_database("sluice_shards"))
    with make_server(env, tmp / "server.log", 180) as (_port, api_url):
        env |= {"PREFECT_API_URL": api_url}
        deploy = subprocess.run(
            ["make", "--no-print-directory", "-C", str(ROOT), "deploy", f"WORK_POOL={POOL}"],
            env=env,
            capture_output=True,
            timeout=180,
        )
        assert deploy.returncode == 0, deploy.stdout.decode()[-3000:] + deploy.stderr.decode()[-3000:]
        flow_env = {
            **env,
            **moto_s3.env,
            "DATABASE_URL": db_url,
            "STAGING_URL": f"s3://{bucket}/staging",
            "STAGING_ENDPOINT_URL": moto_s3.endpoint_url,
            "USERS_PAGE_SIZE": str(PAGE_SIZE),
            "USERS_SHARD_LOST_SECONDS": str(LOST_SECONDS),
            "EXTRACT_RETRY_BASE_SECONDS": "0",
            **{k.upper(): str(v) for k, v in sshd_server.sftp_settings().items()},
        }
        cluster = Cluster(api_url, db_url, flow_env, [], [], tmp, flow_env["STAGING_URL"], moto_s3.client())
        try:
            yield cluster
        finally:
            for worker in cluster.workers:
                stop(worker)
            drop_pg_database(db_url)


USERS = 208  # the real users the source serves (some broken: the DLQ has entries)


@pytest.fixture(scope="module")
def source() -> Iterator[DummyJsonServer]:
    users, _expected = break_users(load_real_users())
    assert len(users) == USERS
    with DummyJsonServer(users) as server:
        yield server


def _trigger(cluster: Cluster, source: DummyJsonServer, shards: int, **parameters) -> str:
    """`users-etl/daily` run with `shards`, as `prefect deployment run -p` starts it; its flow run id."""
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: cluster.api_url}), get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("users-etl/daily")
        run = client.create_flow_run_from_deployment(
            deployment.id, parameters={"api_base": source.base_url, "shards": shards, **parameters}
        )
        return str(run.id)


def _wait(cluster: Cluster, run_id: str, *, during=None) -> None:
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    deadline = time.monotonic() + RUN_TIMEOUT
    with temporary_settings(updates={PREFECT_API_URL: cluster.api_url}), get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            state = client.read_flow_run(run_id).state
            if state is not None and state.is_final():
                assert state.is_completed(), f"{state.name}: {state.message}\n{cluster.logs_tail()}"
                return
            if during is not None:
                during(client)
            time.sleep(0.5)
    pytest.fail(f"run {run_id} did not finish in {RUN_TIMEOUT} s\n{cluster.logs_tail()}")


def _result(cluster: Cluster, run_id: str, sshd) -> dict:
    """The stored rows, the run's record and the files it delivered (then cleared from the server)."""
    [(status, shards, extracted, delivered_files)] = rows(
        cluster.db_url, "SELECT status, shards, extracted, delivered_files FROM etl_runs WHERE id = :id", id=run_id
    )
    root = Path(sshd.local_root)
    delivered = {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
    sshd.clear_uploads()
    tables = {name: rows(cluster.db_url, sql) for name, sql in SNAPSHOT.items()}
    assert delivered_files == len(delivered) == 3  # raw (masked), processed, DLQ
    return {"status": status, "delivered": delivered, "shards": orjson.loads(shards), "extracted": extracted, **tables}


def _fresh(cluster: Cluster, sshd) -> None:
    """An empty store and SFTP folder, as before a first run."""
    sshd.clear_uploads()
    with engine_for(cluster.db_url).begin() as conn:
        for table in ("raw_users", "processed_users", "dlq_users", "etl_runs", "etl_checkpoints", "schema_drift"):
            conn.exec_driver_sql(f"DELETE FROM {table}")


@pytest.mark.parametrize("staging", ["s3", "folder"])
def test_sharded_run_equals_unsharded_run(cluster, source, sshd_server, staging):
    cluster.use_staging(staging)
    _fresh(cluster, sshd_server)
    one = _trigger(cluster, source, shards=1)
    _wait(cluster, one)
    single = _result(cluster, one, sshd_server)
    assert single["shards"] == [] and single["extracted"] == USERS
    assert single["dlq_users"], "the source's broken users are in the DLQ"

    _fresh(cluster, sshd_server)
    two = _trigger(cluster, source, shards=2)
    _wait(cluster, two)
    sharded = _result(cluster, two, sshd_server)
    assert [s["shard"] for s in sharded["shards"]] == [1, 2]
    assert sum(s["records"] for s in sharded["shards"]) == USERS
    assert sharded["shards"][0]["stop"] == sharded["shards"][1]["start"]
    for name in ("raw_users", "processed_users", "dlq_users", "delivered", "extracted"):
        assert sharded[name] == single[name], name


def test_a_run_staged_in_s3_equals_one_staged_in_a_folder_and_leaves_no_data_on_its_worker(
    cluster, source, sshd_server
):
    """With STAGING_URL=s3://..., an unsharded run's stages append, read and deliver their files in the bucket (a
    part per append); the worker's own data folder holds only the stages' manifests; the stored rows and the
    delivered files are those of the same run staged in a folder."""
    results = {}
    for staging in ("folder", "s3"):
        cluster.use_staging(staging)
        _fresh(cluster, sshd_server)
        run_id = _trigger(cluster, source, shards=1)
        _wait(cluster, run_id)
        results[staging] = _result(cluster, run_id, sshd_server)
    staged = cluster.staged(f"runs/{run_id}/")
    for folder in ("raw_users/", "processed_users/", "dlq/", "deliver/"):
        assert any(k.startswith(folder) and k.rsplit("/", 1)[-1].isdigit() for k in staged), (folder, staged)
    on_hosts = [p for p in cluster.tmp.glob(f"host-*/data/runs/{run_id}/**/*") if p.is_file()]
    assert on_hosts and {p.parent.name for p in on_hosts} == {"stages"}, on_hosts
    assert {p.name for p in on_hosts} <= {"extracted.jsonl", "transformed.jsonl"} | {
        f"{m}.started" for m in ("extracted.jsonl", "transformed.jsonl")
    }
    for name in ("raw_users", "processed_users", "dlq_users", "delivered", "extracted"):
        assert results["s3"][name] == results["folder"][name], name


def test_killed_shard_runs_again_and_the_result_is_the_same(cluster, source, sshd_server):
    """The worker running shard 2 dies with its flow run and its disk (SIGKILL to its process group, its data
    folder removed, as when its host goes): nobody reports the crash, the parent notices the shard's pulse
    stopped, another worker runs the shard again and resumes its range after the pages the shard had staged in
    the staging store (its checkpoint names its file there); the run's result is the unsharded one's."""
    cluster.use_staging("s3")
    _fresh(cluster, sshd_server)
    one = _trigger(cluster, source, shards=1)
    _wait(cluster, one)
    single = _result(cluster, one, sshd_server)

    # the parent on a worker of its own (one flow run at most), the shards on two others
    cluster.stop_workers()
    cluster.start_worker(len(cluster.workers) + 1, limit=1)
    parent_worker = len(cluster.workers)
    _fresh(cluster, sshd_server)
    # shard 2's pages slow enough (3 s for its range, under any load) to kill it in the middle of its walk
    source.fail_when = lambda _limit, skip: time.sleep(0.5) if skip >= 100 else None
    killed: list[int] = []

    def kill_shard_two(client) -> None:
        if killed:
            return
        if len(cluster.workers) == parent_worker and client.read_flow_run(two).state.is_running():
            cluster.start_worker(parent_worker + 1)
            cluster.start_worker(parent_worker + 2)
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(like_="-shard-2-of-2")))
        running = [r for r in runs if r.state is not None and r.state.is_running() and r.infrastructure_pid]
        if not running or len(cluster.staged(f"runs/{two}/shard-2/raw_users/")) < 3:  # (a mark, two pages)
            return
        pid = int(str(running[0].infrastructure_pid).rsplit(":", 1)[-1])
        owner = next(w for w in cluster.workers[parent_worker:] if w.poll() is None and _is_child(pid, w.pid))
        os.killpg(owner.pid, signal.SIGKILL)
        os.kill(pid, signal.SIGKILL)
        shutil.rmtree(cluster.tmp / f"host-{cluster.workers.index(owner) + 1}")
        killed.append(pid)

    try:
        source.requests.clear()
        two = _trigger(cluster, source, shards=2, batch_records=PAGE_SIZE)
        _wait(cluster, two, during=kill_shard_two)
    finally:
        source.fail_when = None
    assert killed, "shard 2 was never seen running"
    sharded = _result(cluster, two, sshd_server)
    assert sharded["shards"][1]["attempts"] >= 2  # (shard 1 too, when the same worker ran both)
    assert source.requests.count((PAGE_SIZE, 100)) == 1, "shard 2 resumed after the pages it had staged"
    for name in ("raw_users", "processed_users", "dlq_users", "delivered", "extracted"):
        assert sharded[name] == single[name], name


def _is_child(pid: int, parent: int) -> bool:
    """Whether process `pid` descends from `parent`."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    ppid = int(stat.rsplit(")", 1)[1].split()[1])
    return ppid == parent or (ppid > 1 and _is_child(ppid, parent))


def test_a_shard_that_cannot_finish_is_retried_alone_and_the_run_fails_naming_it(cluster, source, sshd_server):
    cluster.use_staging("s3")
    _fresh(cluster, sshd_server)
    source.fail_when = lambda _limit, skip: Fault(500) if skip >= 100 else None  # shard 2's range is down
    try:
        run_id = _trigger(cluster, source, shards=2)
        with pytest.raises(AssertionError, match="Failed") as failed:
            _wait(cluster, run_id)
    finally:
        source.fail_when = None
    assert "shard 2 of 2 (records 100 to the end) failed after 3 attempt(s)" in str(failed.value)
    [(status, error)] = rows(cluster.db_url, "SELECT status, error FROM etl_runs WHERE id = :id", id=run_id)
    assert status == "failed" and "shard 2 of 2" in error and "HTTP 500" in error
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: cluster.api_url}), get_client(sync_client=True) as client:
        names = [
            r.name
            for r in client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(like_=run_id[:8])))
        ]
    assert sorted(names) == [f"{run_id[:8]}-shard-1-of-2"] + [f"{run_id[:8]}-shard-2-of-2"] * 3
    assert rows(cluster.db_url, "SELECT count(*) FROM raw_users")[0][0] == 100  # shard 1's range is stored


def test_users_gone_from_every_range_are_marked_deleted_as_one_walk_would(cluster, source, sshd_server):
    """The nightly case: the next sharded run over a source that lost five users (one in each range and more)
    marks exactly those deleted, with the ids of every shard's range together, as an unsharded run does."""
    cluster.use_staging("s3")
    users, broken = break_users(load_real_users())
    leaving = (5, 57, 120, 150, 201)  # in both ranges (0-99, 100 on), each valid and current before it goes
    assert not broken.keys() & set(leaving)
    gone = {users[i]["id"] for i in leaving}
    outcomes = []
    for shards in (1, 2):
        _fresh(cluster, sshd_server)
        source.set_users(users)
        _wait(cluster, _trigger(cluster, source, shards=shards))
        source.set_users([u for u in users if u["id"] not in gone])
        second = _trigger(cluster, source, shards=shards)
        _wait(cluster, second)
        [(deleted,)] = rows(cluster.db_url, "SELECT deleted FROM etl_runs WHERE id = :id", id=second)
        marked = {r[0] for r in rows(cluster.db_url, "SELECT id FROM processed_users WHERE status = 'deleted'")}
        outcomes.append((deleted, marked, _result(cluster, second, sshd_server)))
    source.set_users(users)
    (deleted_1, marked_1, single), (deleted_2, marked_2, sharded) = outcomes
    assert marked_2 == marked_1 == gone and deleted_2 == deleted_1 == len(gone)
    for name in ("raw_users", "processed_users", "dlq_users", "delivered"):
        assert sharded[name] == single[name], name
