"""The run's Prefect artifacts: a counts table and the DLQ reasons (never record contents)."""

from __future__ import annotations

from prefect.artifacts import create_markdown_artifact, create_table_artifact


def publish_run_artifacts(summary: dict) -> None:
    counts = summary["counts"]
    rows = [{"stage": stage, "seconds": seconds} for stage, seconds in summary["stage_seconds"].items()]
    create_table_artifact(  # type: ignore[call-arg]
        key="users-etl-stages",
        table=rows,
        description=f"users-etl run {summary['run_id']}: seconds per stage",
        _sync=True,  # (Prefect's sync/async dual: its type signature lacks it)
    )
    lines = [
        f"# users-etl run `{summary['run_id']}`: {summary['status']}",
        "",
        "| extracted | valid | invalid | inserted | updated | unchanged | invalidated | deleted | restored "
        "| raw rows added | DLQ opened | DLQ resolved |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        "| {extracted} | {valid} | {invalid} | {inserted} | {updated} | {unchanged} | {invalidated} | {deleted} "
        "| {restored} | {raw_inserted} | {dlq_opened} | {dlq_resolved} |".format(**counts),
        "",
        "## Dead-letter reasons",
        "",
    ]
    reasons = summary.get("dlq_reasons") or {}
    if reasons:
        lines += ["| rule | records |", "|---|---:|"] + [f"| `{r}` | {n} |" for r, n in sorted(reasons.items())]
    else:
        lines.append("No invalid records.")
    for title, key in (("Schema drift", "schema_drift"), ("Anomalies", "anomalies")):
        if summary.get(key):
            lines += ["", f"## {title}", ""] + [f"- {item}" for item in summary[key]]
    lines += ["", "## Files", ""] + [f"- {kind}: `{path}`" for kind, path in summary["files"].items()]
    delivered = summary.get("delivered") or []
    lines += ["", "## Delivered", ""] + (
        [f"- `{d['remote_path']}` ({d['bytes']} bytes)" for d in delivered]
        or ["Nothing delivered (SFTP not configured)."]
    )
    create_markdown_artifact(  # type: ignore[call-arg]
        key="users-etl-summary", markdown="\n".join(lines), description="counts, DLQ reasons, files", _sync=True
    )
