"""`make bench`: the whole users-etl flow on N generated users (BENCH_USERS, default 100,000), served by a
loopback DummyJSON server in its own process (page size 1000), into SQLite and PostgreSQL, delivering to a
loopback OpenSSH sshd; then the naive per-record path on the same data, and OpenSSH's own `sftp` client on
the same files; then the same users through the deployment in two shards on two workers (bench/sharded.py),
staging in a folder, then in S3 (bench/s3.py). The SQLite and PostgreSQL columns run a second time on the
same unchanged source (the nightly case). Above 100k users each column also runs on 100k users just before its
larger run, and the larger run's peak RSS and records/s are held to those. Prints a markdown table (also written
to var/bench/latest.md)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack, contextmanager
from pathlib import Path

from sqlalchemy import create_engine, text

from bench.report import DEPLOYED, REFERENCE_USERS, render
from bench.sharded import render_sharded, run_sharded
from dev.sample_api import offline_users_api
from models.migrate import upgrade

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "var" / "bench"
PG_ADMIN = os.environ.get("BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
NAIVE_MAX = int(os.environ.get("BENCH_NAIVE_USERS", "20000"))
RERUN = os.environ.get("BENCH_RERUN", "1") == "1"
SHARDED = os.environ.get("BENCH_SHARDED", "1") == "1"  # the sharded columns (bench/sharded.py)
SHARDED_S3 = os.environ.get("BENCH_SHARDED_S3", "1") == "1"  # and of those the one staging in S3 (bench/s3.py)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("USERS_", "SFTP_", "DATABASE_", "DATA_DIR"))}
    # Prefect's settings as `make run` has them: the local server's start (migrations checked, block types
    # registered once per database) is timed as a user meets it
    env.update(PREFECT_SERVER_ANALYTICS_ENABLED="false", PYTHONPATH=str(ROOT))
    env.update(extra)
    return env


@contextmanager
def users_server(n: int):
    url_file = OUT / "users_url"
    url_file.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.users_server", "--n", str(n), "--url-file", str(url_file)], cwd=ROOT, env=_env()
    )
    try:
        deadline = time.monotonic() + 600
        while not url_file.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the users server did not start")
            time.sleep(0.2)
        yield url_file.read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@contextmanager
def sftp_server():
    """A real OpenSSH sshd (as root: dev/sshd.py); else the project's own asyncssh demo server."""
    from dev.sshd import SshdUnavailable, build_sshd, running_sshd

    try:
        server = build_sshd()
    except SshdUnavailable as exc:
        print(f"(OpenSSH sshd unavailable: {exc}; using the asyncssh demo server)", file=sys.stderr)
        from dev.demo_sftp import running_demo_sftp

        with running_demo_sftp(OUT) as demo:
            yield demo.env(), None
        return
    with running_sshd(server):
        env = {
            "SFTP_HOST": server.host,
            "SFTP_PORT": str(server.port),
            "SFTP_USERNAME": server.username,
            "SFTP_KEY_PATH": str(server.key_path),
            "SFTP_KEY_PASSPHRASE": server.passphrase,
            "SFTP_KNOWN_HOSTS": str(server.known_hosts),
            "SFTP_REMOTE_BASE": server.remote_base,
        }
        yield env, server


@contextmanager
def prefect_api():
    """A Prefect server as deployed (`make server` on PostgreSQL, as in docker-compose.yml), up before the
    clock starts, the way a worker's flow runs find it. Its database is migrated first."""
    from dev.prefect_helpers import make_server

    with pg_database() as url:
        env = _env(
            PREFECT_SERVER_DATABASE_CONNECTION_URL=url.replace("+psycopg", "+asyncpg"), PREFECT_UI_ENABLED="false"
        )
        prefect = str(Path(sys.executable).parent / "prefect")
        subprocess.run([prefect, "server", "database", "upgrade", "-y"], env=env, check=True, capture_output=True)
        with make_server(env, OUT / "prefect-server.log", timeout=180) as (_port, api_url):
            yield api_url


@contextmanager
def pg_database():
    name = f"sluice_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def run_flow(api: str, db_url: str, sftp_env: dict[str, str], data_dir: Path, prefect_url: str | None) -> dict:
    """The flow in a fresh process, clock started before Python is: against `prefect_url`, else with the
    local Prefect server the flow process starts itself (as `make run` does)."""
    upgrade(db_url)  # as `make migrate` does before the first run; the flow checks the schema, never creates it
    env = _env(DATABASE_URL=db_url, DATA_DIR=str(data_dir), BENCH_T0=repr(time.time()), **sftp_env)
    if prefect_url:
        env["PREFECT_API_URL"] = prefect_url
    else:
        env.pop("PREFECT_API_URL", None)
    out = subprocess.run(
        [sys.executable, "-m", "bench.run_flow", api, str(data_dir)], cwd=ROOT, env=env, capture_output=True, text=True
    )
    if out.returncode != 0:
        raise RuntimeError(f"users-etl failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_host_checks(folder: Path) -> dict:
    """bench/host_checks.py in a fresh process."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.host_checks", str(folder)], cwd=ROOT, env=_env(), capture_output=True, text=True
    )
    if out.returncode != 0:
        raise RuntimeError(f"host checks failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_naive(api: str, n: int, sftp_env: dict[str, str], *flags: str) -> dict:
    db, files = OUT / "naive.db", OUT / "naive-files"
    db.unlink(missing_ok=True)
    shutil.rmtree(files, ignore_errors=True)
    out = subprocess.run(
        [sys.executable, "-m", "bench.naive", api, f"sqlite:///{db}", str(n), str(files), *flags],
        cwd=ROOT,
        env=_env(**sftp_env),
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise RuntimeError(f"naive path failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def our_sftp_seconds(sftp_env: dict[str, str], files: list[str]) -> float:
    """Our upload of the same files, alone (in the run it shares the two cores with persist)."""
    from models.settings import Settings
    from tasks.deliver import SftpTarget, upload_files

    target = SftpTarget.from_settings(Settings(**{k.lower(): v for k, v in sftp_env.items()}))
    t0 = time.perf_counter()
    upload_files(target, [Path(f) for f in files], f"{target.remote_base}/bench-alone")
    return time.perf_counter() - t0


def openssh_sftp_seconds(server, files: list[str]) -> float | None:
    """OpenSSH's `sftp` putting the same files to the same server (key decrypted into a temp copy)."""
    if server is None or not shutil.which("sftp"):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        key = Path(tmp) / "id"
        shutil.copyfile(server.key_path, key)
        os.chmod(key, 0o600)
        subprocess.run(
            ["ssh-keygen", "-q", "-p", "-P", server.passphrase, "-N", "", "-f", str(key)],
            check=True,
            capture_output=True,
        )
        batch = Path(tmp) / "batch"
        batch.write_text("".join(f"put {f} {server.remote_base}/openssh-{Path(f).name}\n" for f in files))
        t0 = time.perf_counter()
        subprocess.run(
            [
                "sftp",
                "-q",
                "-b",
                str(batch),
                "-i",
                str(key),
                "-P",
                str(server.port),
                "-o",
                f"UserKnownHostsFile={server.known_hosts}",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "BatchMode=yes",
                f"{server.username}@{server.host}",
            ],
            check=True,
            capture_output=True,
        )
        return time.perf_counter() - t0


def main() -> None:
    n = int(os.environ.get("BENCH_USERS", "100000"))
    OUT.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    reference: dict[str, dict] = {}  # above 100k: the same columns at 100k, each run just before its larger run
    with ExitStack() as stack:
        print(f"generating and serving {n:,} users ...", file=sys.stderr)
        api = stack.enter_context(users_server(n))
        ref_api = stack.enter_context(users_server(REFERENCE_USERS)) if n > REFERENCE_USERS else None
        sftp_env, sshd = stack.enter_context(sftp_server())
        print("starting a Prefect server on PostgreSQL ...", file=sys.stderr)
        prefect_url = stack.enter_context(prefect_api())
        # a server that has run nothing yet spends seconds on the first flow run (registering the flows...);
        # a deployed one has run them before: one small run (the 300-user offline sample) first, untimed
        warm = OUT / "warm-up"
        shutil.rmtree(warm, ignore_errors=True)
        warm.mkdir(parents=True)
        run_flow(stack.enter_context(offline_users_api()), f"sqlite:///{warm / 'warm.db'}", sftp_env, warm, prefect_url)
        runs = ["sqlite", "postgresql"] + (
            ["sqlite-ephemeral"] if os.environ.get("BENCH_EPHEMERAL", "1") == "1" else []
        )
        reruns: dict[str, dict] = {}  # the nightly case: each deployed column again on the same, unchanged source
        for name in runs:
            sizes = [(reference, ref_api, REFERENCE_USERS, f"data-{name}-100k")] if ref_api else []
            for into, source, size, folder in [*sizes, (results, api, n, f"data-{name}")]:
                print(f"users-etl on {size:,} users into {name} ...", file=sys.stderr)
                db_url = stack.enter_context(_database(name))
                prefect = None if name.endswith("ephemeral") else prefect_url
                into[name] = run_flow(source, db_url, sftp_env, _fresh(OUT / folder), prefect)
                if into is results and name in DEPLOYED and RERUN:
                    print(f"users-etl again on the same {size:,} users into {name} ...", file=sys.stderr)
                    reruns[name] = run_flow(source, db_url, sftp_env, _fresh(OUT / f"{folder}-again"), prefect)
        sharded: dict[str, dict] = {}  # staging in a folder, then in S3; each into a new database
        stagings = ["folder", *(["s3"] if SHARDED_S3 else [])] if SHARDED and "postgresql" in results else []
        for staging in stagings:
            print(f"users-etl deployed, {n:,} users in 2 shards, staging in {staging} ...", file=sys.stderr)
            db_url = stack.enter_context(_database("postgresql"))
            data_dir = _fresh(OUT / ("data-sharded" if staging == "folder" else "data-sharded-s3"))
            sharded[staging] = run_sharded(api, db_url, sftp_env, data_dir, prefect_url, _env(), s3=staging == "s3")
        naive_n = min(n, NAIVE_MAX)
        print(f"naive path on {naive_n:,} users ...", file=sys.stderr)
        naive = run_naive(api, naive_n, sftp_env)
        inserts_only = run_naive(api, naive_n, sftp_env, "--inserts-only")
        delivered = [d["local_path"] for d in results["sqlite"]["delivered"]]
        openssh = openssh_sftp_seconds(sshd, delivered)
        alone = our_sftp_seconds(sftp_env, delivered)
    print("host checks ...", file=sys.stderr)
    host = run_host_checks(_fresh(OUT / "host"))
    report = render(n, results, naive, inserts_only, openssh, alone, reference, host, reruns)
    if sharded:
        report += "\n".join(render_sharded(n, results["postgresql"], sharded["folder"], sharded.get("s3"))) + "\n"
    print(report)
    (OUT / "latest.md").write_text(report)


def _fresh(folder: Path) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    return folder


@contextmanager
def _database(column: str):
    """A new, empty database for one run: the bench's SQLite file, or a PostgreSQL database of its own."""
    if column != "postgresql":
        db = OUT / "bench.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        yield f"sqlite:///{db}"
        return
    with pg_database() as url:
        yield url


if __name__ == "__main__":
    main()
