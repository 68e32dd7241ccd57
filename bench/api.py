"""`make bench-api`: the REST API and the web console's pages over 1,000,000 users in a fresh SQLite database,
or a fresh PostgreSQL database with BENCH_API_DATABASE=postgresql.

Fills the database with generated users, runs and dead-letter entries (bench/api_data.py, loaded by
bench/api_load.py), starts the API under uvicorn (one worker) on a free loopback port in a subprocess, and loads it
from loopback with wrk (Debian's `wrk`, no Lua) or, when wrk is missing, a Python httpx client. With two or more
cores the server is pinned to core 0 and the load generator to core 1. Every scenario must answer 200 before it
is loaded. Prints a markdown table (also written to var/bench/api.md, or api-postgresql.md) and the targets:
p99 <= 50 ms for the first page, every search and every console page (bench/api_pages.py), and 1,000 req/s for
the first page and every search.

Environment: BENCH_API_USERS (default 1,000,000), BENCH_API_SECONDS per scenario (10), BENCH_API_CONNECTIONS
(16), BENCH_API_DATABASE (sqlite or postgresql), BENCH_API_PG (the PostgreSQL server's URL, of a database
to connect to while making the bench's own: postgresql+psycopg://postgres@127.0.0.1:5432/test), BENCH_API_KEEP=1
keeps the SQLite database under var/bench/api/ (and reuses it when it is there; a PostgreSQL one is always
dropped)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

from bench.api_data import DLQ_SHARE, RUNS
from bench.api_limiter import LimiterCost, limiter_cost
from bench.api_load import bench_database
from bench.api_pages import TARGET_P99_MS, console_scenarios, page_check

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "var" / "bench"
USERS = int(os.environ.get("BENCH_API_USERS", "1000000"))
SECONDS = float(os.environ.get("BENCH_API_SECONDS", "10"))
CONNECTIONS = int(os.environ.get("BENCH_API_CONNECTIONS", "16"))
DATABASE = os.environ.get("BENCH_API_DATABASE", "sqlite")
SEARCH_TARGET_RPS = 1000.0
DATABASE_NAMES = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}
WARMUP_SECONDS = 2.0
STALL_LIMIT = 300.0
# one loopback client is the whole load: reads are counted per client as ever (the limiter's cost is measured)
# against a limit no scenario reaches
UNREACHED_LIMIT = "1000000000/minute"
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


def start_api(url: str, port: int, *, read_limit: str = UNREACHED_LIMIT) -> subprocess.Popen:
    """The API over `url` (its rate limiter counting every read, at a limit the load never reaches, unless
    `read_limit` says otherwise: "" turns it off)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "API_", "RATE_LIMIT_"))}
    env.update(DATABASE_URL=url, PYTHONPATH=str(ROOT), LOG_LEVEL="WARNING", RATE_LIMIT_READ=read_limit)
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


def stall(base: str) -> float:
    """Seconds the server takes to answer /health once a load ends: next to nothing, unless the load wedged
    it (wrk leaves the requests it never got an answer to out of its counts and percentiles)."""
    started = time.perf_counter()
    with contextlib.suppress(httpx.TimeoutException):
        httpx.get(f"{base}/health", timeout=STALL_LIMIT)
    return time.perf_counter() - started


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
                try:
                    errors += (await client.get(url)).status_code >= 300
                except httpx.TimeoutException:
                    errors += 1
                latencies.append((time.perf_counter() - t0) * 1000)

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
        ("search", f"{base}/users?search=ava&page_size={PAGE_SIZE}"),
        ("search, no match", f"{base}/users?search=zzzz&page_size={PAGE_SIZE}"),
        (
            "filter + search",
            f"{base}/users?department=Engineering&gender=female&min_age=30&search=ava&page_size={PAGE_SIZE}",
        ),
        *console_scenarios(base),
    ]


def answers_200(name: str, url: str) -> None:
    status = httpx.get(url, timeout=60).status_code
    if status != 200:
        raise RuntimeError(f"{name}: GET {url} answered {status}, not 200")


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    keep = os.environ.get("BENCH_API_KEEP") == "1"
    with bench_database(DATABASE, USERS, OUT / "api" if keep else None) as database:
        if database.fill_seconds == database.fill_seconds:  # (not nan: filled now)
            print(f"  {database.fill_seconds:.1f} s ({USERS / database.fill_seconds:,.0f} rows/s)", flush=True)
        results = measure(database.url)
        cost = limiter_cost(database.url, start=start_api, port=free_port, load=load, seconds=SECONDS)
    return report(results, database.kind, database.fill_seconds, cost)


def search_check(name: str, r: dict) -> tuple[str, bool]:
    """(what was held, met): a search as quick as the first page must be."""
    met = r["rps"] >= SEARCH_TARGET_RPS and r["p99"] <= TARGET_P99_MS and r["errors"] == 0
    return (
        f"{name} >= {SEARCH_TARGET_RPS:,.0f} req/s, p99 <= {TARGET_P99_MS:.0f} ms ({r['rps']:,.0f}, {r['p99']:.1f} ms)",
        met,
    )


def measure(url: str) -> list[tuple[str, dict]]:
    """Each scenario's load against one uvicorn worker over the database at `url`."""
    port = free_port()
    server = start_api(url, port)
    results = []
    try:
        base = f"http://127.0.0.1:{port}"
        for name, target in scenarios(base):
            answers_200(name, target)
            load(target, WARMUP_SECONDS)
            stall(base)
            result = load(target, SECONDS)
            result["stall"] = stall(base)
            results.append((name, result))
            print(
                f"  {name:<24} {result['rps']:>8,.0f} req/s  p50 {result['p50']:6.2f} ms  "
                f"p99 {result['p99']:6.2f} ms  non-2xx {result['errors']}  stall {result['stall']:.1f} s "
                f"{result['socket_errors']}",
                flush=True,
            )
    finally:
        server.terminate()
        server.wait(timeout=30)
    return results


def report(results: list[tuple[str, dict]], kind: str, fill_seconds: float, cost: LimiterCost) -> int:
    """The table and the targets, printed and written to var/bench/api.md (api-postgresql.md); 1 if one is
    missed."""
    tool = "wrk" if shutil.which("wrk") else "python httpx client"
    first, cursor = results[0][1], results[2][1]
    checks = [
        (f"first page >= 1,000 req/s ({first['rps']:,.0f})", first["rps"] >= 1000),
        (f"first page p99 <= {TARGET_P99_MS:.0f} ms ({first['p99']:.1f} ms)", first["p99"] <= TARGET_P99_MS),
        (
            f"deep cursor page within 1.5x of the first page ({first['rps'] / cursor['rps']:.2f}x req/s, "
            f"{cursor['p50'] / first['p50']:.2f}x p50)",
            first["rps"] / cursor["rps"] <= 1.5 and cursor["p50"] <= 1.5 * first["p50"],
        ),
        *(search_check(name, r) for name, r in results if "search" in name),
        *(page_check(name, r) for name, r in results if name.startswith("console: ")),
        cost.check(),
    ]
    lines = [
        f"API and console over {USERS:,} users, {RUNS} runs and {round(USERS * DLQ_SHARE):,} DLQ entries "
        f"({DATABASE_NAMES[kind]}, fill {fill_seconds:.0f} s); uvicorn, 1 worker; {tool}, "
        f"{CONNECTIONS} connections, {SECONDS:.0f} s per scenario after {WARMUP_SECONDS:.0f} s warm-up; "
        f"{os.cpu_count()} cores, Python {sys.version.split()[0]}",
        "",
        "| scenario | req/s | p50 ms | p90 ms | p99 ms | requests | non-2xx | stall s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        *(
            f"| {name} | {r['rps']:,.0f} | {r['p50']:.2f} | {r['p90']:.2f} | {r['p99']:.2f} | {r['requests']:,} | "
            f"{r['errors']} | {r['stall']:.2f} |"
            for name, r in results
        ),
        "",
        "stall: how long /health took to answer once the scenario's load ended (a wedged worker shows here).",
        "",
        cost.line(),
        "",
        *(f"- {'met' if ok else 'NOT met'}: {text}" for text, ok in checks),
    ]
    text = "\n".join(lines)
    (OUT / ("api.md" if kind == "sqlite" else f"api-{kind}.md")).write_text(text + "\n")
    print()
    print(text)
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
