"""The offline source: a deterministic DummyJSON-format sample, served on loopback over the same contract,
so `make run` with no USERS_API_BASE goes through exactly the code path a real API does.

`DummyJsonServer` is also the peer the tests and the benchmark page through (with fault injection)."""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import orjson

from tasks.extract.users_api.constants import SERVER_DEFAULT_LIMIT

FIRST_NAMES = [
    "Ava",
    "Ben",
    "Chloe",
    "Dara",
    "Eli",
    "Farah",
    "Gus",
    "Hana",
    "Ivo",
    "Jin",
    "Kira",
    "Liam",
    "Mona",
    "Nico",
    "Omar",
    "Pia",
    "Quin",
    "Rosa",
    "Sami",
    "Tara",
    "Uma",
    "Vik",
    "Wren",
    "Xia",
    "Yusuf",
    "Zoe",
]
LAST_NAMES = [
    "Abara",
    "Brandt",
    "Castillo",
    "Dubois",
    "Eriksen",
    "Fontaine",
    "Gallo",
    "Haddad",
    "Ito",
    "Jansen",
    "Kowal",
    "Lindqvist",
    "Moreau",
    "Nakamura",
    "Okafor",
    "Petrov",
    "Quinn",
    "Rossi",
    "Silva",
    "Tanaka",
    "Ueda",
    "Varga",
]
DEPARTMENTS = [
    "Accounting",
    "Business Development",
    "Engineering",
    "Human Resources",
    "Legal",
    "Marketing",
    "Product Management",
    "Research and Development",
    "Sales",
    "Services",
    "Support",
    "Training",
]
CITIES = [
    ("Lisbon", "Portugal"),
    ("Osaka", "Japan"),
    ("Lagos", "Nigeria"),
    ("Denver", "United States"),
    ("Lyon", "France"),
    ("Krakow", "Poland"),
    ("Austin", "United States"),
    ("Porto", "Portugal"),
]
TITLES = ["Analyst", "Engineer", "Manager", "Designer", "Accountant", "Counsel", "Specialist"]

# How the sample's invalid records are broken: (share of one in N, what is done)
_DEFECTS: list[tuple[str, Callable[[dict], None]]] = [
    ("email", lambda u: u.update(email=u["email"].replace("@", " at "))),
    ("age_low", lambda u: u.update(age=16)),
    ("age_high", lambda u: u.update(age=71)),
    ("first_name", lambda u: u.update(firstName="")),
    ("department", lambda u: u["company"].update(department="Astrology")),
    ("no_department", lambda u: u["company"].pop("department")),
    ("age_text", lambda u: u.update(age="forty")),
]


def generate_users(n: int = 300, *, seed: int = 20261123, invalid_every: int = 12) -> list[dict]:
    """`n` users in DummyJSON's shape (ids 1..n); every `invalid_every`-th user is broken in one of several
    ways, and a few carry a second defect, so the DLQ sees single and multiple reasons."""
    rng = random.Random(seed)
    users = []
    for i in range(1, n + 1):
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        city, country = rng.choice(CITIES)
        user = {
            "id": i,
            "firstName": first,
            "lastName": last,
            "maidenName": "",
            "age": rng.randint(18, 65),
            "gender": rng.choice(["female", "male"]),
            "email": f"{first}.{last}{i}@example.test".lower(),
            "phone": f"+{rng.randint(1, 99)} {rng.randint(100, 999)}-{rng.randint(100, 999)}-{rng.randint(1000, 9999)}",
            "username": f"{first[:3]}{last[:3]}{i}".lower(),
            "password": f"pw-{rng.getrandbits(48):012x}",
            "birthDate": f"{rng.randint(1960, 2006)}-{rng.randint(1, 12)}-{rng.randint(1, 28)}",
            "bloodGroup": rng.choice(["A+", "A-", "B+", "O+", "O-", "AB+"]),
            "height": round(rng.uniform(150, 200), 2),
            "weight": round(rng.uniform(45, 110), 2),
            "eyeColor": rng.choice(["Brown", "Green", "Blue", "Gray"]),
            "address": {
                "address": f"{rng.randint(1, 999)} Main Street",
                "city": city,
                "state": "",
                "stateCode": "",
                "postalCode": f"{rng.randint(10000, 99999)}",
                "coordinates": {"lat": round(rng.uniform(-80, 80), 6), "lng": round(rng.uniform(-170, 170), 6)},
                "country": country,
            },
            "university": f"University of {city}",
            "bank": {
                "cardExpire": f"{rng.randint(1, 12):02d}/{rng.randint(27, 32)}",
                "cardNumber": "".join(str(rng.randint(0, 9)) for _ in range(16)),
                "cardType": rng.choice(["Visa", "Mastercard", "Amex"]),
                "currency": "EUR",
                "iban": f"PT{rng.randint(10, 99)}" + "".join(str(rng.randint(0, 9)) for _ in range(21)),
            },
            "company": {"department": rng.choice(DEPARTMENTS), "name": f"{last} & Co", "title": rng.choice(TITLES)},
            "ssn": f"{rng.randint(100, 999)}-{rng.randint(10, 99)}-{rng.randint(1000, 9999)}",
            "role": rng.choice(["user", "user", "moderator", "admin"]),
        }
        if i % invalid_every == 0:
            name, breaker = _DEFECTS[(i // invalid_every) % len(_DEFECTS)]
            breaker(user)
            if i % (invalid_every * 5) == 0:
                _DEFECTS[0][1](user)  # and a bad email too
        users.append(user)
    return users


# ---------------------------------------------------------------- loopback server


@dataclass
class Fault:
    """One scripted answer in place of a page: status, headers, body."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b'{"message": "injected fault"}'


class QuietHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive, no access log; `_send` answers with a body (none for 304)."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if status != 304:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if status != 304:
            self.wfile.write(body)


class JsonHandler(QuietHandler):
    """QuietHandler whose answers are JSON."""

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        super()._send(status, body, {"Content-Type": "application/json", **(headers or {})})

    def _query_at(self, path: str, *, keep_blank: bool = False) -> dict[str, list[str]] | None:
        """The request's query when it asks for `path`; None, having answered 404, when it does not."""
        url = urlsplit(self.path)
        if url.path.rstrip("/") != path:
            self._send(404, b'{"message": "not found"}')
            return None
        return parse_qs(url.query, keep_blank_values=keep_blank)


class LoopbackServer:
    """Runs `self._httpd` (a ThreadingHTTPServer) in a daemon thread; a context manager."""

    _httpd: ThreadingHTTPServer
    thread_name = "loopback-server"

    def start(self):
        self._thread = threading.Thread(target=self._httpd.serve_forever, name=self.thread_name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class DummyJsonServer(LoopbackServer):
    """A threaded HTTP server speaking the DummyJSON `/users` contract over a fixed list of users.

    `faults` is a queue of `Fault`s answered (one per request) before pages are served again;
    `fail_when(limit, skip)` may answer a Fault for any request (a source that stays down);
    `requests` / `request_times` record every (limit, skip) asked for and when."""

    thread_name = "dummyjson-server"

    def __init__(
        self, users: list[dict] | None = None, *, path: str = "/users", host: str = "127.0.0.1", port: int = 0
    ):
        self.path = path
        self.faults: deque[Fault] = deque()
        self.fail_when: Callable[[int, int], Fault | None] | None = None
        self.request_times: list[float] = []
        self.requests: list[tuple[int, int]] = []
        self._lock = threading.Lock()
        self.set_users(users or [])
        self._httpd = ThreadingHTTPServer((host, port), self._handler())
        self._httpd.daemon_threads = True

    def set_users(self, users: list[dict]) -> None:
        self.set_encoded([orjson.dumps(u) for u in users])

    def set_encoded(self, encoded: list[bytes]) -> None:
        """Serve records already encoded as JSON objects (large generated sets)."""
        with self._lock:
            self._encoded = encoded

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}{self.path}"

    def page(self, limit: int, skip: int) -> bytes:
        with self._lock:
            items = self._encoded
        total = len(items)
        chosen = items[skip:] if limit == 0 else items[skip : skip + limit]
        return b'{"users":[' + b",".join(chosen) + b'],"total":%d,"skip":%d,"limit":%d}' % (total, skip, len(chosen))

    def _handler(self):
        server = self

        class Handler(JsonHandler):
            def do_GET(self):  # noqa: N802
                query = self._query_at(server.path)
                if query is None:
                    return None
                try:
                    limit = int(query.get("limit", [SERVER_DEFAULT_LIMIT])[0])
                    skip = int(query.get("skip", ["0"])[0])
                    if limit < 0 or skip < 0:
                        raise ValueError
                except ValueError:
                    return self._send(400, b'{"message": "limit and skip must be non-negative integers"}')
                with server._lock:
                    server.requests.append((limit, skip))
                    server.request_times.append(time.monotonic())
                    fault = server.faults.popleft() if server.faults else None
                if fault is None and server.fail_when is not None:
                    fault = server.fail_when(limit, skip)
                if fault is not None:
                    return self._send(fault.status, fault.body, fault.headers)
                self._send(200, server.page(limit, skip))

        return Handler


@contextmanager
def offline_users_api(n: int = 300) -> Iterator[str]:
    """Serve the generated sample on a free loopback port for the duration of the block."""
    with DummyJsonServer(generate_users(n)) as server:
        yield server.base_url
