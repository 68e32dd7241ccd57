"""Hostile records among the real DummyJSON users: every record is judged, none can stop a batch. Values the
tables cannot hold go to the DLQ with the reason (on both databases alike), lines that are no JSON object go
there with their line, no secret is left, and the rest of the batch is stored. Through the transform, and end
to end on SQLite and PostgreSQL (staging them: test_hostile_staging.py)."""

from __future__ import annotations

import asyncio
import copy
import json
from collections import Counter
from pathlib import Path

import orjson
import polars as pl
import pytest

from models.schema import max_lengths
from models.settings import BUNDLED_DEPARTMENTS
from tasks.parse import parse_raw
from tasks.staging.files import split_spans
from tasks.users.dlq import dlq_lines, read_dlq_span
from tasks.users.transform import read_departments, transform_batch
from tasks.users.validate import parsed_ids, raw_keys, transform_frame
from tests.hostile_records import Hostile, hostile_records, mixed, no_secrets, staged
from tests.servers.dummyjson import DummyJsonServer, load_real_users
from tests.tables import rows


@pytest.fixture(scope="module")
def departments():
    return read_departments(BUNDLED_DEPARTMENTS)


UNPARSEABLE = [
    b'{"id": 6001, "firstName": "cut short',
    b"{not json at all}",
    b"   ",
    b"",
    b'{"id": 6002} trailing',
    b'{"id": 6003, "height": NaN}',
    b'{"id": 6004, "x": ' + b"[" * 1100 + b"]" * 1100 + b"}",
    b'{"id": 6005, "password": "SECRET-broken", oops}',
]


def hostile_span() -> tuple[bytes, list[Hostile]]:
    """The real users and the hostile records as staged, then lines no staging writes (a file cut short or
    damaged) spread among them."""
    hostile = hostile_records()
    lines = staged(mixed(load_real_users(), hostile)).splitlines()
    for i, line in enumerate(UNPARSEABLE):
        lines.insert(i * 23 + 11, line)
    return b"\n".join(lines) + b"\n", hostile


def expected_dlq(hostile: list[Hostile], *, unparseable: bool = True) -> list[tuple]:
    rows = [(h.user_id, tuple(sorted(h.reasons))) for h in hostile if h.reasons is not None]
    rows += [(None, ("record_unparseable",))] * (len(UNPARSEABLE) if unparseable else 0)
    return sorted(rows, key=repr)


def check_dlq(dlq: pl.DataFrame) -> None:
    """Every DLQ entry as persist reads it back: a record (JSON, or its line as text), no secret."""
    back = read_dlq_span(("\n".join(dlq_lines(dlq).to_list()) + "\n").encode(), user_ids=True)
    assert back.height == dlq.height
    assert back.select("error_reason", "record_hash", "data").null_count().row(0) == (0, 0, 0)
    no_secrets("\n".join(back.get_column("data").to_list()))


def test_hostile_records_go_to_the_dlq_with_their_reasons_and_the_rest_is_stored(departments):
    data, hostile = hostile_span()
    processed, dlq = transform_frame(parse_raw(data), departments)
    stored = [h for h in hostile if h.reasons is None]
    assert processed.height == len(load_real_users()) + len(stored)
    reasons = [tuple(sorted(r)) for r in dlq.get_column("reasons").to_list()]
    assert sorted(zip(dlq.get_column("user_id").to_list(), reasons, strict=True), key=repr) == expected_dlq(hostile)
    check_dlq(dlq)
    no_secrets(processed.write_ndjson())
    by_id = {row["id"]: row for row in processed.iter_rows(named=True)}
    assert {h.user_id for h in stored} <= set(by_id)  # ids beyond 2^53 exactly, not through a float
    # an object or array where a name is expected is its JSON text, judged like any text
    assert json.loads(by_id[5036]["first_name"]) == {"given": "Ann"}
    assert json.loads(by_id[5037]["first_name"]) == ["Ann"]
    assert by_id[5038]["city"] is None and by_id[5039]["height"] is None


def test_a_value_of_exactly_the_columns_length_is_stored_and_one_more_is_not(tmp_path):
    """The length rules are the tables' own (models.users), department_code's included (from DEPARTMENTS_CSV)."""
    n = max_lengths()
    base = load_real_users()[0]
    csv = tmp_path / "departments.csv"
    csv.write_text(
        f"department,department_code\n{base['company']['department']},X\n"
        f"{'D' * n['department']},{'C' * n['department_code']}\n"
        f"{'D' * (n['department'] + 1)},C\n"
        f"Long Code,{'C' * (n['department_code'] + 1)}\n"
    )
    setters = {
        "first_name": lambda u, k: u.update(firstName="x" * k),
        "last_name": lambda u, k: u.update(lastName="x" * k),
        "username": lambda u, k: u.update(username="x" * k),
        "gender": lambda u, k: u.update(gender="x" * k),
        "email": lambda u, k: u.update(email="x" * (k - 12) + "@example.com"),
        "department": lambda u, k: u.update(company={**u["company"], "department": "D" * k}),
    }
    records, expected = [], []
    for extra in (0, 1):
        for col, set_value in setters.items():
            user = copy.deepcopy(base) | {"id": len(records) + 1}
            set_value(user, n[col] + extra)
            records.append(user)
            expected.append({f"{col}_too_long"} if extra else set())
    records.append(copy.deepcopy(base) | {"id": 99, "company": {**base["company"], "department": "Long Code"}})
    expected.append({"department_code_too_long"})
    data = staged([json.dumps(r).encode() for r in records])
    processed, dlq = transform_frame(parse_raw(data), read_departments(csv))
    reasons = dict(zip(dlq.get_column("user_id").to_list(), dlq.get_column("reasons").to_list(), strict=True))
    assert [set(reasons.get(r["id"], [])) for r in records] == expected
    assert processed.height == expected.count(set())


def test_pieces_and_batches_of_any_size_give_the_same_outputs(tmp_path, departments):
    """A bad line in any piece sends only itself to the DLQ: the outputs are the same bytes, counts and
    reasons whether the span is read whole, in small pieces, or as several batches."""
    data, hostile = hostile_span()
    raw = tmp_path / "raw.jsonl"
    raw.write_bytes(data)
    outs = {}
    for name, spans, piece_bytes in (
        ("whole", [(0, len(data))], 1 << 30),
        ("pieces", [(0, len(data))], 8_000),
        ("batches", split_spans(raw, 40_000), 1 << 30),
    ):
        p, d = tmp_path / f"{name}.p", tmp_path / f"{name}.d"
        seen, results = None, []
        for offset, length in spans:
            results.append(
                transform_batch.fn(
                    departments,
                    raw_path=str(raw),
                    offset=offset,
                    length=length,
                    processed_path=str(p),
                    dlq_path=str(d),
                    seen_ids=seen,
                    piece_bytes=piece_bytes,
                )
            )
            seen = results[-1].ids
        outs[name] = (
            p.read_bytes(),
            d.read_bytes(),
            sum(r.valid for r in results),
            sum(r.invalid for r in results),
            sum((Counter(r.reasons) for r in results), Counter()),
        )
    assert outs["pieces"] == outs["whole"] == outs["batches"]
    _, dlq_bytes, valid, invalid, _ = outs["whole"]
    assert invalid == len(expected_dlq(hostile))
    assert valid == len(load_real_users()) + sum(h.reasons is None for h in hostile)
    no_secrets(dlq_bytes.decode() + outs["whole"][0].decode())


def test_types_no_column_can_unite_are_read_record_by_record(departments):
    """An address that is an array beside addresses that are objects: inference gives up on the span, so its
    types are united by hand; an id beyond 64 bits among them is still judged (not a line lost)."""
    real = load_real_users()
    big = {**real[0], "id": 2**63 + 5}
    odd = {**real[1], "id": 7001, "address": ["x"]}
    data = staged([orjson.dumps(u) for u in real[2:10]] + [json.dumps(big).encode(), orjson.dumps(odd)])
    processed, dlq = transform_frame(parse_raw(data), departments)
    assert processed.get_column("id").to_list() == [u["id"] for u in real[2:10]] + [7001]
    assert processed.row(-1, named=True)["city"] is None and processed.get_column("city").null_count() == 1
    assert dlq.get_column("reasons").to_list() == [["id_out_of_range"]]


def test_raw_keys_are_ones_the_raw_table_holds():
    """An id longer than raw_users.source_id holds is no id there; the line is still kept."""
    lines = staged([orjson.dumps({"id": "x" * 500}), orjson.dumps({"id": 12}), orjson.dumps({"id": {"y": "y" * 500}})])
    raw = parse_raw(lines)
    keys = raw.select(raw_keys(pl.col("_raw"), ids=parsed_ids(raw)))
    assert keys.get_column("source_id").to_list() == [None, "12", None]
    assert keys.get_column("record_hash").null_count() == 0


# ---------------------------------------------------------------- end to end


@pytest.mark.usefixtures("prefect_server")
def test_hostile_records_end_to_end_on_both_databases(settings_env, database_url):
    """users-etl against a DummyJSON-contract server sending the hostile records among the real users: the run
    completes, the real users and the harmless hostile ones are stored, each other record is one open DLQ entry
    with its reasons, no secret anywhere (staged files, tables), and a rerun adds nothing twice."""
    from flows.users_etl import users_etl

    settings_env(database_url=database_url, users_page_size=25, extract_retries=1)
    url, real, hostile = database_url, load_real_users(), hostile_records()
    stored = [h for h in hostile if h.reasons is None]
    with DummyJsonServer() as server:
        server.set_encoded(mixed(real, hostile))
        first = asyncio.run(users_etl(api_base=server.base_url, deliver_files=False))
        tables = {
            t: rows(url, f"SELECT count(*) FROM {t}")[0][0] for t in ("raw_users", "processed_users", "dlq_users")
        }
        second = asyncio.run(users_etl(api_base=server.base_url, deliver_files=False))

    total = len(real) + len(hostile)
    counts = first["counts"]
    valid = len(real) + len(stored)
    assert (counts["extracted"], counts["valid"], counts["invalid"]) == (total, valid, total - valid)
    assert tables == {"raw_users": total, "processed_users": valid, "dlq_users": total - valid}
    ids = {r[0] for r in rows(url, "SELECT id FROM processed_users")}
    assert {h.user_id for h in stored} <= ids and {u["id"] for u in real} <= ids
    dlq = rows(url, "SELECT user_id, error_reason, data FROM dlq_users WHERE resolved_at IS NULL")
    assert sorted(((uid, tuple(sorted(reason.split("; ")))) for uid, reason, _ in dlq), key=repr) == expected_dlq(
        hostile, unparseable=False
    )
    for _, _, data in dlq:
        json.loads(data)  # the record as JSON (a record that is no object: its JSON text)

    for table in ("raw_users", "processed_users", "dlq_users", "etl_runs", "etl_checkpoints"):
        no_secrets(" ".join(str(r) for r in rows(url, f"SELECT * FROM {table}")))
    for path in first["files"].values():
        if path and Path(path).exists():
            no_secrets(Path(path).read_text(errors="replace"))

    assert second["counts"]["inserted"] == 0 and second["counts"]["extracted"] == total
    assert {t: rows(url, f"SELECT count(*) FROM {t}")[0][0] for t in tables} == tables
