"""Run anomalies: this run's record count, invalid share and duration against the previous runs."""

from __future__ import annotations

from statistics import mean

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from models.runs import EtlRun


class AnomalyError(RuntimeError):
    """The run deviates beyond its bounds and ANOMALY_FAIL is set."""


def find_anomalies(
    engine: Engine,
    *,
    flow_name: str,
    run_id: str,
    extracted: int,
    invalid: int,
    duration: float,
    min_runs: int,
    count_tolerance: float,
    invalid_rate_tolerance: float,
    duration_factor: float,
    history: int = 10,
) -> list[str]:
    """Findings in words; none until `min_runs` completed runs exist to compare with."""
    with Session(engine) as session:
        past = session.exec(
            select(EtlRun)
            .where(EtlRun.flow_name == flow_name, EtlRun.status == "completed", EtlRun.id != run_id)
            .order_by(col(EtlRun.started_at).desc())
            .limit(history)
        ).all()
    if len(past) < min_runs:
        return []
    found = []
    mean_count = mean(r.extracted for r in past)
    if mean_count and abs(extracted - mean_count) / mean_count > count_tolerance:
        found.append(
            f"record count {extracted} is {abs(extracted - mean_count) / mean_count:.0%} "
            f"{'above' if extracted > mean_count else 'below'} the mean of the last {len(past)} runs "
            f"({mean_count:.0f}; tolerance {count_tolerance:.0%})"
        )
    rate = invalid / extracted if extracted else 0.0
    mean_rate = mean((r.invalid / r.extracted) if r.extracted else 0.0 for r in past)
    if rate - mean_rate > invalid_rate_tolerance:
        found.append(
            f"invalid share {rate:.1%} against a mean of {mean_rate:.1%} (tolerance +{invalid_rate_tolerance:.0%})"
        )
    durations = [r.duration_seconds for r in past if r.duration_seconds]
    if durations and duration > duration_factor * mean(durations):
        found.append(f"duration {duration:.1f}s is over {duration_factor:g}x the mean of {mean(durations):.1f}s")
    return found
