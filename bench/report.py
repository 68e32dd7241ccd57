"""`make bench`'s report: the table of what a run measured, and each of issue 40's targets (and the host checks,
bench/host_checks.py) stated as met or missed."""

from __future__ import annotations

import os
import platform

from bench import host_checks
from models.settings import DEFAULT_BATCH_RECORDS

# issue 40's targets on these 2-core machines: ratios inside one invocation, as absolute times move with the hour
TARGET_RATIOS = {"same-job": 12.0, "lighter": 6.0}  # records/s against each naive path's
TARGET_OVERLAP_CPU = 1.6  # CPU seconds per wall second between the first batch's work and the last's
TARGET_PEAK_RSS_MB = 350.0
TARGET_LARGER_RSS = 1.10  # a larger run's peak against the 100k runs beside it (the page cache moves it)
TARGET_SCALING = 0.9  # records/s of a larger run against the 100k run beside it
TARGET_ORCHESTRATION_SECONDS = 2.0
TARGET_RERUN_SHARE = 0.6  # the second run on unchanged data (the nightly case) against the first
TARGET_SFTP_SHARE = 0.5
# a larger run's figures are held to this size's, measured in the same invocation (the machine's speed and page
# cache move the same run's figures within an hour, so figures recorded earlier are no yardstick)
REFERENCE_USERS = 100_000
COLUMNS = {"sqlite": "SQLite", "postgresql": "PostgreSQL", "sqlite-ephemeral": "local server"}
DEPLOYED = ("sqlite", "postgresql")  # the columns against a running Prefect server, as a worker's runs are


def overlap_cpu(result: dict) -> float:
    """CPU seconds per wall second between the first task's work and the last's."""
    window = result["last_work_seconds"] - result["first_work_seconds"]
    return result["overlap_cpu_seconds"] / window if window > 0 else 0.0


def orchestration(result: dict) -> float:
    return result["wall_seconds"] - result["busy_seconds"]


def _each(results: dict[str, dict], fmt) -> str:
    return ", ".join(f"{COLUMNS[k]} {fmt(r)}" for k, r in results.items())


def check_targets(
    n: int,
    results: dict[str, dict],
    ratios: dict[str, float],
    sftp_share: float | None,
    reference: dict[str, dict] | None,
    host: dict | None = None,
    reruns: dict[str, dict] | None = None,
) -> list[tuple[str, bool | None]]:
    """Each target of the issue as (what was measured against it, met?); None: not measured by this run.
    `reference`: the runs of the same columns at 100k users, beside a larger run's; `host`: the host checks'
    figures (bench/host_checks.py); `reruns`: each column's second run on the same, unchanged source."""
    out: list[tuple[str, bool | None]] = []
    deployed = {k: r for k, r in results.items() if k in DEPLOYED}
    for name, ratio in ratios.items():
        target = TARGET_RATIOS[name]
        # two decimals: 5.98x printed as "6.0x" read as met
        out.append((f">= {target:g}x the {name} naive path: {ratio:.2f}x", ratio >= target))
    out.append(
        (
            f"CPU >= {TARGET_OVERLAP_CPU:g}x wall while the stages overlap: {_each(deployed, lambda r: f'{overlap_cpu(r):.2f}x')}",
            all(overlap_cpu(r) >= TARGET_OVERLAP_CPU for r in deployed.values()),
        )
    )
    out.append(
        (
            f"orchestration overhead <= {TARGET_ORCHESTRATION_SECONDS:g} s: {_each(deployed, lambda r: f'{orchestration(r):.1f} s')}",
            all(orchestration(r) <= TARGET_ORCHESTRATION_SECONDS for r in deployed.values()),
        )
    )
    if reruns:
        shares = {k: reruns[k]["wall_seconds"] / results[k]["wall_seconds"] for k in reruns if k in results}
        out.append(
            (
                f"second run on unchanged data <= {TARGET_RERUN_SHARE:g}x the first: "
                + ", ".join(f"{COLUMNS[k]} {v:.2f}x" for k, v in shares.items()),
                all(v <= TARGET_RERUN_SHARE for v in shares.values()),
            )
        )
    peak = max(r["peak_rss_mb"] for r in results.values())
    out.append((f"peak RSS <= {TARGET_PEAK_RSS_MB:g} MB: {peak:.0f} MB", peak <= TARGET_PEAK_RSS_MB))
    if n > REFERENCE_USERS:
        out += _against_reference(n, results, reference)
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
    if host is not None:
        out += host_checks.check(host)
    return out


def _against_reference(n: int, results: dict[str, dict], reference: dict[str, dict] | None) -> list:
    """A larger run's peak RSS and records/s against the 100k runs of the same columns beside it."""
    rss = f"peak RSS within {TARGET_LARGER_RSS - 1:.0%} of the 100k runs"
    scaling = f"records/s >= {TARGET_SCALING:g}x the 100k runs' (SQLite and PostgreSQL)"
    if not reference:
        return [(f"{rss}: no 100k run beside it", None), (f"{scaling}: no 100k run beside it", None)]
    peak, ref = (max(r["peak_rss_mb"] for r in rs.values()) for rs in (results, reference))
    each = ", ".join(
        f"{COLUMNS[k]} {results[k]['peak_rss_mb']:.0f} against {r['peak_rss_mb']:.0f}"
        for k, r in reference.items()
        if k in results
    )
    rates = {
        k: (n / results[k]["wall_seconds"]) / (REFERENCE_USERS / reference[k]["wall_seconds"])
        for k in DEPLOYED
        if k in results and k in reference
    }
    return [
        (
            f"{rss}: {peak:.0f} MB against {ref:.0f} MB (the 100k runs just before each: {each})",
            peak <= ref * TARGET_LARGER_RSS,
        ),
        (
            f"{scaling}: " + ", ".join(f"{COLUMNS[k]} {v:.2f}x" for k, v in rates.items()),
            bool(rates) and all(v >= TARGET_SCALING for v in rates.values()),
        ),
    ]


def render(
    n: int,
    results: dict[str, dict],
    naive: dict,
    inserts_only: dict,
    openssh: float | None,
    alone: float,
    reference: dict[str, dict] | None = None,
    host: dict | None = None,
    reruns: dict[str, dict] | None = None,
) -> str:
    lines = [
        f"users-etl on {n:,} users ({results['sqlite']['counts']['invalid']:,} invalid), page size 1000; "
        f"{os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}, {platform.machine()}",
        "",
        "Flow runs start in a fresh Python process (as a worker starts them) against a running Prefect server on",
        "PostgreSQL; the last column has no Prefect API configured: the local Prefect server `make run` starts",
        "(dev/prefect_server.py), launched as the flow process starts.",
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
    row("orchestration overhead (s): total minus that", lambda r: f"{orchestration(r):.1f}")
    row("of which the process's start: Python and imports (s)", lambda r: f"{r.get('imported_seconds', 0):.1f}")
    row("CPU seconds per second from the first batch to the last", lambda r: f"{overlap_cpu(r):.2f}")
    row("peak RSS of the flow process (MB)", lambda r: f"{r['peak_rss_mb']:.0f}")
    row("its peak in each quarter of the run (MB)", lambda r: " / ".join(f"{q:.0f}" for q in r["rss_quarters_mb"]))
    if reference:
        lines.append(
            "| the same at 100k users, run just before it (MB) | "
            + " | ".join(f"{reference[k]['peak_rss_mb']:.0f}" if k in reference else "" for k in columns)
            + " |"
        )
        lines.append(
            "| records/s of that 100k run | "
            + " | ".join(
                f"{REFERENCE_USERS / reference[k]['wall_seconds']:,.0f}" if k in reference else "" for k in columns
            )
            + " |"
        )
    if reruns:
        lines.append(
            "| second run, same unchanged source (s; share of the first) | "
            + " | ".join(
                f"{reruns[k]['wall_seconds']:.1f} ({reruns[k]['wall_seconds'] / results[k]['wall_seconds']:.2f}x)"
                if k in reruns
                else ""
                for k in columns
            )
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
        n, results, {"same-job": ours / naive_rate, "lighter": ours / light_rate}, sftp_share, reference, host, reruns
    )
    lines += ["", f"Targets: {sum(met is True for _, met in checks)} of {len(checks)} met"]
    lines += [f"- {'met' if met else 'not measured' if met is None else '**MISSED**'}: {what}" for what, met in checks]
    return "\n".join(lines) + "\n"
