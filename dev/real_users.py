"""The real DummyJSON users from ../shared/data (never copied into the repo): the tests' and the benchmark's
source records."""

from __future__ import annotations

import json
import os
from pathlib import Path

SHARED_USERS = (
    Path(os.environ.get("SLUICE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    / "dummyjson"
    / "users.json"
)


class RealUsersMissing(FileNotFoundError):
    """../shared/data is not beside the checkout."""


def load_real_users() -> list[dict]:
    """The real users, a fresh copy at each call (callers change them)."""
    if not SHARED_USERS.exists():
        raise RealUsersMissing(
            f"the real DummyJSON users are expected at {SHARED_USERS} (../shared beside the checkout)"
        )
    data = json.loads(SHARED_USERS.read_text())
    return data["users"] if isinstance(data, dict) else data


def distinct_users(n: int) -> list[dict]:
    """`n` valid users: the real ones over and over, each with an id, email and username of its own."""
    real = load_real_users()
    return [
        real[i % len(real)] | {"id": i + 1, "email": f"user{i + 1}@example.com", "username": f"user{i + 1}"}
        for i in range(n)
    ]
