"""The sharded column's S3 peer: moto's standalone server on a loopback port with one empty bucket, so the bench
can stage a sharded run in object storage (STAGING_URL=s3://...) without an account; started and stopped here,
since `bench/` never imports `tests/`."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

STARTUP_SECONDS = 30
REGION = "us-east-1"  # where a bucket is made without a location constraint
# moto accepts any key when it does not check signatures; boto3 and s3fs still need one to sign with
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "sluice-bench",
    "AWS_SECRET_ACCESS_KEY": "sluice-bench-secret",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_EC2_METADATA_DISABLED": "true",
}


def moto_server_path() -> str | None:
    """moto_server beside this Python (the venv's), else on PATH."""
    beside = Path(sys.executable).parent / "moto_server"
    return str(beside) if beside.exists() else shutil.which("moto_server")


@contextmanager
def moto_staging(log: Path, prefix: str = "bench") -> Iterator[dict[str, str]]:
    """moto_server on a free loopback port with a new bucket; yields the environment a worker stages into it
    with (STAGING_URL=s3://<bucket>/<prefix>, STAGING_ENDPOINT_URL, dummy AWS credentials). Stopped on exit."""
    import boto3  # type: ignore[import-untyped]

    from dev.prefect_helpers import free_port, stop

    executable = moto_server_path()
    if executable is None:
        raise RuntimeError("moto_server not found (pip install 'moto[server]'), or skip it with BENCH_SHARDED_S3=0")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [executable, "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_ready(proc, url)
        bucket = f"sluice-bench-{uuid.uuid4().hex[:8]}"
        boto3.client(
            "s3",
            endpoint_url=url,
            region_name=REGION,
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        ).create_bucket(Bucket=bucket)
        yield {**CREDENTIALS, "STAGING_URL": f"s3://{bucket}/{prefix}", "STAGING_ENDPOINT_URL": url}
    finally:
        stop(proc)


def _wait_ready(proc: subprocess.Popen, url: str) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited with {proc.returncode} before answering at {url}")
        try:
            with urllib.request.urlopen(f"{url}/moto-api/", timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"moto_server did not answer at {url} within {STARTUP_SECONDS} s")
