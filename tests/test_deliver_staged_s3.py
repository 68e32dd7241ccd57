"""The deliver stage when the run's files are in the staging store (`s3://...`, a real S3 peer on loopback, moto):
a real sshd receives the same bytes as from the same files on the local disk: the processed file as staged
(read back from its parts a range at a time), the raw file masked, its masked copy made in the store."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.deliver import deliver
from tasks.deliver import transfer, upload_files
from tasks.deliver.transfer import check_local_files
from tasks.deliver_files import masked_path
from tasks.staging import files
from tests.deliver_helpers import download, make_target, sha256, stage_real_run
from tests.servers.s3 import MotoS3, S3Bucket
from tests.servers.sshd import SshdServer

LOCAL_DAY, STORE_DAY = "2024-05-17", "2024-05-18"  # each delivery to a folder of its own
RAW, PROCESSED = "raw_users/records_20240517_120000.jsonl", "processed_users/etl_20240517_120000.jsonl"
AWS_CHAIN = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")


@pytest.fixture()
def store_env(s3: S3Bucket, monkeypatch: pytest.MonkeyPatch, settings_env) -> str:
    """STAGING_URL at a new bucket of the S3 peer, its access key in the environment as a user sets it; the
    run's folder in the store."""
    for name in AWS_CHAIN:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    for name, value in s3.env.items():
        monkeypatch.setenv(name, value)
    settings_env(staging_url=f"{s3.url}/staging", staging_endpoint_url=s3.endpoint_url, staging_secret_block=None)
    return f"{s3.url}/staging/runs/run-1"


def stage_in_parts(location: str, data: bytes, parts: int) -> str:
    """`data` staged at `location` as a stage does: made empty, then appended a few whole lines at a time."""
    files.reset(location)
    cut = [0, *sorted({data.index(b"\n", len(data) * i // parts) + 1 for i in range(1, parts)}), len(data)]
    for start, end in zip(cut, cut[1:], strict=False):
        files.append_with(location, lambda fh, piece=data[start:end]: fh.write(piece))
    return location


def part_keys(moto_s3: MotoS3, s3: S3Bucket, location: str) -> list[str]:
    prefix = location.removeprefix(f"{s3.url}/") + "/"
    listed = moto_s3.client().list_objects_v2(Bucket=s3.bucket, Prefix=prefix).get("Contents", [])
    return [o["Key"] for o in listed if o["Key"].rsplit("/", 1)[-1].isdigit()]


def store_bytes(location: str) -> bytes:
    return files.read_span(location, 0, files.file_size(location))


@pytest.fixture()
def local_run(tmp_path: Path) -> tuple[list[dict], Path]:
    """A run's folder on the local disk: the real users (some broken) staged raw, then transformed."""
    run_dir = tmp_path / "runs" / "run-1"
    users, *_ = stage_real_run(run_dir)
    return users, run_dir


@pytest.mark.sshd
def test_files_in_the_store_are_delivered_as_from_the_local_disk(
    prefect_server: str,
    sshd: SshdServer,
    settings_env,
    store_env: str,
    local_run,
    s3: S3Bucket,
    moto_s3: MotoS3,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    users, run_dir = local_run
    settings_env(**sshd.sftp_settings(), deliver_raw=None)  # masked, the default
    raw_bytes, processed_bytes = (run_dir / RAW).read_bytes(), (run_dir / PROCESSED).read_bytes()
    raw = stage_in_parts(f"{store_env}/{RAW}", raw_bytes, parts=3)
    processed = stage_in_parts(f"{store_env}/{PROCESSED}", processed_bytes, parts=4)
    assert len(part_keys(moto_s3, s3, raw)) == 3 and len(part_keys(moto_s3, s3, processed)) == 4
    # blocks that do not line up with the parts: a read spans two parts now and then
    monkeypatch.setattr(transfer, "STORE_READ_BLOCK", 10_007)
    assert files.file_size(processed) > 5 * 10_007

    local_out = deliver([str(run_dir / RAW), str(run_dir / PROCESSED)], LOCAL_DAY, raw_files=[str(run_dir / RAW)])
    store_out = deliver([raw, processed], STORE_DAY, raw_files=[raw])

    from_disk, from_store = download(sshd, f"/upload/{LOCAL_DAY}"), download(sshd, f"/upload/{STORE_DAY}")
    raw_name, processed_name = RAW.rsplit("/", 1)[1], PROCESSED.rsplit("/", 1)[1]
    assert set(from_store) == {raw_name, processed_name}
    assert from_store == from_disk  # the same bytes, wherever the files were staged
    assert from_store[processed_name] == processed_bytes  # as staged
    masked = from_store[raw_name]
    assert masked != raw_bytes and len(masked.splitlines()) == len(raw_bytes.splitlines())
    for value in (users[0]["ssn"], users[0]["bank"]["cardNumber"], users[0]["bank"]["iban"]):
        assert value.encode() in raw_bytes and value.encode() not in masked

    # the masked copy is in the store beside the raw file's folder; the raw file stays as received
    copy = f"{store_env}/deliver/{raw_name}"
    assert masked_path(raw) == copy and files.exists(copy) and store_bytes(copy) == masked
    assert store_bytes(raw) == raw_bytes and len(part_keys(moto_s3, s3, raw)) == 3
    assert [d["local_path"] for d in store_out.delivered] == [copy, processed]
    assert [d["sha256"] for d in store_out.delivered] == [d["sha256"] for d in local_out.delivered]
    assert [d["bytes"] for d in store_out.delivered] == [len(masked), len(processed_bytes)]


@pytest.mark.sshd
def test_one_shot_upload_of_a_file_in_the_store(sshd: SshdServer, store_env: str, tmp_path: Path) -> None:
    data = b"".join(b'{"id": %d, "name": "user %d"}\n' % (i, i) for i in range(5_000))
    processed = stage_in_parts(f"{store_env}/{PROCESSED}", data, parts=5)
    local = tmp_path / "local.jsonl"
    local.write_bytes(b'{"id": 1}\n')

    results = upload_files(make_target(sshd), [processed, local], "/upload/one-shot")

    assert download(sshd, "/upload/one-shot") == {PROCESSED.rsplit("/", 1)[1]: data, "local.jsonl": local.read_bytes()}
    assert results[0] == {
        "local_path": processed,
        "remote_path": f"/upload/one-shot/{PROCESSED.rsplit('/', 1)[1]}",
        "bytes": len(data),
        "sha256": sha256(data),
    }
    assert results[1]["local_path"] == str(local)


def test_a_file_missing_from_the_store_is_refused_before_connecting(store_env: str, tmp_path: Path) -> None:
    missing = f"{store_env}/{PROCESSED}"
    with pytest.raises(FileNotFoundError, match="not in the staging store"):
        check_local_files([missing])
    local = tmp_path / PROCESSED.rsplit("/", 1)[1]
    local.write_bytes(b"{}\n")
    with pytest.raises(ValueError, match="share the name"):
        check_local_files([stage_in_parts(missing, b"{}\n", parts=1), local])


def test_masked_copy_location_in_the_store() -> None:
    assert masked_path("s3://b/staging/runs/r/raw_users/x.jsonl") == "s3://b/staging/runs/r/deliver/x.jsonl"
    assert masked_path("/data/runs/r/raw_users/x.jsonl") == Path("/data/runs/r/deliver/x.jsonl")
    with pytest.raises(ValueError, match="not in a run's folder"):
        masked_path("s3://b/x.jsonl")
