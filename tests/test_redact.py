"""Masks and secrets: one definition (tasks.redact), the same mask for the same value in a column and inside
JSON text (DLQ records, the delivered raw file), whatever the value and wherever the key is."""

from __future__ import annotations

import json

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.settings import BUNDLED_DEPARTMENTS
from tasks.parse import parse_raw
from tasks.redact import CARD, EIN, IBAN, MASKS, SSN, Mask, mask_sensitive, mask_value
from tasks.users.transform import read_departments
from tasks.users.validate import transform_frame
from tests.servers.dummyjson import load_real_users, staged_lines


def column_masks(values: list, mask: Mask) -> list:
    return (
        pl.DataFrame({"v": pl.Series(values, dtype=pl.String)})
        .select(mask_value(pl.col("v"), mask))
        .to_series()
        .to_list()
    )


def masked_json(texts: list[str]) -> list[str]:
    return pl.select(mask_sensitive(pl.Series("t", texts, pl.String))).to_series().to_list()


@pytest.mark.parametrize(
    ("mask", "value", "expected"),
    [
        (SSN, "123-45-6789", "***-**-6789"),
        (SSN, "900-590-289", "***-**-0289"),  # DummyJSON's: 9 digits, grouped 3-3-3
        (CARD, "4111 1111 1111 1234", "**** **** **** 1234"),
        (CARD, "3693233511855044", "**** **** **** 5044"),
        (IBAN, "GB82 WEST 1234 5698 7654 32", "****5432"),
        (IBAN, "GB74MH2UZLR9TRPHYNU8F8", "****U8F8"),
        (IBAN, "AB$1 $2$3$4", "****$3$4"),  # replacement syntax in a value is just text
        (IBAN, 'GB12 34"5\\6', '****"5\\6'),  # as are JSON's escapes
        (EIN, "12-3456789", "**-***6789"),
        (EIN, "977-175", "****"),  # DummyJSON's: too short to show any of it
        (SSN, "1234567", "****"),
        (CARD, "12345678", "**** **** **** 5678"),
        (SSN, "n/a", None),  # nothing significant: no value
        (IBAN, "   ", None),
        (SSN, "", None),
        (SSN, None, None),
    ],
)
def test_documented_formats_in_a_column_and_in_json_text(mask, value, expected):
    assert column_masks([value], mask) == [expected]
    key = mask.keys[0]
    record = {"id": 1, key: value, "nested": {"deeper": {key: value}}, "list": [{key: value}]}
    (text,) = masked_json([json.dumps(record)])
    out = json.loads(text)
    assert out[key] == out["nested"]["deeper"][key] == out["list"][0][key] == expected
    assert {k: v for k, v in out.items() if k not in (key, "nested", "list")} == {"id": 1}


def test_numbers_and_booleans_as_values_are_masked_as_their_text():
    (text,) = masked_json(['{"ssn": 123456789, "ein": -12.5, "iban": true, "cardNumber": 4111111111111234}'])
    assert json.loads(text) == {
        "ssn": "***-**-6789",
        "ein": "****",
        "iban": "****",
        "cardNumber": "**** **** **** 1234",
    }
    assert column_masks(["123456789"], SSN) == ["***-**-6789"]


def test_secrets_are_dropped_and_other_keys_left_alone():
    record = {
        "password": "hunter2",
        "ssnx": "123-45-6789",
        "my_ssn": "123-45-6789",
        "note": 'say "ssn": 1',
        "bank": {"password": "x", "iban": None, "currency": "GBP"},
    }
    (text,) = masked_json([json.dumps(record)])
    out = json.loads(text)
    assert "password" not in text and "hunter2" not in text
    assert out == {
        "ssnx": "123-45-6789",
        "my_ssn": "123-45-6789",
        "note": 'say "ssn": 1',
        "bank": {"iban": None, "currency": "GBP"},
    }


# any text: digits, letters, separators, quotes, backslashes, control characters, non-ASCII
VALUES = st.one_of(
    st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=30),
    st.text(alphabet="0123456789 -", max_size=25),
    st.text(alphabet='0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ \t"\\', max_size=34),
)


@settings(max_examples=300, deadline=None)
@given(value=VALUES, ascii_only=st.booleans(), compact=st.booleans())
def test_the_same_value_gets_the_same_mask_in_a_column_and_in_json_text(value, ascii_only, compact):
    record = {
        "id": 7,
        "ssn": value,
        "ein": value,
        "bank": {"cardNumber": value, "iban": value, "cardType": "x"},
        "company": {"card_number": value},
    }
    text = json.dumps(record, ensure_ascii=ascii_only, separators=(",", ":") if compact else None)
    (masked,) = masked_json([text])
    out = json.loads(masked)
    expected = {m: column_masks([value], m)[0] for m in MASKS}
    assert (out["ssn"], out["ein"], out["bank"]["cardNumber"], out["bank"]["iban"], out["company"]["card_number"]) == (
        expected[SSN],
        expected[EIN],
        expected[CARD],
        expected[IBAN],
        expected[CARD],
    )
    assert (out["id"], out["bank"]["cardType"]) == (7, "x")


def test_real_users_have_the_same_masks_in_processed_columns_and_dlq_records():
    """Every real DummyJSON user, valid (processed columns) and then made invalid (a DLQ record): the same
    masks, and none of the source's SSNs, card numbers, IBANs or passwords in either."""
    departments = read_departments(BUNDLED_DEPARTMENTS)
    users = load_real_users()
    processed, _ = transform_frame(parse_raw(staged_lines(json.loads(json.dumps(users)))), departments)
    broken = [dict(u, email="not-an-email") for u in json.loads(json.dumps(users))]
    _, dlq = transform_frame(parse_raw(staged_lines(broken)), departments)
    assert processed.height == dlq.height == len(users)
    records = [json.loads(r) for r in dlq.get_column("record").to_list()]
    masks = processed.select("ssn_masked", "card_number_masked", "iban_masked").rows()
    assert [(r["ssn"], r["bank"]["cardNumber"], r["bank"]["iban"]) for r in records] == masks
    assert all(r["ein"] == "****" for r in records)
    assert masks[0] == ("***-**-0289", "**** **** **** 5044", "****U8F8")
    text = "\n".join(dlq.get_column("record").to_list() + [json.dumps(processed.rows())])
    for user in users:
        for secret in (user["ssn"], user["bank"]["cardNumber"], user["bank"]["iban"], user["ein"], user["password"]):
            assert secret not in text
