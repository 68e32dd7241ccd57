"""A configurable REST users peer for tests (issue 37): the same fixed users behind one of four pagination styles
(offset, page number, cursor in the body, Link header), records at any dotted path, and one of four auth kinds
answering 401 without the right credential.

Cursors are opaque and per server (an HMAC of the offset under a random salt): a client cannot make one up and
must keep the one it was given; a cursor this server did not issue answers 400."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from http.server import ThreadingHTTPServer
from urllib.parse import urlencode

import orjson

from dev.sample_api import Fault, JsonHandler, LoopbackServer

PAGINATIONS = ("offset", "page", "cursor", "link")
AUTHS = (None, "api_key_header", "api_key_query", "bearer", "basic")
_DEFAULT_KEY_NAME = {"api_key_header": "X-API-Key", "api_key_query": "api_key"}
_UNAUTHORIZED = b'{"message": "unauthorized"}'


class BadRequest(ValueError):
    """A query the peer refuses with a 400 (its message is the answer's)."""


def _put(body: dict, dotted: str, value: object) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        body = body.setdefault(key, {})
    body[last] = value


def _int_param(params: dict[str, str], name: str, default: int, minimum: int) -> int:
    raw = params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer") from None
    if value < minimum:
        raise BadRequest(f"{name} must be at least {minimum}")
    return value


class RestApiServer(LoopbackServer):
    """Users at `base_url` (http://127.0.0.1:PORT/users by default), paged and guarded as configured.

    `requests`: the query parameters (first value of each, the api_key_query key left out) of every request that
    passed auth, in order; `unauthorized`: how many were refused with 401; `faults`: Faults answered one per
    authorised request before pages are served again; `fail_when(params)` may answer a Fault for any of them."""

    thread_name = "rest-api-server"

    def __init__(
        self,
        users: list[dict] | None = None,
        *,
        pagination: str = "offset",
        records_path: str = "users",
        total_path: str | None = "total",
        offset_param: str = "skip",
        limit_param: str = "limit",
        page_param: str = "page",
        first_page: int = 1,
        total_pages_path: str | None = None,
        cursor_param: str = "cursor",
        cursor_path: str = "next_cursor",
        default_limit: int = 30,
        max_limit: int | None = None,
        auth: str | None = None,
        secret: str | None = None,
        username: str | None = None,
        key_name: str | None = None,
        path: str = "/users",
        host: str = "127.0.0.1",
        port: int = 0,
    ):
        if pagination not in PAGINATIONS:
            raise ValueError(f"pagination must be one of {PAGINATIONS}, not {pagination!r}")
        if auth not in AUTHS:
            raise ValueError(f"auth must be one of {AUTHS}, not {auth!r}")
        if auth is not None and not secret:
            raise ValueError(f"auth={auth!r} needs a secret")
        if auth == "basic" and not username:
            raise ValueError("auth='basic' needs a username")
        if not records_path and (pagination == "cursor" or total_pages_path):
            raise ValueError("a bare-list body (records_path='') has no room for a cursor or total pages")
        self.pagination = pagination
        self.records_path = records_path
        self.total_path = total_path if records_path else None
        self.offset_param, self.limit_param = offset_param, limit_param
        self.page_param, self.first_page, self.total_pages_path = page_param, first_page, total_pages_path
        self.cursor_param, self.cursor_path = cursor_param, cursor_path
        self.default_limit, self.max_limit = default_limit, max_limit
        self.auth, self.username = auth, username
        self.key_name = key_name or _DEFAULT_KEY_NAME.get(auth or "")
        self._secret = secret
        self._salt = secrets.token_bytes(16)
        self.path = path
        self.faults: deque[Fault] = deque()
        self.fail_when: Callable[[dict[str, str]], Fault | None] | None = None
        self.requests: list[dict[str, str]] = []
        self.request_times: list[float] = []
        self.unauthorized = 0
        self._lock = threading.Lock()
        self.set_users(users or [])
        self._httpd = ThreadingHTTPServer((host, port), self._handler())
        self._httpd.daemon_threads = True

    def set_users(self, users: list[dict]) -> None:
        encoded = [orjson.Fragment(orjson.dumps(u)) for u in users]
        with self._lock:
            self._records = encoded

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}{self.path}"

    # ---------------------------------------------------------------- cursors

    def cursor_for(self, offset: int) -> str:
        """The opaque cursor this server issues for the page starting at `offset` (for tests' expectations)."""
        text = str(offset).encode()
        tag = hmac.new(self._salt, text, hashlib.sha256).hexdigest()[:16].encode()
        return base64.urlsafe_b64encode(text + b"." + tag).decode().rstrip("=")

    def _offset_of(self, cursor: str) -> int:
        try:
            text, _, tag = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).partition(b".")
            offset = int(text)
        except (binascii.Error, ValueError):
            raise BadRequest("unknown cursor") from None
        if offset < 0 or not hmac.compare_digest(self.cursor_for(offset), cursor):
            raise BadRequest("unknown cursor")
        return offset

    # ---------------------------------------------------------------- auth and pages

    def _authorised(self, params: dict[str, str], headers) -> bool:
        if self.auth is None:
            return True
        if self.auth == "api_key_header":
            given, wanted = headers.get(self.key_name), self._secret
        elif self.auth == "api_key_query":
            given, wanted = params.get(self.key_name), self._secret
        elif self.auth == "bearer":
            given, wanted = headers.get("Authorization"), f"Bearer {self._secret}"
        else:
            pair = base64.b64encode(f"{self.username}:{self._secret}".encode()).decode()
            given, wanted = headers.get("Authorization"), f"Basic {pair}"
        return given is not None and hmac.compare_digest(given.encode(), wanted.encode())

    def page(self, params: dict[str, str]) -> tuple[bytes, dict[str, str]]:
        """The body and extra headers answering `params` (authorised already); raises BadRequest."""
        limit = _int_param(params, self.limit_param, self.default_limit, 1)
        if self.max_limit is not None:
            limit = min(limit, self.max_limit)
        if self.pagination == "offset":
            offset = _int_param(params, self.offset_param, 0, 0)
        elif self.pagination == "page":
            offset = (_int_param(params, self.page_param, self.first_page, self.first_page) - self.first_page) * limit
        else:
            cursor = params.get(self.cursor_param)
            offset = 0 if cursor is None else self._offset_of(cursor)
        with self._lock:
            records = self._records
        chosen = records[offset : offset + limit]
        end = offset + len(chosen)
        next_cursor = self.cursor_for(end) if end < len(records) else None
        if not self.records_path:
            body: object = chosen
        else:
            body = {}
            _put(body, self.records_path, chosen)
            if self.total_path:
                _put(body, self.total_path, len(records))
            if self.pagination == "page" and self.total_pages_path:
                _put(body, self.total_pages_path, math.ceil(len(records) / limit))
            if self.pagination == "cursor":
                _put(body, self.cursor_path, next_cursor)
        headers = {}
        if self.pagination == "link" and next_cursor is not None:
            query = urlencode({self.cursor_param: next_cursor, self.limit_param: limit})
            headers["Link"] = f'<{self.base_url}?{query}>; rel="next"'
        return orjson.dumps(body), headers

    def _handler(self):
        server = self

        class Handler(JsonHandler):
            def do_GET(self):  # noqa: N802
                query = self._query_at(server.path, keep_blank=True)
                if query is None:
                    return None
                params = {k: v[0] for k, v in query.items()}
                if not server._authorised(params, self.headers):
                    with server._lock:
                        server.unauthorized += 1
                    challenge = {"bearer": "Bearer", "basic": 'Basic realm="users"'}.get(server.auth or "")
                    return self._send(401, _UNAUTHORIZED, {"WWW-Authenticate": challenge} if challenge else {})
                if server.auth == "api_key_query":
                    params.pop(server.key_name, None)  # the key is never kept or echoed
                with server._lock:
                    server.requests.append(params)
                    server.request_times.append(time.monotonic())
                    fault = server.faults.popleft() if server.faults else None
                if fault is None and server.fail_when is not None:
                    fault = server.fail_when(params)
                if fault is not None:
                    return self._send(fault.status, fault.body, fault.headers)
                try:
                    body, headers = server.page(params)
                except BadRequest as exc:
                    return self._send(400, orjson.dumps({"message": str(exc)}))
                self._send(200, body, headers)

        return Handler
