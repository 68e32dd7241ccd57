"""Hostile records among the real DummyJSON users: every record is judged, none can stop a batch. Values the
tables cannot hold go to the DLQ with the reason (on both databases alike), lines that are no JSON object go
there with their line, secrets are dropped from the parsed record whatever their value, and the rest of the
batch is stored. Through the stage functions, and end to end on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import copy
import io
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import msgspec
import orjson
import polars as pl
import pytest
from sqlalchemy import text

from models.db import engine_for
from models.schema import max_lengths
from models.settings import BUNDLED_DEPARTMENTS
from tasks.extract.dummyjson.lines import write_lines
from tasks.parse import parse_raw
from tasks.redact import CUT
from tasks.staging.files import split_spans
from tasks.users.dlq import dlq_lines, read_dlq_span
from tasks.users.transform import read_departments, transform_batch
from tasks.users.validate import parsed_ids, raw_keys, transform_frame
from tests.servers.dummyjson import DummyJsonServer, load_real_users

SECRET = "SECRET-"  # every secret below holds this, or is SECRET_NUMBER
SECRET_NUMBER = 918273645012


@dataclass(frozen=True)
class Hostile:
    name: str
    text: bytes  # the record as the source sends it
    reasons: frozenset[str] | None  # the DLQ reasons it must get; None: it is stored
    user_id: int | None = None  # the DLQ entry's user, or the stored user's id


def hostile_records() -> list[Hostile]:
    """Records the source may send, each with a fresh id (5000 + n) unless the id is the point."""
    base = load_real_users()[0]
    out: list[Hostile] = []

    def add(
        n: int, name: str, reasons: set[str] | None, *, raw: bytes | None = None, user_id: int | None = -1, **changes
    ) -> None:
        record = copy.deepcopy(base)
        record.update({"id": 5000 + n, "email": f"hostile{n}@example.com", "username": f"hostile{n}", **changes})
        body = raw if raw is not None else json.dumps(record).encode()
        uid = record["id"] if user_id == -1 else user_id
        out.append(Hostile(name, body, frozenset(reasons) if reasons is not None else None, uid))

    company, address = base["company"], base["address"]
    add(1, "firstName of 300 characters", {"first_name_too_long"}, firstName="F" * 300)
    add(2, "lastName of 201 characters", {"last_name_too_long"}, lastName="L" * 201)
    add(3, "email of 330 characters", {"email_too_long"}, email="e" * 318 + "@example.com")
    add(4, "gender of 33 characters", {"gender_too_long"}, gender="g" * 33)
    add(5, "username of 201 characters", {"username_too_long"}, username="u" * 201)
    add(
        6,
        "department of 201 characters",
        {"department_too_long", "department_unknown"},
        company={**company, "department": "D" * 201},
    )
    add(7, "id of 200 digits", {"id_out_of_range"}, id=int("9" * 200), user_id=None)
    add(8, "id as text of 200 digits", {"id_out_of_range"}, id="9" * 200, user_id=None)
    add(9, "id of 2^63", {"id_out_of_range"}, id=2**63, user_id=None)
    add(10, "id below -2^63", {"id_out_of_range"}, id=-(2**63) - 1, user_id=None)
    add(11, "age of 200 digits", {"age_out_of_range"}, age=int("9" * 200))
    add(12, "age of 2^63", {"age_out_of_range"}, age=2**63)
    add(13, "height NaN as text", {"number_not_finite"}, height="NaN")
    add(
        14,
        "height 1e999",
        {"number_not_finite"},
        raw=json.dumps({**base, "id": 5014, "height": 1234.5678}).encode().replace(b"1234.5678", b"1e999"),
    )
    add(
        15,
        "latitude -Infinity as text",
        {"number_not_finite"},
        address={**address, "coordinates": {"lat": "-Infinity", "lng": 1.0}},
    )
    add(16, "firstName holding NUL", {"text_contains_nul"}, firstName="a\x00b")
    add(17, "city holding NUL", {"text_contains_nul"}, address={**address, "city": "x\x00"})
    others = [
        ("a text", b'"hello"'),
        ("a number", b"42"),
        ("null", b"null"),
        ("a boolean", b"true"),
        ("an array", b'[1, {"password": "SECRET-in-array"}]'),
    ]
    for n, (name, body) in enumerate(others, start=18):
        add(n, f"the record is {name}", {"record_not_object"}, raw=body, user_id=None)
    # stored: secrets dropped whatever their value, odd shapes read as text or nothing, ids exactly
    add(30, "password as an object", None, password={"hash": "SECRET-hash", "salt": "SECRET-salt"})
    add(31, "password as an array", None, password=["SECRET-a", {"b": "SECRET-b"}])
    add(32, "password nested in bank", None, bank={**base["bank"], "password": {"pin": "SECRET-pin"}})
    add(33, "passwords in a list of objects", None, extra=[{"password": 1}, {"password": {"x": "SECRET-x"}}])
    escaped = json.dumps({**base, "id": 5034, "password": "SECRET-esc"}).encode()
    add(34, "password key spelled with escapes", None, raw=escaped.replace(b'"password"', b'"pass\\u0077ord"'))
    add(35, "password as a number", None, password=SECRET_NUMBER)
    add(36, "firstName as an object", None, firstName={"given": "Ann"})
    add(37, "firstName as an array", None, firstName=["Ann"])
    add(38, "address as an array", None, address=["nowhere"])
    add(39, "height as an object", None, height={"cm": 180})
    add(40, "id 2^63 - 1", None, id=2**63 - 1)
    add(41, "id 2^53 + 1 (no float can hold it)", None, id=2**53 + 1)
    add(42, "id -2^63", None, id=-(2**63))
    return out


def mixed(real: list[dict], hostile: list[Hostile]) -> list[bytes]:
    """The real users' JSON with the hostile records spread among them (every page gets some)."""
    encoded = [orjson.dumps(u) for u in real]
    for i, h in enumerate(hostile):
        encoded.insert(min(len(encoded), i * 5 + 3), h.text)
    return encoded


def staged(encoded: list[bytes]) -> bytes:
    buf = io.BytesIO()
    write_lines(buf, [msgspec.Raw(e) for e in encoded])
    return buf.getvalue()


def without_passwords(value: object) -> object:
    if isinstance(value, dict):
        return {k: without_passwords(v) for k, v in value.items() if k != "password"}
    return [without_passwords(v) for v in value] if isinstance(value, list) else value


def no_secrets(dump: str) -> None:
    assert SECRET not in dump and str(SECRET_NUMBER) not in dump
    assert not [u["password"] for u in load_real_users() if u["password"] in dump]


@pytest.fixture(scope="module")
def departments():
    return read_departments(BUNDLED_DEPARTMENTS)


# ---------------------------------------------------------------- staging


SECRET_VALUES = {
    "object": {"hash": "SECRET-h", "salt": "SECRET-s"},
    "array": ["SECRET-1", ["SECRET-2"]],
    "number": SECRET_NUMBER,
    "null": None,
    "boolean": True,
    "text": "SECRET-text",
    "escaped text": 'SECRET-"quoted\\',
    "nested": {"deeper": {"password": "SECRET-d"}},
}


@pytest.mark.parametrize("value", SECRET_VALUES.values(), ids=SECRET_VALUES.keys())
@pytest.mark.parametrize("where", ["top", "nested", "in a list"])
def test_a_secret_is_dropped_from_the_parsed_record_whatever_its_value(value, where):
    user = copy.deepcopy(load_real_users()[3])
    if where == "top":
        user["password"] = value
    elif where == "nested":
        user["bank"]["password"] = value
    else:
        user["history"] = [1, {"password": value, "kept": "yes"}, [{"password": value}]]
    lines = staged([json.dumps(user).encode(), orjson.dumps(load_real_users()[4])]).splitlines()
    assert len(lines) == 2
    assert orjson.loads(lines[0]) == without_passwords(json.loads(json.dumps(user)))  # still one JSON object a line
    no_secrets(lines[0].decode())


def test_a_key_spelled_with_escapes_is_a_secret_too():
    user = {**load_real_users()[0], "password": "SECRET-esc"}
    line = staged([json.dumps(user).encode().replace(b'"password"', b'"pass\\u0077ord"')])
    assert orjson.loads(line) == without_passwords(user) and SECRET not in line.decode()


def test_clean_records_are_staged_as_the_source_sent_them_less_the_password():
    """The common case stays a column operation: no record is parsed and written again."""
    users = load_real_users()
    texts = [orjson.dumps(u) for u in users]
    expected = [orjson.dumps(u).replace(b'"password":' + orjson.dumps(u["password"]) + b",", b"") for u in users]
    assert staged(texts).splitlines() == expected


def test_a_record_that_is_not_json_is_staged_cut_before_any_secret():
    """A record that cannot be parsed cannot have its secret found by key: nothing from a trace on is kept."""
    broken = msgspec.Raw(b'{"id": 7, "firstName": "Ann", "password": {"p": "SECRET-p"}, "x": [}')
    escaped = msgspec.Raw(b'{"id": 8, "pass\\u0077ord": "SECRET-q", ')
    buf = io.BytesIO()
    write_lines(buf, [broken, escaped, msgspec.Raw(orjson.dumps(load_real_users()[0]))])
    lines = buf.getvalue().decode().splitlines()
    assert lines[:2] == ['{"id": 7, "firstName": "Ann", "' + CUT, '{"id": 8, "pass' + CUT]
    no_secrets("\n".join(lines))


def test_text_that_is_not_utf8_is_staged_as_utf8():
    user = orjson.dumps({**load_real_users()[0], "maidenName": "x"})
    user = user.replace(b'"maidenName":"x"', b'"maidenName":"\xff"')
    (line,) = staged([user]).decode().splitlines()
    assert orjson.loads(line)["maidenName"] == "\ufffd"


# ---------------------------------------------------------------- transform

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


def rows(url: str, sql: str) -> list:
    with engine_for(url).connect() as conn:
        return conn.execute(text(sql)).all()


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
