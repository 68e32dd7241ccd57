"""The project's own loopback SFTP server, for the one-command demo (``make run`` without
``SFTP_HOST``).

It is asyncssh's SSH server with an SFTP subsystem confined (``chroot``) to one local
directory, listening on 127.0.0.1 on a free port, in a background thread with its own
event loop. It is set up like a real delivery target so the demo exercises the same code
path (`tasks.deliver.upload_files`, paramiko, strict host keys, key auth):

* host key and an Ed25519 client key are generated once and kept in ``<var_dir>/sftp/``;
  the client key is encrypted with a random passphrase stored in a 0600 file;
* only that client key, for the user ``sluice``, is accepted; no passwords;
* ``known_hosts`` gets the ``[127.0.0.1]:PORT`` line for the port actually bound.

    with running_demo_sftp(Path("var")) as demo:
        upload_files(demo.target(), files, remote_dir_for(demo.remote_base, day))
        # files are now under demo.root / "YYYY-MM-DD"
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncssh
from pydantic import SecretStr

from tasks.deliver import SftpTarget

__all__ = ["DemoSftp", "running_demo_sftp"]

log = logging.getLogger(__name__)

DEMO_HOST = "127.0.0.1"
DEMO_USER = "sluice"
DEMO_REMOTE_BASE = "/"
_KDF_ROUNDS = 16  # the passphrase is random and long; more bcrypt rounds only slow startup
_START_TIMEOUT = 30.0

T = TypeVar("T")


@dataclass(frozen=True)
class DemoSftp:
    """Connection details of a running demo server. ``root`` is the server's ``/`` on the
    local disk, so a file delivered to ``/2024-05-01/x.csv`` is ``root/2024-05-01/x.csv``."""

    host: str
    port: int
    username: str
    key_path: Path
    passphrase: SecretStr = field(repr=False)
    known_hosts: Path
    root: Path
    remote_base: str = DEMO_REMOTE_BASE

    def env(self) -> dict[str, str]:
        """The ``SFTP_*`` variables pointing at this server. Includes the passphrase: pass it
        to a child process's environment, never print or log the mapping."""
        return {
            "SFTP_HOST": self.host,
            "SFTP_PORT": str(self.port),
            "SFTP_USERNAME": self.username,
            "SFTP_KEY_PATH": str(self.key_path),
            "SFTP_KEY_PASSPHRASE": self.passphrase.get_secret_value(),
            "SFTP_KNOWN_HOSTS": str(self.known_hosts),
            "SFTP_REMOTE_BASE": self.remote_base,
        }

    def target(self, timeout: float = 30.0) -> SftpTarget:
        return SftpTarget(
            host=self.host,
            port=self.port,
            username=self.username,
            key_path=self.key_path,
            known_hosts=self.known_hosts,
            remote_base=self.remote_base,
            passphrase=self.passphrase,
            timeout=timeout,
        )


# -- key material ---------------------------------------------------------------------------


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to a file that is 0600 from the moment it exists."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _ensure_keys(state: Path) -> tuple[asyncssh.SSHKey, asyncssh.SSHKey, SecretStr]:
    """(host key, client public key, passphrase), generating what is missing or unusable."""
    state.mkdir(parents=True, exist_ok=True)
    os.chmod(state, 0o700)
    host_path = state / "ssh_host_ed25519_key"
    client_path = state / "id_ed25519"
    secret_path = state / "passphrase"

    try:
        host_key = asyncssh.read_private_key(host_path)
    except (OSError, asyncssh.KeyImportError):
        host_key = asyncssh.generate_private_key("ssh-ed25519", comment="sluice-demo-host")
        _write_private(host_path, host_key.export_private_key("openssh"))

    client_key = None
    try:
        passphrase = secret_path.read_text().strip()
        if passphrase:
            client_key = asyncssh.read_private_key(client_path, passphrase)
    except (OSError, asyncssh.KeyImportError, asyncssh.KeyEncryptionError):
        client_key = None
    if client_key is None:
        passphrase = secrets.token_urlsafe(32)
        client_key = asyncssh.generate_private_key("ssh-ed25519", comment="sluice-demo-client")
        _write_private(secret_path, passphrase.encode() + b"\n")
        _write_private(
            client_path,
            client_key.export_private_key(
                "openssh",
                passphrase=passphrase,
                cipher_name="aes256-ctr",
                rounds=_KDF_ROUNDS,
                ignore_few_rounds=True,
            ),
        )
        client_path.with_name("id_ed25519.pub").write_bytes(client_key.export_public_key("openssh"))
    for path in (host_path, client_path, secret_path):
        os.chmod(path, 0o600)
    public = asyncssh.import_public_key(client_key.export_public_key("openssh"))
    return host_key, public, SecretStr(passphrase)


# -- server ---------------------------------------------------------------------------------


class _DemoSshServer(asyncssh.SSHServer):
    """Accept only ``DEMO_USER`` with the demo client key; track connections to close them."""

    def __init__(self, authorized: asyncssh.SSHAuthorizedKeys, live: set[Any]) -> None:
        self._authorized = authorized
        self._live = live
        self._conn: Any = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        self._live.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        self._live.discard(self._conn)

    def begin_auth(self, username: str) -> bool:
        if username == DEMO_USER:
            self._conn.set_authorized_keys(self._authorized)
        return True  # authentication is always required

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False


class _ServerThread:
    """An asyncio loop in a daemon thread, driven from the caller's thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="demo-sftp", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = _START_TIMEOUT) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        if not self.thread.is_alive():
            self.loop.close()


@contextmanager
def running_demo_sftp(var_dir: Path) -> Iterator[DemoSftp]:
    """Run the demo SFTP server for the duration of the ``with`` block."""
    state = Path(var_dir) / "sftp"
    root = state / "root"
    host_key, client_public, passphrase = _ensure_keys(state)
    root.mkdir(parents=True, exist_ok=True)
    authorized = asyncssh.import_authorized_keys(client_public.export_public_key("openssh").decode("ascii"))
    live: set[Any] = set()
    chroot = os.fsencode(root.resolve())

    async def start() -> Any:
        return await asyncssh.listen(
            DEMO_HOST,
            0,
            server_host_keys=[host_key],
            server_factory=lambda: _DemoSshServer(authorized, live),
            sftp_factory=lambda chan: asyncssh.SFTPServer(chan, chroot=chroot),
            allow_scp=False,
            agent_forwarding=False,
            x11_forwarding=False,
            allow_pty=False,
        )

    async def stop(acceptor: Any) -> None:
        acceptor.close()
        for conn in list(live):
            conn.close()
        await asyncio.gather(*(conn.wait_closed() for conn in list(live)), return_exceptions=True)
        await acceptor.wait_closed()

    worker = _ServerThread()
    acceptor = None
    try:
        acceptor = worker.run(start())
        port = acceptor.get_port()
        known_hosts = state / "known_hosts"
        host_public = " ".join(host_key.export_public_key("openssh").decode("ascii").split()[:2])
        known_hosts.write_text(f"[{DEMO_HOST}]:{port} {host_public}\n")
        demo = DemoSftp(
            host=DEMO_HOST,
            port=port,
            username=DEMO_USER,
            key_path=state / "id_ed25519",
            passphrase=passphrase,
            known_hosts=known_hosts,
            root=root,
        )
        log.info("demo SFTP server listening on %s:%d, serving %s", DEMO_HOST, port, root)
        yield demo
    finally:
        try:
            if acceptor is not None:
                worker.run(stop(acceptor), timeout=10)
        finally:
            worker.close()
