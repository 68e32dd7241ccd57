"""One users-etl run in a fresh process (Prefect start-up included); prints its figures as JSON.

Usage: BENCH_T0=<epoch seconds> python -m bench.run_flow API_URL LOG_DIR (the run's settings from the
environment, as bench/pipeline.py sets them; LOG_DIR gets the local Prefect server's log when one starts)."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
import threading
import time
from datetime import UTC, datetime

PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


class RssTrace:
    """The process's resident memory sampled every 0.2 s, so the table can show whether it levels off
    (streaming) or keeps climbing with the records (holding them); its CPU seconds beside each sample, so the
    stages' overlap can be told from the CPU they used between the first batch and the last."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float, float]] = []  # (time, RSS in MB, CPU seconds so far)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-trace", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            with open("/proc/self/statm") as f:
                rss = int(f.read().split()[1]) * PAGE_KIB / 1024
            times = os.times()
            self.samples.append((time.time(), rss, times.user + times.system))

    def cpu_between(self, start: float, end: float) -> float:
        """CPU seconds the process used between two instants (read off the nearest samples)."""
        inside = [cpu for t, _, cpu in self.samples if start <= t <= end]
        return inside[-1] - inside[0] if len(inside) > 1 else 0.0

    def quarters(self) -> list[float]:
        """Peak RSS (MB) in each quarter of the run's sampled time."""
        self._stop.set()
        self._thread.join()
        t0, t1 = self.samples[0][0], self.samples[-1][0]
        peaks = [0.0] * 4
        for t, mb, _ in self.samples:
            q = min(3, int(4 * (t - t0) / ((t1 - t0) or 1)))
            peaks[q] = max(peaks[q], mb)
        return peaks


def covered_seconds(spans: list[list[float]]) -> float:
    """Length of the union of [start, end] intervals: time in which at least one task was working."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(spans):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def main() -> None:
    from flows.process import tune

    tune()  # a flow process's entry point, as `make run` and a worker's flow run
    t0 = float(os.environ["BENCH_T0"])
    started_at = datetime.fromtimestamp(t0, UTC)
    trace = RssTrace()
    from dev.prefect_server import local_prefect_api

    # no PREFECT_API_URL: the local server `make run` starts (dev/run.py), started the same way
    with local_prefect_api(sys.argv[2]) as api:  # its log in the run's data folder
        from prefect import get_client

        from flows.users_etl import users_etl

        imported = time.time() - t0  # the process's start: Python, Prefect and the flow's modules imported
        api.wait_ready()
        summary = asyncio.run(
            users_etl(
                api_base=sys.argv[1],
                page_size=int(os.environ.get("BENCH_PAGE_SIZE", "1000")),
                batch_records=int(os.environ.get("BENCH_BATCH_RECORDS", "0")) or None,
                deliver_files=os.environ.get("BENCH_DELIVER", "1") == "1",
                extract_first=os.environ.get("BENCH_EXTRACT_FIRST", "0") == "1",
            )
        )
        wall = time.time() - t0
        with get_client(sync_client=True) as client:
            resp = client._client.post(
                "/task_runs/count", json={"task_runs": {"start_time": {"after_": started_at.isoformat()}}}
            )
            task_runs = resp.json()
    quarters = trace.quarters()
    first = min(start for start, _ in summary["work_spans"])
    last = max(end for _, end in summary["work_spans"])
    if os.environ.get("BENCH_RSS_TRACE"):  # the samples themselves, (seconds since the clock started, MB)
        with open(os.environ["BENCH_RSS_TRACE"], "w") as f:
            json.dump([(round(t - t0, 2), round(mb, 1)) for t, mb, _ in trace.samples], f)
    print(
        json.dumps(
            {
                "wall_seconds": wall,
                "stage_seconds": summary["stage_seconds"],
                "stage_work_seconds": summary["stage_work_seconds"],
                "busy_seconds": covered_seconds(summary["work_spans"]),
                "counts": summary["counts"],
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "rss_quarters_mb": quarters,
                "cpu_seconds": sum(resource.getrusage(resource.RUSAGE_SELF)[:2]),
                "task_runs": task_runs,
                "imported_seconds": imported,
                # the stages' overlap: from the first task's work to the last's
                "first_work_seconds": first - t0,
                "last_work_seconds": last - t0,
                "overlap_cpu_seconds": trace.cpu_between(first, last),
                "delivered": summary["delivered"],
                "files": summary["files"],
            }
        )
    )


if __name__ == "__main__":
    main()
