"""The deliver flow against a real sshd: which files go, and the raw file delivered masked by default, in full or
not at all as DELIVER_RAW says."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from flows.deliver import deliver
from tasks.deliver_files import files_to_deliver, write_masked_copy
from tasks.staging.files import split_spans
from tests.deliver_helpers import DAY, download, stage_real_run
from tests.servers.sshd import SshdServer


def sftp_env(set_env, server: SshdServer, **more: object) -> None:
    """The SFTP settings pointing at `server`, through the environment as a user sets them."""
    set_env(**server.sftp_settings(), **more)


@pytest.fixture()
def staged_run(tmp_path: Path) -> tuple[list[dict], Path, Path, Path]:
    """A run's folder as users-etl leaves it: the real users (some broken) staged, then transformed."""
    return stage_real_run(tmp_path / "runs" / "run-1")


def sensitive_values(users: list[dict]) -> list[str]:
    return [
        v
        for u in users
        for v in (u.get("ssn"), u["bank"].get("cardNumber"), u["bank"].get("iban"), u.get("password"))
        if v
    ]


@pytest.mark.sshd
def test_delivered_raw_file_is_masked_by_default_as_everywhere_else(
    prefect_server: str, sshd: SshdServer, settings_env, staged_run
) -> None:
    users, raw, processed, dlq = staged_run
    sftp_env(settings_env, sshd, deliver_raw=None)
    staged = raw.read_bytes()

    out = deliver([str(raw), str(processed), str(dlq)], DAY, raw_files=[str(raw)])

    got = download(sshd, f"/upload/{DAY}")
    assert set(got) == {raw.name, processed.name, dlq.name}  # the names as staged
    assert raw.read_bytes() == staged  # the raw layer stays as received
    copy = raw.parent.parent / "deliver" / raw.name
    assert out.delivered[0]["local_path"] == str(copy) and got[raw.name] == copy.read_bytes()
    assert got[processed.name] == processed.read_bytes() and got[dlq.name] == dlq.read_bytes()
    everything = b"".join(got.values()).decode()
    assert "password" not in everything
    for value in sensitive_values(users):
        assert value not in everything

    # one user, one mask: the delivered raw line, the processed row, the DLQ record
    lines = [json.loads(line) for line in got[raw.name].decode().splitlines()]
    assert len(lines) == len(users) and [r["id"] for r in lines] == [u["id"] for u in users]
    assert (lines[0]["ssn"], lines[0]["bank"]["cardNumber"], lines[0]["bank"]["iban"]) == (
        "***-**-0289",
        "**** **** **** 5044",
        "****U8F8",
    )
    first_line = {}
    for line in lines:
        first_line.setdefault(line["id"], line)
    rows = pl.read_ndjson(got[processed.name]).select("id", "ssn_masked", "card_number_masked", "iban_masked").rows()
    assert len(rows) > 150
    for user_id, ssn, card, iban in rows:
        line = first_line[user_id]
        assert (line["ssn"], line["bank"]["cardNumber"], line["bank"]["iban"]) == (ssn, card, iban)
    records = [json.loads(line)["record"] for line in got[dlq.name].decode().splitlines()]
    assert len(records) == 13 and all(r in lines for r in records)  # each the delivered raw line, masked alike


@pytest.mark.sshd
@pytest.mark.parametrize("mode", ["full", "none"])
def test_deliver_raw_full_or_none(prefect_server: str, sshd: SshdServer, settings_env, staged_run, mode: str) -> None:
    users, raw, processed, dlq = staged_run
    sftp_env(settings_env, sshd, deliver_raw=mode)

    out = deliver([str(raw), str(processed), str(dlq)], DAY, raw_files=[str(raw)])

    got = download(sshd, f"/upload/{DAY}")
    assert not (raw.parent.parent / "deliver").exists()  # no masked copy made
    if mode == "full":  # as staged: every value, never a password (none is ever staged)
        assert got == {p.name: p.read_bytes() for p in (raw, processed, dlq)}
        assert users[0]["ssn"] in got[raw.name].decode() and b"password" not in got[raw.name]
    else:
        assert got == {p.name: p.read_bytes() for p in (processed, dlq)}
        assert [d["local_path"] for d in out.delivered] == [str(processed), str(dlq)]


def test_masked_copy_is_made_piece_by_piece(staged_run, tmp_path: Path) -> None:
    """A raw file is masked a piece at a time (it can be GBs): the same bytes as in one piece."""
    _, raw, _, _ = staged_run
    whole = write_masked_copy(raw, tmp_path / "whole" / raw.name, piece_bytes=1 << 30)
    pieces = write_masked_copy(raw, tmp_path / "pieces" / raw.name, piece_bytes=16_000)
    assert len(split_spans(raw, 16_000)) > 10
    assert pieces.read_bytes() == whole.read_bytes()
    assert len(whole.read_bytes().splitlines()) == len(raw.read_bytes().splitlines())
    assert [p.name for p in pieces.parent.iterdir()] == [raw.name]  # no temporary left


def test_raw_files_are_among_the_files_to_deliver(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not among the files to deliver"):
        files_to_deliver([str(tmp_path / "a.jsonl")], [str(tmp_path / "b.jsonl")], "masked")
    with pytest.raises(ValueError, match="DELIVER_RAW"):
        files_to_deliver([str(tmp_path / "a.jsonl")], [str(tmp_path / "a.jsonl")], "sometimes")
