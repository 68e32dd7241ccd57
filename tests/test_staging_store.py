"""The staging store a sharded run's shards leave their files in: a folder, or a bucket of a real S3 peer on
loopback (moto_server, checking signatures), configured as a user would."""

from __future__ import annotations

import os
import pickle
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from models.settings import ConfigError, Settings
from tasks.staging.store import StagingError, StagingStore

SECRET_BLOCK = "sluice-test-staging-s3"
AWS_CHAIN = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")


def settings(**values: object) -> Settings:
    defaults: dict = {"staging_url": None, "staging_endpoint_url": None, "staging_secret_block": None}
    return Settings(_env_file=None, **(defaults | values))


def use_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], *, keys: bool = True) -> None:
    """The S3 peer's environment, with (or without) its access key; no AWS file of this host is read."""
    for name in AWS_CHAIN:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    for name, value in env.items():
        if keys or name not in AWS_CHAIN:
            monkeypatch.setenv(name, value)


@pytest.fixture(params=["folder", "s3"])
def where(request, tmp_path, monkeypatch):
    """(store, what a user lists to see the stored objects: key -> bytes)."""
    if request.param == "folder":
        root = tmp_path / "data"  # the default: DATA_DIR, which holds runs/<run id> as ever
        store = StagingStore.from_settings(settings(data_dir=tmp_path / "data"))

        def listing() -> dict[str, bytes]:
            return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}

        assert store.url == str(root.resolve())
        return store, listing
    s3 = request.getfixturevalue("s3")
    use_env(monkeypatch, s3.env)
    store = StagingStore.from_settings(settings(staging_url=f"{s3.url}/staging/", staging_endpoint_url=s3.endpoint_url))
    client = request.getfixturevalue("moto_s3").client()

    def listing() -> dict[str, bytes]:
        objects = client.list_objects_v2(Bucket=s3.bucket).get("Contents", [])
        return {
            o["Key"].removeprefix("staging/"): client.get_object(Bucket=s3.bucket, Key=o["Key"])["Body"].read()
            for o in objects
        }

    assert store.url == f"{s3.url}/staging"
    return store, listing


def test_round_trip(where) -> None:
    store, listing = where
    lines = b'{"id": 1}\n{"id": 2}\n{"id": 3}\n'
    store.write_bytes("runs/r1/shard-1/processed.jsonl", lines)
    store.write_bytes("runs/r1/shard-1/result.json", b'{"records": 3}')
    store.write_bytes("runs/r10/shard-1/result.json", b"{}")
    assert listing() == {
        "runs/r1/shard-1/processed.jsonl": lines,
        "runs/r1/shard-1/result.json": b'{"records": 3}',
        "runs/r10/shard-1/result.json": b"{}",
    }
    key = "runs/r1/shard-1/processed.jsonl"
    assert store.read_bytes("runs/r1/shard-1/result.json") == b'{"records": 3}'
    assert store.size(key) == 30 and store.exists(key)
    assert store.sizes("runs/r1") == {key: 30, "runs/r1/shard-1/result.json": 14}
    assert store.key_of(store.location(key)) == key and store.key_of("/elsewhere/x") is None
    assert not store.exists("runs/r1/shard-2/processed.jsonl") and not store.exists("runs/r1")
    assert store.read_range(key, 10, 10) == b'{"id": 2}\n'
    assert pickle.loads(pickle.dumps(store)).read_range(key, 0, 10) == b'{"id": 1}\n'  # handed to a task

    store.write_bytes("runs/r1/shard-1/result.json", b'{"records": 4}')  # a retried shard's result replaces it
    assert store.read_bytes("runs/r1/shard-1/result.json") == b'{"records": 4}'
    with pytest.raises(StagingError, match="ends before the span"):
        store.read_range(key, 20, 20)
    with pytest.raises(FileNotFoundError, match="shard-2"):
        store.read_bytes("runs/r1/shard-2/result.json")
    with pytest.raises(ValueError, match="relative posix key"):
        store.read_bytes("../secrets")

    store.remove("runs/r1")
    store.remove("runs/r1/")  # nothing left there: no error
    assert listing() == {"runs/r10/shard-1/result.json": b"{}"}  # a key prefix, not a string prefix
    assert not store.exists(key)


def test_an_object_of_several_mb_is_read_back_by_range(where) -> None:
    store, _ = where
    data = os.urandom((17 << 20) + 12345)
    store.write_bytes("runs/r2/shard-3/raw.jsonl", data)
    assert store.size("runs/r2/shard-3/raw.jsonl") == len(data)
    assert (
        store.read_range("runs/r2/shard-3/raw.jsonl", 5_000_001, 7_654_321) == data[5_000_001 : 5_000_001 + 7_654_321]
    )
    assert store.read_range("runs/r2/shard-3/raw.jsonl", len(data) - 3, 3) == data[-3:]


def test_threads_share_one_store(where) -> None:
    """The first calls come at once from several threads: one filesystem, every read right."""
    store, _ = where
    data = bytes(range(256)) * 64
    store.write_bytes("runs/r3/part", data)
    fresh = pickle.loads(pickle.dumps(store))  # its filesystem not made yet
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda i: fresh.read_range("runs/r3/part", i * 512, 512), range(32)))
    assert b"".join(got) == data


def test_credentials_from_a_prefect_secret_block(s3, prefect_server, monkeypatch) -> None:
    from prefect.blocks.system import Secret
    from prefect.settings import PREFECT_API_URL, temporary_settings

    use_env(monkeypatch, s3.env, keys=False)
    config = dict(staging_url=s3.url, staging_endpoint_url=s3.endpoint_url)
    key, secret = s3.env["AWS_ACCESS_KEY_ID"], s3.env["AWS_SECRET_ACCESS_KEY"]
    with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
        Secret(value={"key": key, "secret": secret}).save(SECRET_BLOCK, overwrite=True)
        store = StagingStore.from_settings(settings(**config, staging_secret_block=SECRET_BLOCK))
        store.write_bytes("runs/r4/result.json", b"{}")
        assert store.read_bytes("runs/r4/result.json") == b"{}"

        wrong = "wrong-secret-0123456789"
        Secret(value={"key": key, "secret": wrong}).save(SECRET_BLOCK, overwrite=True)
        with pytest.raises(StagingError, match="STAGING_SECRET_BLOCK") as refused:
            StagingStore.from_settings(settings(**config, staging_secret_block=SECRET_BLOCK)).exists("runs/r4")
        assert "access denied" in str(refused.value) and SECRET_BLOCK in str(refused.value)

        Secret(value=f"{key}:{wrong}").save(SECRET_BLOCK, overwrite=True)  # not the JSON asked for
        with pytest.raises(StagingError, match="must hold JSON") as malformed:
            StagingStore.from_settings(settings(**config, staging_secret_block=SECRET_BLOCK)).exists("runs/r4")

        with pytest.raises(StagingError, match="no-such-block"):
            StagingStore.from_settings(settings(**config, staging_secret_block="no-such-block")).exists("runs/r4")
    for error in (refused.value, malformed.value):
        assert wrong not in str(error) and secret not in str(error)

    with pytest.raises(StagingError, match="AWS_ACCESS_KEY_ID") as missing:  # neither the environment nor a block
        StagingStore.from_settings(settings(**config)).exists("runs/r4")
    assert "no S3 credentials" in str(missing.value) and "STAGING_SECRET_BLOCK" in str(missing.value)


def test_wrong_credentials_in_the_environment(s3, monkeypatch) -> None:
    use_env(monkeypatch, s3.env | {"AWS_SECRET_ACCESS_KEY": "not-the-secret-42"})
    store = StagingStore.from_settings(settings(staging_url=s3.url, staging_endpoint_url=s3.endpoint_url))
    with pytest.raises(StagingError, match="AWS_SECRET_ACCESS_KEY") as refused:
        store.write_bytes("runs/r5/result.json", b"{}")
    assert "access denied" in str(refused.value) and "not-the-secret-42" not in str(refused.value)


def test_a_missing_bucket_is_named(s3, monkeypatch) -> None:
    use_env(monkeypatch, s3.env)
    store = StagingStore.from_settings(
        settings(staging_url="s3://no-such-bucket/x", staging_endpoint_url=s3.endpoint_url)
    )
    with pytest.raises(StagingError, match="'no-such-bucket' does not exist") as missing:
        store.exists("runs/r6/result.json")  # not a plain False
    assert "STAGING_URL" in str(missing.value) and s3.env["AWS_SECRET_ACCESS_KEY"] not in str(missing.value)


def test_an_unreachable_endpoint_is_named(s3, monkeypatch) -> None:
    use_env(monkeypatch, s3.env | {"AWS_MAX_ATTEMPTS": "1"})  # botocore's own setting: fail without retrying
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens there
    store = StagingStore.from_settings(settings(staging_url=s3.url, staging_endpoint_url=f"http://127.0.0.1:{port}"))
    with pytest.raises(
        StagingError, match=f"could not reach the S3 endpoint http://127.0.0.1:{port}.*STAGING_ENDPOINT_URL"
    ):
        store.read_bytes("runs/r7/result.json")


def test_staging_url_forms(tmp_path: Path) -> None:
    assert StagingStore.from_settings(settings(staging_url=f"file://{tmp_path}/shared")).url == f"{tmp_path}/shared"
    assert StagingStore.from_settings(settings(staging_url="s3://bucket")).url == "s3://bucket"
    with pytest.raises(ConfigError, match="STAGING_URL.*'gs://'"):
        StagingStore.from_settings(settings(staging_url="gs://bucket/prefix"))
    with pytest.raises(ConfigError, match="STAGING_URL") as with_credentials:
        StagingStore.from_settings(settings(staging_url="s3://AKIA:hunter2@bucket/prefix"))
    assert "hunter2" not in str(with_credentials.value)
    with pytest.raises(ConfigError, match="STAGING_ENDPOINT_URL"):
        StagingStore.from_settings(settings(staging_url="s3://bucket", staging_endpoint_url="127.0.0.1:9000"))


def test_keys_lists_a_folder_of_the_store_as_a_user_lists_it(where) -> None:
    store, listing = where
    for key in ("runs/r1/shard-1/raw-parts/b", "runs/r1/shard-1/raw-parts/a", "runs/r1/shard-2/x", "runs/r10/y"):
        store.write_bytes(key, b"1")
    assert store.keys("runs/r1/shard-1/raw-parts") == ["runs/r1/shard-1/raw-parts/a", "runs/r1/shard-1/raw-parts/b"]
    assert store.keys("runs/r1") == sorted(k for k in listing() if k.startswith("runs/r1/"))
    assert store.keys("runs/none") == []
