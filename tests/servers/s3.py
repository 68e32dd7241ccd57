"""A real S3 peer on loopback for the staging tests (pytest plugin): moto's standalone server, which here checks
credentials (an IAM user's access key, made before authentication is turned on), so a wrong key is refused.

Register with ``pytest_plugins = ["tests.servers.s3"]`` in ``tests/conftest.py``. Without moto_server the tests
are skipped, except under CI=true, where they fail."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import skip_or_fail

__all__ = ["S3Bucket", "MotoS3", "moto_s3", "s3"]

STARTUP_SECONDS = 30
# the IAM calls made before moto starts checking signatures: create the user, its policy, its access key
UNAUTHENTICATED_ACTIONS = 3
ALLOW_ALL = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}


@dataclass(frozen=True)
class MotoS3:
    """The running server and the one access key it accepts."""

    endpoint_url: str
    env: dict[str, str]

    def client(self, service: str = "s3"):
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
        )


@dataclass(frozen=True)
class S3Bucket:
    """An empty bucket of the session's server: its endpoint, its name, and the environment a user sets for it."""

    endpoint_url: str
    bucket: str
    env: dict[str, str] = field(repr=False)

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}"


def _moto_server() -> str | None:
    beside = Path(sys.executable).parent / "moto_server"
    return str(beside) if beside.exists() else shutil.which("moto_server")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_ready(proc: subprocess.Popen, url: str) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"moto_server exited with {proc.returncode} before answering at {url}")
        try:
            with urllib.request.urlopen(f"{url}/moto-api/", timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"moto_server did not answer at {url} within {STARTUP_SECONDS} s")


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoS3]:
    """moto_server on a free loopback port, checking signatures against one IAM user's access key."""
    import boto3

    executable = _moto_server()
    if executable is None:
        skip_or_fail("moto_server not found (pip install 'moto[server]')")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = os.environ | {"INITIAL_NO_AUTH_ACTION_COUNT": str(UNAUTHENTICATED_ACTIONS)}
    proc = subprocess.Popen(
        [str(executable), "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_ready(proc, url)
        iam = boto3.client(
            "iam", endpoint_url=url, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
        )
        iam.create_user(UserName="sluice-staging")
        iam.put_user_policy(UserName="sluice-staging", PolicyName="all", PolicyDocument=json.dumps(ALLOW_ALL))
        key = iam.create_access_key(UserName="sluice-staging")["AccessKey"]
        yield MotoS3(
            endpoint_url=url,
            env={
                "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
                "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
                "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_EC2_METADATA_DISABLED": "true",  # no credentials is told at once, not after probing EC2
            },
        )
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def s3(moto_s3: MotoS3) -> S3Bucket:
    """A new, empty bucket (made in us-east-1, where s3fs's own mkdir would fail) on the session's server."""
    bucket = f"sluice-{uuid.uuid4().hex[:12]}"
    moto_s3.client().create_bucket(Bucket=bucket)
    return S3Bucket(endpoint_url=moto_s3.endpoint_url, bucket=bucket, env=dict(moto_s3.env))
