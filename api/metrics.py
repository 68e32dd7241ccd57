"""Prometheus metrics on a registry of the app's own: HTTP traffic by route template, and pipeline gauges
computed when scraped."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

KNOWN_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
RUN_STATUSES = ("running", "completed", "failed", "crashed")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class HttpMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "sluice_api_requests", "HTTP requests answered", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "sluice_api_request_duration_seconds",
            "Time to answer, by route template",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        method = method if method in KNOWN_METHODS else "OTHER"
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _Snapshot:
    """A one-scrape collector over numbers read from the database just before."""

    def __init__(self, families: list[GaugeMetricFamily]) -> None:
        self.families = families

    def collect(self):
        yield from self.families


def pipeline_exposition(*, rows: dict[str, int], last_run: dict | None) -> bytes:
    tables = GaugeMetricFamily("sluice_table_rows", "Rows per table", labels=["table"])
    for table, count in rows.items():
        tables.add_metric([table], count)
    status = GaugeMetricFamily("sluice_last_run_status", "1 for the last run's status", labels=["status"])
    for name in RUN_STATUSES:
        status.add_metric([name], 1.0 if last_run and last_run["status"] == name else 0.0)
    families = [tables, status]
    if last_run:
        for key, help_text in (
            ("duration_seconds", "Duration of the last finished run"),
            ("started_timestamp_seconds", "When the last run started (unix time)"),
        ):
            if last_run.get(key) is not None:
                families.append(GaugeMetricFamily(f"sluice_last_run_{key}", help_text, value=last_run[key]))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(families))
    return generate_latest(registry)
