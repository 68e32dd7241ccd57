"""The local Prefect server of development: the one a one-off run (`make run`, the benchmark's flow process,
the test session) starts for itself. Empty databases for test servers and `make server` on a free port are
in dev/prefect_helpers.py.

Without an API configured, Prefect would start a temporary server at the flow's first API call, after the
flow process has imported everything, and import Prefect's whole server just to launch it. `local_prefect_api`
launches the same kind of server (Prefect's app, background services off, on Prefect's own database) as the
run starts, before Prefect is imported, so its start-up overlaps the pipeline's imports.

Run as `python -m dev.prefect_server <fd> <pid>`, this module is that server: it serves on the listening
socket the parent bound and handed over (no race for a port)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
POLL_SECONDS = 0.05
STOP_SECONDS = 5
PARENT_CHECK_SECONDS = 1.0


class PrefectApiError(RuntimeError):
    """The local Prefect server did not come up."""


def log_tail(path: Path | None, lines: int = 60) -> str:
    """The last lines a server wrote to its log, for an error message."""
    if path is None or not path.exists():
        return "(no output)"
    return f"--- last lines of {path.name} ---\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def wait_until_healthy(
    process: subprocess.Popen,
    api_url: str,
    *,
    timeout: float,
    log_path: Path | None,
    what: str = "the local Prefect server",
) -> None:
    """Block until the Prefect server `process` runs answers `api_url`/health; raise PrefectApiError with its
    last output as soon as it exits, or once `timeout` seconds have passed."""
    import httpx  # here, not at the top: `make run` launches the server before importing what the launch does not need

    deadline = time.monotonic() + timeout
    # a socket that listens already keeps a request in its backlog until the server takes it
    with httpx.Client(timeout=10) as client:
        while True:
            if process.poll() is not None:
                raise PrefectApiError(f"{what} exited with code {process.returncode}; {log_tail(log_path)}")
            try:
                if client.get(f"{api_url}/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise PrefectApiError(f"{what} did not answer within {timeout:.0f} s; {log_tail(log_path)}")
            time.sleep(POLL_SECONDS)


@dataclass
class LocalApi:
    """The API a run talks to; `process` is None when it is a configured one, not started here."""

    url: str | None
    process: subprocess.Popen | None = None
    log_path: Path | None = None
    startup_timeout: float = 0.0  # PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, for a server started here

    def wait_ready(self) -> None:
        """Block until the server started here answers its health check (at once for a configured API)."""
        if self.process is not None:
            wait_until_healthy(self.process, self.url, timeout=self.startup_timeout, log_path=self.log_path)


def _launch(log_dir: Path | str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str, Path]:
    """The server process (reading Prefect's settings from the same environment, profile and files as this
    one, with `env` on top), its API URL and its log."""
    log_path = Path(log_dir) / "prefect-local-server.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        listener = stack.enter_context(socket.create_server(("127.0.0.1", 0)))
        log = stack.enter_context(open(log_path, "wb"))
        path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))  # `dev` is not installed
        # a session of its own: a Ctrl-C at the terminal reaches this process, which sends the queued logs
        # and events first and then stops the server (the server stops itself if this process dies)
        process = subprocess.Popen(
            [sys.executable, "-m", __name__, str(listener.fileno()), str(os.getpid())],
            pass_fds=(listener.fileno(),),
            env=os.environ | {"PREFECT_UI_ENABLED": "false", "PYTHONPATH": path} | (env or {}),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        return process, f"http://127.0.0.1:{listener.getsockname()[1]}/api", log_path


@contextmanager
def local_prefect_api(log_dir: Path | str = "var") -> Iterator[LocalApi]:
    """The configured Prefect API, else a server started here for as long as the block lasts: this process's
    PREFECT_API_URL points at it meanwhile. Call `wait_ready()` before the first flow; import the flows in
    between. On leaving, Prefect's queued logs and events are sent before the server stops.

    Unless the environment names an API (or turns Prefect's temporary servers off), the server is launched
    before Prefect's settings are even imported, as it takes the longest to be ready; should those settings
    name an API after all (a profile, prefect.toml), it is stopped unused."""
    early = None
    if not os.environ.get("PREFECT_API_URL") and os.environ.get("PREFECT_SERVER_EPHEMERAL_ENABLED", "").lower() not in (
        "0",
        "false",
    ):
        early = _launch(log_dir)
    needed = False
    try:
        from prefect.settings import get_current_settings

        settings = get_current_settings()
        # Prefect's own rule for starting a temporary server: no API configured and ephemeral mode allowed
        needed = not settings.api.url and settings.server.ephemeral.enabled
    finally:
        if early is not None and not needed:
            _stop(early[0])
    if not needed:
        yield LocalApi(url=settings.api.url)
        return
    with _pointed_at(*(early or _launch(log_dir)), settings.server.ephemeral.startup_timeout_seconds) as api:
        yield api


@contextmanager
def started_prefect_api(log_dir: Path | str, *, env: dict[str, str], startup_timeout: float) -> Iterator[LocalApi]:
    """A server started here whatever Prefect's settings name (the test session's, on a database of its own
    given by `env`); as in `local_prefect_api`, this process talks to it while the block lasts."""
    with _pointed_at(*_launch(log_dir, env), startup_timeout) as api:
        yield api


@contextmanager
def _pointed_at(process: subprocess.Popen, url: str, log_path: Path, startup_timeout: float) -> Iterator[LocalApi]:
    """This process's PREFECT_API_URL is the server's while the block lasts; on leaving, Prefect's queued logs
    and events are sent, then the server stops. Flow runs in the block send no heartbeats: they tell a server
    a run is alive, and this server stops with the run and runs no triggers watching for them."""
    from prefect.context import refresh_global_settings_context
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    os.environ["PREFECT_API_URL"] = url
    refresh_global_settings_context()
    try:
        with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            yield LocalApi(url=url, process=process, log_path=log_path, startup_timeout=startup_timeout)
    finally:
        try:
            _send_queued_logs_and_events()
        finally:
            os.environ.pop("PREFECT_API_URL", None)
            refresh_global_settings_context()
            _stop(process)


def _send_queued_logs_and_events() -> None:
    """What Prefect's log and event workers still hold goes out while the server is up (Prefect itself
    drains them at exit, after a server of ours would be gone)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=STOP_SECONDS)
    EventsWorker.drain_all(timeout=STOP_SECONDS)


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=STOP_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def queue_sqlite_writers() -> None:
    """On SQLite, every transaction Prefect's server opens takes the write lock when it begins (BEGIN
    IMMEDIATE), waiting its turn behind another writer, instead of asking for it at its first write (BEGIN
    DEFERRED), a request SQLite cannot make wait: "database is locked", a 503, and Prefect's client trying
    again seconds later. Nothing changes on PostgreSQL."""
    from prefect.server.database.configurations import AioSqliteConfiguration
    from prefect.server.database.dependencies import set_database_config
    from prefect.settings import get_current_settings

    url = get_current_settings().server.database.connection_url
    if url is None or not url.get_secret_value().startswith("sqlite"):
        return

    class QueuedWriters(AioSqliteConfiguration):
        @asynccontextmanager
        async def begin_transaction(self, session, with_for_update: bool = False):
            async with super().begin_transaction(session, with_for_update=True) as transaction:
                yield transaction

    set_database_config(QueuedWriters(connection_url=url.get_secret_value()))


def serve(fd: int, parent: int) -> None:
    """Prefect's API app as Prefect's temporary server runs it (`ephemeral`: no UI, no background services)
    on the inherited listening socket, until stopped or until the process that started it is gone (killed
    before it could stop the server: no server is left behind holding Prefect's database). On SQLite, its
    writers queue for the database (`queue_sqlite_writers`)."""
    import uvicorn
    from prefect.server.api.server import create_app

    queue_sqlite_writers()
    listener = socket.socket(fileno=fd)
    server = uvicorn.Server(uvicorn.Config(create_app(ephemeral=True, final=True), log_level="error", lifespan="on"))

    def stop_when_orphaned() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_SECONDS)
        server.should_exit = True

    threading.Thread(target=stop_when_orphaned, name="parent-watch", daemon=True).start()
    server.run(sockets=[listener])


def run_artifacts(run_id: str) -> dict[str, str]:
    """The artifacts a flow run made, by key, read back from the Prefect API the run used (as its UI shows them)."""
    from uuid import UUID

    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(run_id)]))
        )
    return {a.key: a.data for a in found}


if __name__ == "__main__":
    serve(int(sys.argv[1]), int(sys.argv[2]))
