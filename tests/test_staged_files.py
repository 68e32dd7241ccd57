"""Staged files (tasks/staging/files.py) as the stages use them, in a folder and in a bucket of a real S3 peer on
loopback (moto_server): one append is one part there, and a span is read back across parts, by any process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from models.settings import get_settings
from tasks.staging import files
from tasks.staging.parts import staging_store
from tasks.staging.store import StagingError

ROOT = Path(__file__).resolve().parents[1]
KEY = "runs/r1/raw_users/x.jsonl"
LINES = [f'{{"id": {i}, "name": "{"n" * (i * 7 % 50)}"}}\n'.encode() for i in range(30)]
LONG = b'{"id": 99, "bio": "' + b"b" * (150 << 10) + b'"}\n'  # longer than a 64 KiB look for a newline
# three appends: whole lines, then one ending mid-line (the next part ends it), then the long line and the rest
APPENDS = [b"".join(LINES[:10]), b"".join(LINES[10:20]) + LINES[20][:9], LINES[20][9:] + LONG + b"".join(LINES[21:])]
DATA = b"".join(APPENDS)
# a reader in a process of its own, answering one JSON request a line (what it reads, as text)
READER = """
import json, sys
from tasks.staging import files
for line in sys.stdin:
    op, *args = json.loads(line)
    if op == "read":
        out = files.read_span(*args).decode()
    elif op == "size":
        out = files.file_size(*args)
    else:
        out = [b.decode() for b in files.read_pieces(*args)]
    print(json.dumps(out), flush=True)
"""


@pytest.fixture(params=["folder", "s3"])
def location(request, tmp_path, monkeypatch) -> str:
    """KEY's location under STAGING_URL, set as a user sets it: a folder, or a new bucket with its endpoint."""
    for name in ("STAGING_URL", "STAGING_ENDPOINT_URL", "STAGING_SECRET_BLOCK", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    if request.param == "folder":
        monkeypatch.setenv("STAGING_URL", str(tmp_path / "staging"))
    else:
        s3 = request.getfixturevalue("s3")
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
        monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
        for name, value in s3.env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("STAGING_URL", f"{s3.url}/staging")
        monkeypatch.setenv("STAGING_ENDPOINT_URL", s3.endpoint_url)
    get_settings.cache_clear()
    where = staging_store().location(KEY)
    assert files.is_remote(where) == (request.param == "s3")
    yield where
    get_settings.cache_clear()


def staged(where: str, appends: list[bytes] = APPENDS) -> list[tuple[int, int]]:
    files.reset(where)
    return [files.append_with(where, lambda fh, data=data: fh.write(data)) for data in appends]


def local_copy(tmp_path: Path, data: bytes = DATA) -> Path:
    path = tmp_path / "local.jsonl"
    path.write_bytes(data)
    return path


def test_appends_are_consecutive_spans_read_back_across_parts(location) -> None:
    assert files.reset(location) == location
    assert files.exists(location) and files.file_size(location) == 0
    spans = [files.append_with(location, lambda fh, data=data: fh.write(data)) for data in APPENDS]
    starts = [sum(map(len, APPENDS[:i])) for i in range(3)]
    assert spans == [(start, len(data)) for start, data in zip(starts, APPENDS, strict=True)]
    assert files.file_size(location) == len(DATA) and files.append_with(location, None) == (len(DATA), 0)
    assert [files.read_span(location, *span) for span in spans] == APPENDS
    assert files.read_span(location, 5, starts[1]) == DATA[5 : starts[1] + 5]  # two parts
    assert files.read_span(location, 5, len(DATA) - 10) == DATA[5:-5]  # three parts
    assert files.read_span(location, len(DATA), 0) == b""
    assert files.name(location) == "x.jsonl"
    files.sync(location)
    files.reset(location)  # an earlier file replaced
    assert files.exists(location) and files.file_size(location) == 0
    assert files.append_with(location, lambda fh: fh.write(b"{}\n")) == (0, 3)


def test_a_span_past_the_end_is_an_error_naming_the_file(location) -> None:
    staged(location)
    with pytest.raises((StagingError, OSError)) as past:
        files.read_span(location, len(DATA) - 5, 10)
    assert location in str(past.value) and "ends before the span" in str(past.value)


@pytest.mark.parametrize("target", [40, 300, 1 << 20])  # smaller than a part, about one, larger than the file
def test_split_spans_end_on_newlines_and_rejoin_to_the_bytes(location, tmp_path, target) -> None:
    staged(location)
    local = local_copy(tmp_path)
    first, last = sum(map(len, LINES[:5])), len(DATA) - sum(map(len, LINES[25:]))  # whole lines 5 to 24
    for offset, length in ((0, None), (first, last - first)):
        end = len(DATA) if length is None else offset + length
        spans = files.split_spans(location, target, offset, length)
        assert spans == files.split_spans(local, target, offset, length)  # the same cuts as in a folder
        assert spans[0][0] == offset and sum(n for _, n in spans) == end - offset
        assert all(a + n == b for (a, n), (b, _) in zip(spans, spans[1:], strict=False))
        pieces = list(files.read_pieces(location, target, offset, length))
        assert all(piece.endswith(b"\n") for piece in pieces) and b"".join(pieces) == DATA[offset:end]
    assert len(files.split_spans(location, 40)) > 3  # several spans a part


def test_truncate_then_append(location) -> None:
    spans = staged(location)
    files.truncate(location, spans[1][0])  # a part's end
    assert files.file_size(location) == spans[1][0]
    assert files.append_with(location, lambda fh: fh.write(b"D1\nD2\n")) == (spans[1][0], 6)
    head = APPENDS[0] + b"D1\nD2\n"
    assert files.read_span(location, 0, len(head)) == head
    files.truncate(location, len(APPENDS[0]) + 3)  # in the middle of a part
    assert files.file_size(location) == len(APPENDS[0]) + 3
    assert files.append_with(location, lambda fh: fh.write(b"E\n")) == (len(APPENDS[0]) + 3, 2)
    assert files.read_span(location, 0, files.file_size(location)) == APPENDS[0] + b"D1\nE\n"
    files.truncate(location, 0)
    assert files.file_size(location) == 0 and files.exists(location)
    assert files.append_with(location, lambda fh: fh.write(b"F\n")) == (0, 2)
    assert b"".join(files.read_pieces(location, 1)) == b"F\n"


def test_another_process_reads_what_was_appended_after_it_first_looked(location) -> None:
    spans = staged(location, APPENDS[:2])
    reader = subprocess.Popen(
        [sys.executable, "-c", READER], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )

    def ask(*request: object) -> object:
        reader.stdin.write(json.dumps(request) + "\n")
        reader.stdin.flush()
        answer = reader.stdout.readline()
        assert answer, f"the reader exited with {reader.wait()}"
        return json.loads(answer)

    try:
        assert ask("read", location, *spans[0]) == APPENDS[0].decode()  # it lists the file: two parts
        spans.append(files.append_with(location, lambda fh: fh.write(APPENDS[2])))
        assert ask("size", location) == len(DATA)  # it lists the file again
        assert ask("read", location, *spans[2]) == APPENDS[2].decode()  # a part it has not seen yet
        assert ask("read", location, 5, len(DATA) - 10) == DATA[5:-5].decode()
        assert "".join(ask("pieces", location, 300)) == DATA.decode()
        assert ask("size", location) == len(DATA)
        spans.append(files.append_with(location, lambda fh: fh.write(b"G\n")))
        assert "".join(ask("pieces", location, 300, 0, len(DATA) + 2)) == DATA.decode() + "G\n"
    finally:
        reader.stdin.close()
        assert reader.wait() == 0


def test_an_arrow_frame_round_trips(location) -> None:
    frame = pl.DataFrame({"id": [1, 2, 3], "name": ["a", None, "c"], "score": [0.5, 1.5, None]})
    files.reset(location)
    files.append_lines(location, frame)
    span = files.append_frame(location, frame.head(2))
    text = files.append_text_lines(location, pl.Series(['plain, "as is"', "x"]))
    assert span[0] > 0 and files.read_frame(files.read_span(location, *span)).equals(frame.head(2))
    assert files.read_span(location, *text) == b'plain, "as is"\nx\n'
    assert files.append_lines(location, frame.clear())[1] == 0
    assert files.append_text_lines(location, pl.Series([], dtype=pl.String))[1] == 0


def test_a_location_outside_the_store_names_staging_url(location) -> None:
    elsewhere = "s3://another-bucket/staging/" + KEY
    for call in (files.reset, files.file_size, lambda where: files.read_span(where, 0, 1)):
        with pytest.raises(StagingError, match="STAGING_URL") as outside:
            call(elsewhere)
        assert elsewhere in str(outside.value)
