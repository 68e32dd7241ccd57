"""Staging hostile records: a secret is dropped from the staged record whatever its value, place or spelling,
clean records are staged as the source sent them, a record that is no JSON is cut before any secret, text that
is not UTF-8 is staged as UTF-8."""

from __future__ import annotations

import copy
import io
import json

import msgspec
import orjson
import pytest

from tasks.extract.users_api.lines import write_lines
from tasks.redact import CUT
from tests.hostile_records import SECRET, SECRET_NUMBER, no_secrets, staged
from tests.servers.dummyjson import load_real_users


def without_passwords(value: object) -> object:
    if isinstance(value, dict):
        return {k: without_passwords(v) for k, v in value.items() if k != "password"}
    return [without_passwords(v) for v in value] if isinstance(value, list) else value


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
