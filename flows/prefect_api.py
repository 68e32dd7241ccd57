"""Whether the Prefect API a run talks to is there (a run ends at once when it is lost: flows/runtime.py).
The local Prefect server `make run` starts is dev/prefect_server.py."""

from __future__ import annotations

PROBE_TIMEOUT_SECONDS = 5.0


def api_answers(api_url: str, *, timeout: float = PROBE_TIMEOUT_SECONDS) -> bool:
    """Whether the Prefect API at `api_url` is there: any HTTP answer to its health check (an error status
    too: a server answered), not a refused or timed-out connection."""
    import httpx

    try:
        httpx.get(f"{api_url}/health", timeout=timeout)
    except httpx.TransportError:
        return False
    return True
