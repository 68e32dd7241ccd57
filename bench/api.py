"""`make bench-api`: the REST API over 1,000,000 users in a fresh SQLite database.

Fills the database with generated users (bench/api_data.py), starts the API under uvicorn (one worker) on a
free loopback port in a subprocess, and loads it from loopback with wrk (Debian's `wrk`, no Lua) or, when wrk
is missing, a Python httpx client. With two or more cores the server is pinned to core 0 and the load
generator to core 1. Prints a markdown table (also written to var/bench/api.md).

Environment: BENCH_API_USERS (default 1,000,000), BENCH_API_SECONDS per scenario (10), BENCH_API_CONNECTIONS
(16), BENCH_API_KEEP=1 keeps the database under var/bench/api/ (and reuses it when it is there)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.api_data import fill_database

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "var" / "bench"
USERS = int(os.environ.get("BENCH_API_USERS", "1000000"))
SECONDS = float(os.environ.get("BENCH_API_SECONDS", "10"))
CONNECTIONS = int(os.environ.get("BENCH_API_CONNECTIONS", "16"))
WARMUP_SECONDS = 2.0
PAGE_SIZE = 20
DEEP_PAGE = 5_000


# ---------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pinned(cmd: list[str], core: int) -> list[str]:
    if shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
        return ["taskset", "-c", str(core), *cmd]
    return cmd


def start_api(url: str, port: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "API_"))}
    env.update(DATABASE_URL=url, PYTHONPATH=str(ROOT), LOG_LEVEL="WARNING")
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "api.main:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    proc = subprocess.Popen(pinned(cmd, 0), cwd=ROOT, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the API exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.terminate()
    raise RuntimeError("the API did not answer /health within 60 s")


# ---------------------------------------------------------------- load


UNIT = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * UNIT[unit]


def run_wrk(url: str, seconds: float) -> dict:
    cmd = pinned(["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{max(1, round(seconds))}s", "--latency", url], 1)
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    pct = dict(re.findall(r"^\s+(50|90|99)%\s+(\S+)", out, re.M))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50": _ms(pct["50"]),
        "p90": _ms(pct["90"]),
        "p99": _ms(pct["99"]),
        "requests": int(re.search(r"(\d+) requests in", out).group(1)),
        "errors": int(bad.group(1)) if bad else 0,
        "socket_errors": socket_errors.group(1) if socket_errors else "",
    }


async def _python_load(url: str, seconds: float) -> dict:
    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:

        async def worker():
            nonlocal errors
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                r = await client.get(url)
                latencies.append((time.perf_counter() - t0) * 1000)
                errors += r.status_code >= 300

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONNECTIONS)))
        elapsed = time.perf_counter() - started
    q = statistics.quantiles(latencies, n=100)
    return {
        "rps": len(latencies) / elapsed,
        "p50": q[49],
        "p90": q[89],
        "p99": q[98],
        "requests": len(latencies),
        "errors": errors,
        "socket_errors": "",
    }


def load(url: str, seconds: float) -> dict:
    if shutil.which("wrk"):
        return run_wrk(url, seconds)
    return asyncio.run(_python_load(url, seconds))


# ---------------------------------------------------------------- main


def scenarios(base: str) -> list[tuple[str, str]]:
    deep = min(DEEP_PAGE, max(2, USERS // PAGE_SIZE // 2))  # page 5,000, or halfway through a smaller table
    before_deep = httpx.get(f"{base}/users", params={"page": deep - 1, "page_size": PAGE_SIZE}, timeout=60).json()
    cursor = before_deep["next_cursor"]
    deep_by_offset = httpx.get(f"{base}/users", params={"page": deep, "page_size": PAGE_SIZE}).json()["data"]
    deep_by_cursor = httpx.get(f"{base}/users", params={"cursor": cursor, "page_size": PAGE_SIZE}).json()["data"]
    assert [u["id"] for u in deep_by_offset] == [u["id"] for u in deep_by_cursor], "cursor and offset disagree"
    return [
        ("first page", f"{base}/users?page_size={PAGE_SIZE}"),
        (f"page {deep:,} by offset", f"{base}/users?page={deep}&page_size={PAGE_SIZE}"),
        (f"page {deep:,} by cursor", f"{base}/users?cursor={cursor}&page_size={PAGE_SIZE}"),
        (
            "filter + search",
            f"{base}/users?department=Engineering&gender=female&min_age=30&search=ava&page_size={PAGE_SIZE}",
        ),
    ]


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    keep = os.environ.get("BENCH_API_KEEP") == "1"
    workdir = OUT / "api" if keep else Path(tempfile.mkdtemp(prefix="sluice-bench-api-"))
    workdir.mkdir(parents=True, exist_ok=True)
    db = workdir / f"bench-{USERS}.db"
    url = f"sqlite:///{db}"
    if keep and db.exists():
        fill_seconds = float("nan")
        print(f"reusing {db}", flush=True)
    else:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        print(f"filling {USERS:,} users into {db} ...", flush=True)
        fill_seconds = fill_database(url, USERS)
        print(f"  {fill_seconds:.1f} s ({USERS / fill_seconds:,.0f} rows/s)", flush=True)

    port = free_port()
    server = start_api(url, port)
    results = []
    try:
        base = f"http://127.0.0.1:{port}"
        tool = "wrk" if shutil.which("wrk") else "python httpx client"
        for name, target in scenarios(base):
            load(target, WARMUP_SECONDS)
            result = load(target, SECONDS)
            results.append((name, result))
            print(
                f"  {name:<24} {result['rps']:>8,.0f} req/s  p50 {result['p50']:6.2f} ms  "
                f"p99 {result['p99']:6.2f} ms  non-2xx {result['errors']}",
                flush=True,
            )
    finally:
        server.terminate()
        server.wait(timeout=30)
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)

    first, cursor = results[0][1], results[2][1]
    checks = [
        (f"first page >= 1,000 req/s ({first['rps']:,.0f})", first["rps"] >= 1000),
        (f"first page p99 <= 50 ms ({first['p99']:.1f} ms)", first["p99"] <= 50),
        (
            f"deep cursor page within 1.5x of the first page ({first['rps'] / cursor['rps']:.2f}x req/s, "
            f"{cursor['p50'] / first['p50']:.2f}x p50)",
            first["rps"] / cursor["rps"] <= 1.5 and cursor["p50"] <= 1.5 * first["p50"],
        ),
    ]
    lines = [
        f"API over {USERS:,} users (SQLite, fill {fill_seconds:.0f} s); uvicorn, 1 worker; {tool}, "
        f"{CONNECTIONS} connections, {SECONDS:.0f} s per scenario after {WARMUP_SECONDS:.0f} s warm-up; "
        f"{os.cpu_count()} cores, Python {sys.version.split()[0]}",
        "",
        "| scenario | req/s | p50 ms | p90 ms | p99 ms | requests | non-2xx |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        *(
            f"| {name} | {r['rps']:,.0f} | {r['p50']:.2f} | {r['p90']:.2f} | {r['p99']:.2f} | {r['requests']:,} | "
            f"{r['errors']} |"
            for name, r in results
        ),
        "",
        *(f"- {'met' if ok else 'NOT met'}: {text}" for text, ok in checks),
    ]
    report = "\n".join(lines)
    (OUT / "api.md").write_text(report + "\n")
    print()
    print(report)
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
