"""Rules, enrichment and masking, through the pure functions and the task's own body (`.fn`)."""

import json

import orjson
import polars as pl
import pytest

from models.settings import BUNDLED_DEPARTMENTS
from tasks.parse import parse_raw
from tasks.staging.files import split_spans
from tasks.users.dlq import dlq_lines
from tasks.users.transform import read_departments, transform_batch
from tasks.users.validate import transform_frame
from tests.servers.dummyjson import break_users, load_real_users, staged_lines


@pytest.fixture(scope="module")
def departments():
    return read_departments(BUNDLED_DEPARTMENTS)


def run(users, departments):
    return transform_frame(parse_raw(staged_lines([json.loads(json.dumps(u)) for u in users])), departments)


def test_bundled_departments_cover_every_real_department(departments):
    real = {u["company"]["department"] for u in load_real_users()}
    assert real <= set(departments.get_column("department").to_list())


def test_real_users_are_all_valid_and_flattened(departments):
    users = load_real_users()
    processed, dlq = run(users, departments)
    assert dlq.height == 0 and processed.height == len(users)
    first = processed.row(0, named=True)
    src = users[0]
    assert first["id"] == src["id"] and first["first_name"] == src["firstName"]
    assert first["department"] == src["company"]["department"] and first["department_code"]
    assert first["city"] == src["address"]["city"] and first["company_title"] == src["company"]["title"]
    assert first["latitude"] == pytest.approx(src["address"]["coordinates"]["lat"])


@pytest.mark.parametrize(
    ("change", "rules"),
    [
        (lambda u: u.update(id="seven"), {"id_not_integer"}),
        (lambda u: u.pop("id"), {"id_not_integer"}),
        (lambda u: u.update(firstName=""), {"first_name_missing"}),
        (lambda u: u.pop("firstName"), {"first_name_missing"}),
        (lambda u: u.update(email="someone@"), {"email_invalid"}),
        (lambda u: u.update(email="a b@example.com"), {"email_invalid"}),
        (lambda u: u.update(age=17), {"age_out_of_range"}),
        (lambda u: u.update(age=66), {"age_out_of_range"}),
        (lambda u: u.update(age="old"), {"age_not_integer"}),
        (lambda u: u.update(age=40.5), {"age_not_integer"}),
        (lambda u: u["company"].pop("department"), {"department_missing"}),
        (lambda u: u["company"].update(department="Sorcery"), {"department_unknown"}),
        (lambda u: u.update(company=None), {"department_missing"}),
        (
            lambda u: u.update(age=5, email="bad", firstName=None),
            {"age_out_of_range", "email_invalid", "first_name_missing"},
        ),
    ],
)
def test_each_rule_sends_the_record_to_the_dlq_with_every_reason(departments, change, rules):
    users = load_real_users()[:5]
    change(users[2])
    processed, dlq = run(users, departments)
    assert processed.height == 4 and dlq.height == 1
    assert set(dlq.get_column("reasons")[0].to_list()) == rules
    assert set(dlq.get_column("error_reason")[0].split("; ")) == rules


def test_boundaries_are_inclusive(departments):
    users = load_real_users()[:2]
    users[0]["age"], users[1]["age"] = 18, 65
    processed, dlq = run(users, departments)
    assert processed.height == 2 and dlq.height == 0


def test_duplicate_id_keeps_the_first(departments):
    users = load_real_users()[:3]
    users[2]["id"] = users[0]["id"]
    processed, dlq = run(users, departments)
    assert processed.get_column("id").to_list() == [users[0]["id"], users[1]["id"]]
    assert dlq.get_column("error_reason").to_list() == ["id_duplicate"]


def test_type_drift_in_a_nested_field_does_not_crash_the_batch(departments):
    users = load_real_users()[:4]
    users[1]["company"] = "Acme"  # the whole column becomes text for this batch
    processed, dlq = run(users, departments)
    assert processed.height == 3
    assert processed.get_column("department").null_count() == 0
    assert dlq.get_column("error_reason").to_list() == ["department_missing"]


def test_sensitive_fields_are_masked_outside_the_raw_layer(departments):
    """The README's formats in the processed columns; the same user's values, when the record goes to the
    DLQ instead, masked alike inside the record; nothing of the values or the password in either."""
    users = load_real_users()[:3]
    processed, _ = run(users, departments)
    row, src = processed.row(0, named=True), users[0]
    digits = "".join(c for c in src["ssn"] if c.isdigit())
    assert (row["ssn_masked"], row["card_number_masked"], row["iban_masked"]) == (
        f"***-**-{digits[-4:]}",
        f"**** **** **** {src['bank']['cardNumber'][-4:]}",
        f"****{src['bank']['iban'][-4:]}",
    )
    broken = [dict(u, email="broken") for u in users]
    _, dlq = run(broken, departments)
    line = dlq_lines(dlq)[0]
    record = orjson.loads(line)["record"]
    assert record["email"] == "broken" and record["id"] == src["id"]
    assert (record["ssn"], record["bank"]["cardNumber"], record["bank"]["iban"]) == (
        row["ssn_masked"],
        row["card_number_masked"],
        row["iban_masked"],
    )
    assert record["ein"] == "****" and record["bank"]["cardType"] == src["bank"]["cardType"]
    for secret in (src["ssn"], src["bank"]["cardNumber"], src["bank"]["iban"], src["ein"], src["password"]):
        assert secret not in line


def test_password_never_reaches_a_staged_line():
    users = load_real_users()[:10]
    staged = staged_lines([dict(u) for u in users]).decode()
    assert "password" not in staged
    assert all(u["password"] not in staged for u in users)


def test_raw_keys_staged_by_transform_are_those_persist_would_work_out(tmp_path, departments):
    """Transform hands persist each raw line's id and hash (an Arrow stream per batch): persist's raw rows
    from them are exactly those it computes from the lines alone, batch by batch."""
    from tasks.staging.files import read_frame, read_span
    from tasks.users.persist import raw_frame

    users, _ = break_users(load_real_users())
    raw = tmp_path / "raw.jsonl"
    raw.write_bytes(staged_lines(users + users[:30]))  # a repeated line is one raw version
    keys = tmp_path / "keys.arrows"
    outs = [
        transform_batch.fn(
            departments,
            raw_path=str(raw),
            offset=o,
            length=n,
            processed_path=str(tmp_path / "p"),
            dlq_path=str(tmp_path / "d"),
            keys_path=str(keys),
        )
        for o, n in split_spans(raw, 64_000)
    ]
    assert len(outs) > 3 and sum(o.raw_keys[1] for o in outs) == keys.stat().st_size
    for out in outs:
        lines = read_span(raw, *out.raw)
        given = raw_frame(lines, read_frame(read_span(keys, *out.raw_keys)))
        assert given.equals(raw_frame(lines))
        assert given.get_column("source_id").null_count() == 0
    every = pl.concat(raw_frame(read_span(raw, *o.raw)) for o in outs)
    assert every.height == len(users) + 30 and every.get_column("record_hash").n_unique() == len(users)


def test_transform_batch_appends_outputs_and_reports_reasons(tmp_path, departments):
    users, expected = break_users(load_real_users())
    raw = tmp_path / "raw.jsonl"
    raw.write_bytes(staged_lines(users))
    spans = split_spans(raw, 64_000)
    assert len(spans) > 3 and sum(length for _, length in spans) == raw.stat().st_size
    out_p, out_d = tmp_path / "p.jsonl", tmp_path / "d.jsonl"
    results = [
        transform_batch.fn(
            departments, raw_path=str(raw), offset=o, length=n, processed_path=str(out_p), dlq_path=str(out_d)
        )
        for o, n in spans
    ]
    assert sum(r.valid for r in results) + sum(r.invalid for r in results) == len(users)
    dlq = pl.read_ndjson(out_d)
    assert dlq.height == len(expected) == sum(r.invalid for r in results)
    processed = pl.read_ndjson(out_p)
    assert processed.height == len(users) - len(expected)
    assert processed.get_column("id").is_unique().all()


def test_a_batch_worked_through_in_pieces_gives_what_it_gives_in_one(tmp_path, departments):
    """transform works through a batch in pieces of about PIECE_BYTES (its memory is a piece's): the
    outputs are the same bytes, counts and reasons as in one piece, and an id seen in an earlier piece is
    a duplicate as it is within one. (Field types are read per piece and merged as across batches: where
    the broken users give a field another type, a piece says so where the whole span would say text.)"""
    from tasks.staging.files import read_frame, read_span

    users, expected = break_users(load_real_users())
    again = [dict(u, firstName=f"Again {u['firstName']}") for u in users[:5]]  # same ids, new content, at the end
    raw = tmp_path / "raw.jsonl"
    raw.write_bytes(staged_lines(users + again))
    outs = {}
    for name, piece_bytes in (("whole", 1 << 30), ("pieces", 16_000)):
        paths = {k: tmp_path / f"{name}.{k}" for k in ("p", "d", "k")}
        out = transform_batch.fn(
            departments,
            raw_path=str(raw),
            offset=0,
            length=raw.stat().st_size,
            processed_path=str(paths["p"]),
            dlq_path=str(paths["d"]),
            keys_path=str(paths["k"]),
            piece_bytes=piece_bytes,
        )
        assert out.processed == (0, paths["p"].stat().st_size) and out.dlq == (0, paths["d"].stat().st_size)
        outs[name] = (
            out,
            {k: p.read_bytes() for k, p in paths.items()},
            read_frame(read_span(paths["k"], *out.raw_keys)),
        )
    assert len(split_spans(raw, 16_000)) > 10
    (whole, whole_files, whole_keys), (pieces, piece_files, piece_keys) = outs["whole"], outs["pieces"]
    assert piece_files["p"] == whole_files["p"] and piece_files["d"] == whole_files["d"]
    assert piece_keys.equals(whole_keys) and piece_keys.height == len(users) + len(again)
    same = ("valid", "invalid", "reasons")
    assert {k: getattr(pieces, k) for k in same} == {k: getattr(whole, k) for k in same}
    assert pieces.invalid == len(expected) + len(again) and pieces.reasons["id_duplicate"] >= len(again)
    dlq = pl.read_ndjson(tmp_path / "pieces.d")
    assert dlq.filter(pl.col("reasons").list.contains("id_duplicate")).height >= len(again)


def test_field_types_read_in_pieces_are_those_of_the_whole_batch(tmp_path, departments):
    raw = tmp_path / "raw.jsonl"
    raw.write_bytes(staged_lines(load_real_users()))
    kw = dict(
        raw_path=str(raw),
        offset=0,
        length=raw.stat().st_size,
        processed_path=str(tmp_path / "p"),
        dlq_path=str(tmp_path / "d"),
    )
    whole = transform_batch.fn(departments, **kw, piece_bytes=1 << 30).types
    assert whole["id"] == "Int64" and whole["address.coordinates.lat"] == "Float64"
    assert transform_batch.fn(departments, **kw, piece_bytes=16_000).types == whole


def _drifted(change):
    """The real users, staged, with `change` applied to a copy of each (a function of the user's position)."""
    users = [json.loads(json.dumps(u)) for u in load_real_users()]
    for n, u in enumerate(users):
        change(n, u)
    return staged_lines(users)


# how a source's records can differ from an earlier span's; each must come out as inference reads it
DRIFTS = {
    "none": lambda n, u: None,
    "a new field in one record": lambda n, u: u.update(nickname="x") if n == 7 else None,
    "a new nested field in one record": lambda n, u: u["address"].update(zip4="0000") if n == 9 else None,
    "a field null in one record": lambda n, u: u.update(phone=None) if n == 3 else None,
    "a field in no record": lambda n, u: u.pop("maidenName"),
    "a nested field in no record": lambda n, u: u["bank"].pop("iban"),
    "a field in some records only": lambda n, u: u.pop("ssn") if n % 2 else None,
    "text become numbers": lambda n, u: u["address"].update(postalCode=n),
    "text become numbers in one record": lambda n, u: u["address"].update(postalCode=n) if n == 5 else None,
    "fractions become whole numbers": lambda n, u: u.update(height=round(u["height"])),
    "a number become text in one record": lambda n, u: u.update(age="41") if n == 11 else None,
    "an object become text": lambda n, u: u.update(hair="brown") if n == 2 else None,
    "a key renamed": lambda n, u: u.update(eye=u.pop("eyeColor")) if n == 4 else None,
    "a text holding a key": lambda n, u: u.update(university='the "x": school') if n == 6 else None,
}


@pytest.mark.parametrize("drift", DRIFTS)
def test_a_span_parsed_with_an_earlier_spans_fields_reads_as_inferring_its_own_would(drift):
    """parse_raw with `like` (the fields the batch's first piece was inferred to have) parses a piece in one
    pass; whatever the piece holds, the frame and its types are those that inferring gives (drift is
    reported from them)."""
    from polars.testing import assert_frame_equal

    from tasks.parse import parse_like

    like = parse_raw(staged_lines(load_real_users())).drop("_raw", "_record").schema
    data = _drifted(DRIFTS[drift])
    inferred = parse_raw(data)
    assert_frame_equal(parse_raw(data, like), inferred)
    # the one pass stands where the fields are those of the earlier span, and only there
    one_pass = parse_like(data, inferred.get_column("_raw"), like) is not None
    assert one_pass == (drift in ("none", "a field in some records only"))
