"""Hostile records the source may send, spread among the real DummyJSON users; staging them as extract does, and
looking for any secret left."""

from __future__ import annotations

import copy
import io
import json
from dataclasses import dataclass

import msgspec
import orjson

from tasks.extract.users_api.lines import write_lines
from tests.servers.dummyjson import load_real_users

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


def no_secrets(dump: str) -> None:
    assert SECRET not in dump and str(SECRET_NUMBER) not in dump
    assert not [u["password"] for u in load_real_users() if u["password"] in dump]
