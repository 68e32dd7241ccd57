"""One users-etl run in a fresh process (Prefect start-up included); prints its figures as JSON."""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from datetime import UTC, datetime


def main() -> None:
    t0 = float(os.environ["BENCH_T0"])
    started_at = datetime.fromtimestamp(t0, UTC)
    from prefect import get_client

    from flows.users_etl import users_etl

    summary = users_etl(api_base=sys.argv[1], page_size=int(os.environ.get("BENCH_PAGE_SIZE", "1000")),
                        deliver_files=os.environ.get("BENCH_DELIVER", "1") == "1")
    wall = time.time() - t0
    with get_client(sync_client=True) as client:
        resp = client._client.post("/task_runs/count",
                              json={"task_runs": {"start_time": {"after_": started_at.isoformat()}}})
        task_runs = resp.json()
    print(json.dumps({
        "wall_seconds": wall,
        "stage_seconds": summary["stage_seconds"],
        "stage_work_seconds": summary["stage_work_seconds"],
        "counts": summary["counts"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "task_runs": task_runs,
        "delivered": summary["delivered"],
        "files": summary["files"],
    }))


if __name__ == "__main__":
    main()
