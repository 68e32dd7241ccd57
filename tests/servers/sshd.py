"""A real OpenSSH sshd on loopback for the SFTP delivery tests (pytest plugin).

Register with ``pytest_plugins = ["tests.servers.sshd"]`` in ``tests/conftest.py``.

The server is the system's ``/usr/sbin/sshd`` run in the foreground (``-D -e``) as root
with its own config, host key and authorized key, on a free 127.0.0.1 port:

* a dedicated system user (``sluicesftp``, created with ``useradd`` when missing) that can
  only use SFTP (``ForceCommand internal-sftp``) inside a ``ChrootDirectory``;
* the chroot lives under ``/srv/sluice-sftp-test/<random>/`` (outside the system temp dir,
  because sshd requires every component of the chroot path to be root-owned and not
  group/world-writable); inside it ``upload/`` belongs to the SFTP user;
* the client key is an Ed25519 key encrypted with a random passphrase; ``known_hosts``
  holds ``[127.0.0.1]:PORT <host key>``.

Needs root and OpenSSH. Without them the tests are skipped, except in CI (``CI=true``),
where a missing prerequisite fails the run instead.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SSHD = Path(os.environ.get("SLUICE_TEST_SSHD", "/usr/sbin/sshd"))
SSH_KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"
SFTP_USER = "sluicesftp"
CHROOT_PARENT = Path("/srv/sluice-sftp-test")
PRIVSEP_DIR = Path("/run/sshd")
REMOTE_BASE = "/upload"
START_TIMEOUT = 15.0

__all__ = ["SshdServer", "sshd_server", "sshd"]


def _unavailable(reason: str) -> None:
    """Skip locally; fail in CI, where the SFTP tests must run."""
    if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
        pytest.fail(f"sshd test server unavailable in CI: {reason}", pytrace=False)
    pytest.skip(f"sshd test server unavailable: {reason}")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=True, capture_output=True, text=True)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ensure_sftp_user() -> tuple[int, int]:
    """Create the SFTP-only system user if missing (idempotent); return (uid, gid)."""
    import pwd  # POSIX only, like the rest of this module

    try:
        pw = pwd.getpwnam(SFTP_USER)
    except KeyError:
        try:
            _run(
                "useradd",
                "--system",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                SFTP_USER,
            )
        except subprocess.CalledProcessError as exc:
            # a parallel session may have created it in the meantime
            try:
                pwd.getpwnam(SFTP_USER)
            except KeyError:
                _unavailable(f"could not create user {SFTP_USER}: {exc.stderr.strip()}")
        pw = pwd.getpwnam(SFTP_USER)
    # Without PAM, sshd refuses accounts whose password field starts with "!" (useradd's
    # default, "locked"). "*" means "no password can match" without locking the account.
    shadow = subprocess.run(["getent", "shadow", SFTP_USER], capture_output=True, text=True)
    if shadow.returncode == 0 and shadow.stdout.split(":")[1].startswith("!"):
        _run("usermod", "-p", "*", SFTP_USER)
    return pw.pw_uid, pw.pw_gid


def _mkdir(path: Path, mode: int = 0o755, owner: tuple[int, int] = (0, 0)) -> Path:
    path.mkdir(mode=mode, exist_ok=True)
    os.chown(path, *owner)
    os.chmod(path, mode)
    return path


def _proc_children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # the command name may contain spaces/parens: the fields after the last ')' are fixed
        ppid = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


@dataclass
class SshdServer:
    """A running (or stopped) OpenSSH test server and the client material for it.

    ``remote_base`` is the chroot-relative directory the SFTP user may write to;
    ``local_root`` is the same directory on the local disk (``<chroot>/upload``).
    """

    host: str
    port: int
    username: str
    key_path: Path
    passphrase: str = field(repr=False)
    known_hosts: Path
    remote_base: str
    local_root: Path
    base_dir: Path
    config_dir: Path
    chroot: Path
    config_path: Path
    log_path: Path
    host_public_key: str
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _log_file: object | None = field(default=None, repr=False)

    # lifecycle -------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running else None

    def start(self) -> None:
        """Start sshd (no-op when running) and wait until it sends its banner."""
        if self.running:
            return
        log = open(self.log_path, "ab")  # noqa: SIM115  (kept open for the child's lifetime)
        try:
            self._proc = subprocess.Popen(
                [str(SSHD), "-D", "-e", "-f", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        finally:
            log.close()  # the child holds its own descriptor
        deadline = time.monotonic() + START_TIMEOUT
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"sshd exited with status {self._proc.returncode}:\n{self.log_text()[-2000:]}")
            try:
                with socket.create_connection((self.host, self.port), timeout=2) as s:
                    s.settimeout(2)
                    if s.recv(256).startswith(b"SSH-2.0-"):
                        return
            except OSError as exc:
                last_error = exc
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"sshd did not answer on {self.host}:{self.port}: {last_error}")

    def stop(self) -> None:
        """Stop the listener and every per-connection sshd process it started."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            self.kill_connections()  # (while `_proc` still says the server runs: it finds them by it)
        self._proc = None
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    # helpers for tests -------------------------------------------------------------------

    def connection_pids(self) -> list[int]:
        """PIDs of the per-connection sshd processes (all descendants of the listener)."""
        if not self.running:
            return []
        tree = _proc_children()
        found: list[int] = []
        todo = list(tree.get(self._proc.pid, []))  # type: ignore[union-attr]
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo.extend(tree.get(pid, []))
        return found

    def kill_connections(self) -> int:
        """SIGKILL every live SSH connection (the listener stays up); return how many."""
        pids = self.connection_pids()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return len(pids)

    def wrong_known_hosts(self, path: Path) -> Path:
        """Write a known_hosts at ``path`` naming this host:port with a *different* key."""
        key = path.parent / f".{path.name}.otherhostkey"
        if not key.exists():
            _run(SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(key))
        public = key.with_name(key.name + ".pub").read_text().split()[:2]
        path.write_text(f"[{self.host}]:{self.port} {' '.join(public)}\n")
        return path

    def make_client_key(self, path: Path, passphrase: str = "") -> Path:
        """A fresh Ed25519 key pair at ``path`` that this server does NOT authorise."""
        _run(SSH_KEYGEN, "-q", "-t", "ed25519", "-N", passphrase, "-C", "", "-f", str(path))
        return path

    def clear_uploads(self) -> None:
        """Empty ``local_root`` (the SFTP user's writable directory)."""
        for child in self.local_root.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


def _write_config(server: SshdServer, host_key: Path, authorized_keys: Path) -> None:
    server.config_path.write_text(
        "\n".join(
            [
                f"Port {server.port}",
                f"ListenAddress {server.host}",
                f"HostKey {host_key}",
                f"PidFile {server.config_dir / 'sshd.pid'}",
                f"AuthorizedKeysFile {authorized_keys}",
                "AuthenticationMethods publickey",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "HostbasedAuthentication no",
                "PermitRootLogin no",
                f"AllowUsers {SFTP_USER}",
                "UsePAM no",
                "StrictModes yes",
                "UseDNS no",
                "LoginGraceTime 30",
                "MaxStartups 50",
                "LogLevel VERBOSE",
                "Subsystem sftp internal-sftp",
                f"Match User {SFTP_USER}",
                f"    ChrootDirectory {server.chroot}",
                "    ForceCommand internal-sftp",
                "    AllowTcpForwarding no",
                "    AllowAgentForwarding no",
                "    X11Forwarding no",
                "    PermitTTY no",
                "",
            ]
        )
    )
    os.chmod(server.config_path, 0o644)


def _remove_abandoned(parent: Path, min_age: float = 3600.0) -> None:
    """Delete server directories left by sessions that died without teardown."""
    for base in parent.iterdir() if parent.is_dir() else []:
        try:
            if time.time() - base.stat().st_mtime < min_age:
                continue
            pid_file = base / "etc" / "sshd.pid"
            if pid_file.exists():
                try:
                    os.kill(int(pid_file.read_text().strip()), 0)
                    continue  # its sshd still runs
                except (ProcessLookupError, ValueError):
                    pass
            shutil.rmtree(base, ignore_errors=True)
        except OSError:
            continue


def _build_server() -> SshdServer:
    if not SSHD.exists():
        _unavailable(f"{SSHD} is not installed (apt-get install openssh-server)")
    if not Path(SSH_KEYGEN).exists():
        _unavailable("ssh-keygen is not installed (apt-get install openssh-client)")
    if os.geteuid() != 0:
        _unavailable("the sshd fixture must run as root (chroot, dedicated user)")

    uid_gid = _ensure_sftp_user()
    if not PRIVSEP_DIR.is_dir():  # sshd refuses to start without its privsep directory
        _mkdir(PRIVSEP_DIR)

    _mkdir(CHROOT_PARENT.parent)
    _mkdir(CHROOT_PARENT)
    _remove_abandoned(CHROOT_PARENT)
    base = _mkdir(CHROOT_PARENT / secrets.token_hex(6))
    config_dir = _mkdir(base / "etc")
    chroot = _mkdir(base / "chroot")
    local_root = _mkdir(chroot / REMOTE_BASE.strip("/"), owner=uid_gid)

    host_key = config_dir / "ssh_host_ed25519_key"
    _run(SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", "sluice-test-host", "-f", str(host_key))
    passphrase = secrets.token_urlsafe(18)
    client_key = config_dir / "id_ed25519"
    _run(SSH_KEYGEN, "-q", "-t", "ed25519", "-N", passphrase, "-C", "sluice-test-client", "-f", str(client_key))
    authorized_keys = config_dir / "authorized_keys"
    shutil.copyfile(client_key.with_name("id_ed25519.pub"), authorized_keys)
    os.chmod(authorized_keys, 0o644)  # sshd reads it with the user's uid

    host_public = " ".join(host_key.with_name(host_key.name + ".pub").read_text().split()[:2])
    port = _free_port()
    known_hosts = config_dir / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{port} {host_public}\n")

    server = SshdServer(
        host="127.0.0.1",
        port=port,
        username=SFTP_USER,
        key_path=client_key,
        passphrase=passphrase,
        known_hosts=known_hosts,
        remote_base=REMOTE_BASE,
        local_root=local_root,
        base_dir=base,
        config_dir=config_dir,
        chroot=chroot,
        config_path=config_dir / "sshd_config",
        log_path=config_dir / "sshd.log",
        host_public_key=host_public,
    )
    _write_config(server, host_key, authorized_keys)
    check = subprocess.run([str(SSHD), "-t", "-f", str(server.config_path)], capture_output=True, text=True)
    if check.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        raise RuntimeError(f"sshd rejected the test config: {check.stderr.strip()}")
    return server


@pytest.fixture(scope="session")
def sshd_server() -> Iterator[SshdServer]:
    """Session-wide real OpenSSH SFTP server (see the module docstring)."""
    server = _build_server()
    try:
        for attempt in range(3):
            try:
                server.start()
                break
            except RuntimeError:
                # the free port may have been taken between probing and binding
                if attempt == 2 or "Address already in use" not in server.log_text():
                    raise
                server.port = _free_port()
                server.known_hosts.write_text(f"[127.0.0.1]:{server.port} {server.host_public_key}\n")
                _write_config_port(server)
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.base_dir, ignore_errors=True)


def _write_config_port(server: SshdServer) -> None:
    lines = server.config_path.read_text().splitlines()
    server.config_path.write_text(
        "\n".join(f"Port {server.port}" if ln.startswith("Port ") else ln for ln in lines) + "\n"
    )


@pytest.fixture()
def sshd(sshd_server: SshdServer) -> Iterator[SshdServer]:
    """The session server, running, with an empty upload directory; restarted afterwards
    if a test stopped it."""
    sshd_server.start()
    sshd_server.clear_uploads()
    try:
        yield sshd_server
    finally:
        sshd_server.kill_connections()
        sshd_server.start()
