"""The DummyJSON-contract peer for tests: dev's loopback server, fed the real users from ../shared/data
(dev/real_users.py), with invalid variants made at test time."""

from __future__ import annotations

import copy
import io

import pytest

from dev import real_users
from dev.sample_api import DummyJsonServer, Fault  # noqa: F401  (re-exported for tests)
from tasks.extract.users_api.lines import write_lines


def load_real_users() -> list[dict]:
    try:
        return real_users.load_real_users()
    except real_users.RealUsersMissing as exc:
        pytest.fail(str(exc))


def distinct_users(n: int) -> list[dict]:
    """`n` valid users: the real ones over and over, each with an id, email and username of its own."""
    try:
        return real_users.distinct_users(n)
    except real_users.RealUsersMissing as exc:
        pytest.fail(str(exc))


def staged_lines(users: list) -> bytes:
    """Records as extract stages them (JSONL, secrets cut out), for tests that start from a staged file."""
    buf = io.BytesIO()
    write_lines(buf, users)
    return buf.getvalue()


def break_users(users: list[dict]) -> tuple[list[dict], dict[int, set[str]]]:
    """A copy of `users` with a share made invalid in different ways; returns it and, by position, the rule
    names each broken record must be sent to the DLQ for."""
    users = copy.deepcopy(users)
    expected: dict[int, set[str]] = {}

    def brk(i: int, rules: set[str], fn) -> None:
        fn(users[i])
        expected[i] = rules

    brk(3, {"email_invalid"}, lambda u: u.update(email="not-an-email"))
    brk(10, {"age_out_of_range"}, lambda u: u.update(age=17))
    brk(11, {"age_out_of_range"}, lambda u: u.update(age=66))
    brk(20, {"age_not_integer"}, lambda u: u.update(age="thirty"))
    brk(21, {"age_not_integer"}, lambda u: u.update(age=30.5))
    brk(30, {"first_name_missing"}, lambda u: u.update(firstName="  "))
    brk(40, {"department_unknown"}, lambda u: u["company"].update(department="Alchemy"))
    brk(41, {"department_missing"}, lambda u: u["company"].pop("department"))
    brk(50, {"id_not_integer"}, lambda u: u.update(id="abc"))
    brk(60, {"id_duplicate"}, lambda u: u.update(id=users[59]["id"]))
    brk(
        70,
        {"email_invalid", "age_out_of_range", "first_name_missing"},
        lambda u: u.update(email="x@", age=99, firstName=None),
    )
    # schema drift: a renamed field goes to the DLQ with a reason instead of crashing
    brk(80, {"first_name_missing"}, lambda u: u.update(first_name=u.pop("firstName")))
    brk(90, {"department_missing"}, lambda u: u.update(company="Acme Corp"))
    return users, expected


@pytest.fixture
def users_api():
    """A DummyJSON-contract server on a free loopback port, serving the real users."""
    with DummyJsonServer(load_real_users()) as server:
        yield server
