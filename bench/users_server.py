"""A DummyJSON-contract server over N generated users, in its own process so the benchmark's RSS and CPU
figures are the pipeline's alone. Users are the real DummyJSON users (read from ../shared) re-numbered,
with every 20th made invalid in one of several ways."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

import orjson

from dev.real_users import load_real_users
from dev.sample_api import DummyJsonServer

INVALID_EVERY = 20
_DEFECTS = (
    lambda u: u.update(age=12),
    lambda u: u.update(email="nobody-at-example"),
    lambda u: u.update(company={**u["company"], "department": "Alchemy"}),
    lambda u: u.update(firstName=""),
)


def generate_encoded(n: int) -> list[bytes]:
    real = load_real_users()
    out = []
    for i in range(n):
        user = {**real[i % len(real)], "id": i + 1, "email": f"user{i + 1}@example.com", "username": f"user{i + 1}"}
        if i % INVALID_EVERY == INVALID_EVERY - 1:
            _DEFECTS[(i // INVALID_EVERY) % len(_DEFECTS)](user)
        out.append(orjson.dumps(user))
    return out


def expected_invalid(n: int) -> int:
    return n // INVALID_EVERY


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--url-file", type=Path, required=True)
    args = ap.parse_args()
    server = DummyJsonServer()
    server.set_encoded(generate_encoded(args.n))
    server.start()
    args.url_file.write_text(server.base_url)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    server.stop()


if __name__ == "__main__":
    main()
