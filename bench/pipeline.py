"""`make bench`: the whole users-etl flow on N generated users (BENCH_USERS, default 100,000), served by a
loopback DummyJSON server in its own process (page size 1000), into SQLite and PostgreSQL, delivering to a
loopback OpenSSH sshd; then the naive per-record path on the same data, and OpenSSH's own `sftp` client on
the same files. Above 100k users each column also runs on 100k users just before its larger run, and the larger
run's peak RSS is held to those. Prints a markdown table (also written to var/bench/latest.md)."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack, contextmanager
from pathlib import Path

from sqlalchemy import create_engine, text

from models.migrate import upgrade
from models.settings import DEFAULT_BATCH_RECORDS

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "var" / "bench"
PG_ADMIN = os.environ.get("BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
NAIVE_MAX = int(os.environ.get("BENCH_NAIVE_USERS", "20000"))

# issue 6's targets on these 2-core machines
TARGET_100K_SECONDS = 15.0
TARGET_1M_SQLITE_SECONDS = 150.0
TARGET_NAIVE_RATIO = 5.0
TARGET_PEAK_RSS_MB = 450.0
TARGET_SFTP_SHARE = 0.5
# a larger run's peak RSS is held to this size's, measured in the same invocation (the machine's page cache moves
# the RSS of the same run by up to 30 MB within an hour, so a peak recorded earlier is no yardstick)
REFERENCE_USERS = 100_000


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
    """A real OpenSSH sshd (the tests' fixture, as root); else the project's own asyncssh demo server."""
    try:
        from tests.servers.sshd import _build_server

        server = _build_server()
    except BaseException as exc:  # noqa: BLE001 (pytest's skip is a BaseException)
        print(f"(OpenSSH sshd unavailable: {exc}; using the asyncssh demo server)", file=sys.stderr)
        from dev.demo_sftp import running_demo_sftp

        with running_demo_sftp(OUT) as demo:
            yield demo.env(), None
        return
    server.start()
    try:
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
    finally:
        server.stop()
        shutil.rmtree(server.base_dir, ignore_errors=True)


@contextmanager
def prefect_api():
    """A Prefect server as deployed (`make server` on PostgreSQL, as in docker-compose.yml), up before the
    clock starts, the way a worker's flow runs find it. Its database is migrated first."""
    from dev.prefect_server import make_server

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
        run_flow("", f"sqlite:///{warm / 'warm.db'}", sftp_env, warm, prefect_url)
        runs = ["sqlite", "postgresql"] + (
            ["sqlite-ephemeral"] if os.environ.get("BENCH_EPHEMERAL", "1") == "1" else []
        )
        for name in runs:
            sizes = [(reference, ref_api, REFERENCE_USERS, f"data-{name}-100k")] if ref_api else []
            for into, source, size, folder in [*sizes, (results, api, n, f"data-{name}")]:
                print(f"users-etl on {size:,} users into {name} ...", file=sys.stderr)
                into[name] = run_flow(
                    source,
                    stack.enter_context(_database(name)),
                    sftp_env,
                    _fresh(OUT / folder),
                    None if name.endswith("ephemeral") else prefect_url,
                )
        naive_n = min(n, NAIVE_MAX)
        print(f"naive path on {naive_n:,} users ...", file=sys.stderr)
        naive = run_naive(api, naive_n, sftp_env)
        inserts_only = run_naive(api, naive_n, sftp_env, "--inserts-only")
        delivered = [d["local_path"] for d in results["sqlite"]["delivered"]]
        openssh = openssh_sftp_seconds(sshd, delivered)
        alone = our_sftp_seconds(sftp_env, delivered)
    report = render(n, results, naive, inserts_only, openssh, alone, reference)
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


def check_targets(
    n: int,
    results: dict[str, dict],
    ratios: dict[str, float],
    sftp_share: float | None,
    reference: dict[str, dict] | None,
) -> list[tuple[str, bool | None]]:
    """Each target of the issue as (what was measured against it, met?); None: not measured by this run.
    `reference`: the runs of the same columns at 100k users, beside a larger run's."""
    out: list[tuple[str, bool | None]] = []
    columns = {"sqlite": "SQLite", "postgresql": "PostgreSQL", "sqlite-ephemeral": "local server"}
    walls = ", ".join(f"{columns[k]} {r['wall_seconds']:.1f} s" for k, r in results.items())
    if n == 100_000:
        out.append(
            (
                f"100k end to end <= {TARGET_100K_SECONDS:g} s: {walls}",
                all(r["wall_seconds"] <= TARGET_100K_SECONDS for r in results.values()),
            )
        )
    elif n == 1_000_000:
        out.append(
            (
                f"1M end to end on SQLite <= {TARGET_1M_SQLITE_SECONDS:g} s: {walls}",
                results["sqlite"]["wall_seconds"] <= TARGET_1M_SQLITE_SECONDS,
            )
        )
    for name, ratio in ratios.items():
        # two decimals: 4.98x printed as "5.0x" read as met
        out.append((f">= {TARGET_NAIVE_RATIO:g}x the {name} naive path: {ratio:.2f}x", ratio >= TARGET_NAIVE_RATIO))
    peak = max(r["peak_rss_mb"] for r in results.values())
    out.append((f"peak RSS <= {TARGET_PEAK_RSS_MB:g} MB: {peak:.0f} MB", peak <= TARGET_PEAK_RSS_MB))
    if n > REFERENCE_USERS:
        if not reference:
            out.append(("peak RSS no higher than at 100k: no 100k run beside it", None))
        else:
            ref = max(r["peak_rss_mb"] for r in reference.values())
            each = ", ".join(
                f"{columns[k]} {results[k]['peak_rss_mb']:.0f} against {r['peak_rss_mb']:.0f}"
                for k, r in reference.items()
                if k in results
            )
            out.append(
                (
                    f"peak RSS no higher than at 100k: {peak:.0f} MB against {ref:.0f} MB "
                    f"(the 100k runs just before each: {each})",
                    peak <= ref,
                )
            )
    batches = -(-n // DEFAULT_BATCH_RECORDS)  # the bench leaves USERS_BATCH_RECORDS out of the flow's environment
    runs = {r["task_runs"] for r in results.values()}
    out.append(
        (
            f"task runs grow with batches, not records (at most 4 a batch, plus 10): "
            f"{', '.join(map(str, sorted(runs)))} for {batches} batches of {DEFAULT_BATCH_RECORDS:,} records",
            max(runs) <= 4 * batches + 10,
        )
    )
    if sftp_share is not None:
        out.append(
            (f"SFTP >= {TARGET_SFTP_SHARE:.0%} of OpenSSH's speed: {sftp_share:.0%}", sftp_share >= TARGET_SFTP_SHARE)
        )
    return out


def render(
    n: int,
    results: dict[str, dict],
    naive: dict,
    inserts_only: dict,
    openssh: float | None,
    alone: float,
    reference: dict[str, dict] | None = None,
) -> str:
    lines = [
        f"users-etl on {n:,} users ({results['sqlite']['counts']['invalid']:,} invalid), page size 1000; "
        f"{os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}, {platform.machine()}",
        "",
        "Flow runs start in a fresh Python process (as a worker starts them) against a running Prefect server on",
        "PostgreSQL; the last column has no Prefect API configured: the local Prefect server `make run` starts",
        "(flows/prefect_api.py), launched as the flow process starts.",
        "",
        "| | SQLite | PostgreSQL |"
        + (" SQLite, local Prefect server (`make run`) |" if "sqlite-ephemeral" in results else ""),
        "|---|---:|---:|" + ("---:|" if "sqlite-ephemeral" in results else ""),
    ]
    columns = [k for k in ("sqlite", "postgresql", "sqlite-ephemeral") if k in results]

    def row(label, fn):
        lines.append(f"| {label} | " + " | ".join(fn(results[k]) for k in columns) + " |")

    row("end to end, Prefect start-up included (s)", lambda r: f"{r['wall_seconds']:.1f}")
    for stage in ("extract", "transform", "persist", "deliver"):
        row(
            f"{stage} (s, of which task work)",
            lambda r, s=stage: f"{r['stage_seconds'].get(s, 0):.1f} ({r['stage_work_seconds'].get(s, 0):.1f})",
        )
    row("records/s end to end", lambda r: f"{n / r['wall_seconds']:,.0f}")
    row("time some task was working (s; stages overlap)", lambda r: f"{r['busy_seconds']:.1f}")
    row("orchestration overhead (s): total minus that", lambda r: f"{r['wall_seconds'] - r['busy_seconds']:.1f}")
    row("peak RSS of the flow process (MB)", lambda r: f"{r['peak_rss_mb']:.0f}")
    row("its peak in each quarter of the run (MB)", lambda r: " / ".join(f"{q:.0f}" for q in r["rss_quarters_mb"]))
    if reference:
        lines.append(
            "| the same at 100k users, run just before it (MB) | "
            + " | ".join(f"{reference[k]['peak_rss_mb']:.0f}" if k in reference else "" for k in columns)
            + " |"
        )
    row("CPU seconds of the flow process", lambda r: f"{r['cpu_seconds']:.1f}")
    row("task runs", lambda r: str(r["task_runs"]))
    row("bytes delivered", lambda r: f"{r['counts']['delivered_bytes']:,}")
    ours = n / results["sqlite"]["wall_seconds"]
    naive_rate, light_rate = (r["records"] / r["seconds"] for r in (naive, inserts_only))
    lines += [
        "",
        f"Naive per-record path (the same job one record at a time: a pydantic model per record, ORM lookups and "
        f"inserts one by one, lines written one by one, the files put over SFTP; SQLite) on {naive['records']:,} "
        f"of the same users: {naive['seconds']:.1f} s = {naive_rate:,.0f} records/s; users-etl on SQLite is "
        f"**{ours / naive_rate:.2f}x** faster end to end (Prefect start-up included). Against the lighter naive "
        f"path (inserts only: no lookups, so not re-runnable; no files, no delivery): {light_rate:,.0f} records/s, "
        f"**{ours / light_rate:.2f}x**.",
    ]
    deliver = results["sqlite"]["stage_work_seconds"].get("deliver", 0)
    sftp_share = openssh / alone if openssh is not None and deliver else None
    if sftp_share is not None:
        lines.append(
            f"SFTP, the same files to the same server, each client alone: ours {alone:.2f} s, OpenSSH `sftp` "
            f"{openssh:.2f} s: **{sftp_share:.0%}** of OpenSSH's speed (in the run, sharing the cores "
            f"with persist: {deliver:.2f} s)."
        )
    checks = check_targets(
        n, results, {"same-job": ours / naive_rate, "lighter": ours / light_rate}, sftp_share, reference
    )
    lines += ["", f"Targets: {sum(met is True for _, met in checks)} of {len(checks)} met"]
    lines += [f"- {'met' if met else 'not measured' if met is None else '**MISSED**'}: {what}" for what, met in checks]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
