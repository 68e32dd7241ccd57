"""Run anomalies: this run's record count, invalid share and duration against the previous runs."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from statistics import mean

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from models.runs import EtlRun
from models.settings import Settings
from tasks import runs


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


def judge_run(
    engine: Engine,
    settings: Settings,
    *,
    flow_name: str,
    run_id: str,
    started: datetime,
    counts: dict[str, int],
    findings: list[str],
    stage_seconds: dict[str, float],
    logger: logging.Logger | logging.LoggerAdapter,
) -> list[str]:
    """The run against the runs before it, plus the stages' own `findings` (a source that changed during the
    walk, deletions withheld); recorded on the run's row; with ANOMALY_FAIL, an anomalous run fails here."""
    anomalies = find_anomalies(
        engine,
        flow_name=flow_name,
        run_id=run_id,
        extracted=counts["extracted"],
        invalid=counts["invalid"],
        duration=(datetime.now(UTC) - started).total_seconds(),
        min_runs=settings.anomaly_min_runs,
        count_tolerance=settings.anomaly_count_tolerance,
        invalid_rate_tolerance=settings.anomaly_invalid_rate_tolerance,
        duration_factor=settings.anomaly_duration_factor,
    )
    anomalies += findings
    if anomalies:
        logger.warning("anomalous run: %s", "; ".join(anomalies))
        runs.update_run(engine, run_id=run_id, anomalies="; ".join(anomalies))
        if settings.anomaly_fail:
            runs.update_run(engine, run_id=run_id, failed_stage="anomaly-check", stage_seconds=stage_seconds, **counts)
            raise AnomalyError("anomalous run (ANOMALY_FAIL is set): " + "; ".join(anomalies))
    return anomalies
