"""Compose healthcheck probe: `python docker/healthcheck.py URL [--any-status]`.

Exit 0 when URL answers 2xx (or, with --any-status, any HTTP status below 500: the service is up even if
the path needs a key or does not exist). Standard library only, so it works in every app container."""

from __future__ import annotations

import sys
import urllib.error
import urllib.request


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: healthcheck.py URL [--any-status]", file=sys.stderr)
        return 2
    url, any_status = argv[0], "--any-status" in argv[1:]
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (urllib.error.URLError, OSError) as exc:
        print(f"{url}: {exc}", file=sys.stderr)
        return 1
    ok = status < 500 if any_status else 200 <= status < 300
    if not ok:
        print(f"{url}: HTTP {status}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
