"""`make bench-api`'s console pages: each page a person opens, reached as their clicks would reach it (ids, and
the users' next-page cursor, read from the JSON API), each held to the API's own p99 target."""

from __future__ import annotations

from urllib.parse import urlencode

import httpx

TARGET_P99_MS = 50.0
STALL_LIMIT_S = 1.0  # /health answering later than this after a page's load: the load wedged the worker
PAGE_SIZE = 20
FILTERS = {"department": "Engineering", "page_size": PAGE_SIZE}


def _json(base: str, path: str, **params) -> dict:
    response = httpx.get(f"{base}{path}", params=params, timeout=60)
    response.raise_for_status()
    return response.json()


def console_scenarios(base: str) -> list[tuple[str, str]]:
    """(name, URL) of every console page worth timing, over the data bench/api_data.py fills."""
    run_id = _json(base, "/etl_runs", page_size=2)["data"][1]["id"]  # a generated run: a newer one exists
    cursor = _json(base, "/users", **FILTERS)["next_cursor"]
    resolved = _json(base, "/dlq", status="resolved", page_size=100)["data"]
    # a stored user with dead-letter entries behind it (its record failed, then arrived valid)
    user_id = next((e["user_id"] for e in resolved if e["resolution"] == "valid" and e["user_id"]), None)
    if user_id is None:  # a database kept (BENCH_API_KEEP) from before the runs and the DLQ were filled
        raise RuntimeError("no resolved DLQ entry of a stored user: delete var/bench/api/ to fill the data again")
    entry_id = _json(base, "/dlq", page_size=1)["data"][0]["id"]
    return [
        (name, f"{base}{path}")
        for name, path in [
            ("console: runs", "/"),
            ("console: run", f"/console/runs/{run_id}"),
            ("console: users", "/console/users"),
            ("console: users filtered", f"/console/users?{urlencode(FILTERS)}"),
            ("console: users next page", f"/console/users?{urlencode({**FILTERS, 'cursor': cursor})}"),
            ("console: user", f"/console/users/{user_id}"),
            ("console: DLQ", "/console/dlq"),
            ("console: DLQ by rule", "/console/dlq?reason=email_invalid"),
            ("console: DLQ entry", f"/console/dlq/{entry_id}"),
            ("console: health", "/console/health"),
        ]
    ]


def page_check(name: str, r: dict) -> tuple[str, bool]:
    """(what was held, met): p99 within the target, every request answered 200, the worker still free after."""
    found = [f"{r['p99']:.1f} ms"]
    if r["errors"]:
        found.append(f"{r['errors']} non-2xx")
    if r["socket_errors"]:
        found.append(f"socket errors {r['socket_errors']}")
    if not r["requests"]:
        found.append("no request answered")
    if r["stall"] > STALL_LIMIT_S:
        found.append(f"the worker answered nothing for {r['stall']:.0f} s after the load")
    return f"{name} p99 <= {TARGET_P99_MS:.0f} ms ({', '.join(found)})", r["p99"] <= TARGET_P99_MS and len(found) == 1
