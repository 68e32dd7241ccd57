"""A real OpenSSH sshd on loopback: the SFTP peer of the delivery tests (tests/servers/sshd.py) and of
`make bench`.

The server is the system's ``/usr/sbin/sshd`` run in the foreground (``-D -e``) as root
with its own config, host key and authorized key, on a free 127.0.0.1 port:

* a dedicated system user (``sluicesftp``, created with ``useradd`` when missing) that can
  only use SFTP (``ForceCommand internal-sftp``) inside a ``ChrootDirectory``;
* the chroot lives under ``/srv/sluice-sftp-test/<random>/`` (outside the system temp dir,
  because sshd requires every component of the chroot path to be root-owned and not
  group/world-writable); inside it ``upload/`` belongs to the SFTP user;
* the client key is an Ed25519 key encrypted with a random passphrase; ``known_hosts``
  holds ``[127.0.0.1]:PORT <host key>``.

Needs root and OpenSSH; without them `build_sshd` raises SshdUnavailable.
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
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from dev.sshd_host import (
    SFTP_USER,
    SSH_KEYGEN,
    SSHD,
    SshdUnavailable,
    ensure_sftp_user,
    free_port,
    make_dir,
    remove_abandoned,
    run_tool,
    set_config_port,
    write_config,
)

CHROOT_PARENT = Path("/srv/sluice-sftp-test")
PRIVSEP_DIR = Path("/run/sshd")
REMOTE_BASE = "/upload"
START_TIMEOUT = 15.0

__all__ = ["SshdServer", "SshdUnavailable", "build_sshd", "running_sshd"]


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

    def sftp_settings(self) -> dict[str, object]:
        """Sluice's SFTP settings pointing at this server (lower-case names, as `settings_env` takes them)."""
        return {
            "sftp_host": self.host,
            "sftp_port": self.port,
            "sftp_username": self.username,
            "sftp_key_path": self.key_path,
            "sftp_known_hosts": self.known_hosts,
            "sftp_key_passphrase": self.passphrase,
            "sftp_remote_base": self.remote_base,
        }

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
            run_tool(SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(key))
        public = key.with_name(key.name + ".pub").read_text().split()[:2]
        path.write_text(f"[{self.host}]:{self.port} {' '.join(public)}\n")
        return path

    def make_client_key(self, path: Path, passphrase: str = "") -> Path:
        """A fresh Ed25519 key pair at ``path`` that this server does NOT authorise."""
        run_tool(SSH_KEYGEN, "-q", "-t", "ed25519", "-N", passphrase, "-C", "", "-f", str(path))
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


def build_sshd() -> SshdServer:
    """A configured server, not started yet; SshdUnavailable when this machine cannot run one."""
    if not SSHD.exists():
        raise SshdUnavailable(f"{SSHD} is not installed (apt-get install openssh-server)")
    if not Path(SSH_KEYGEN).exists():
        raise SshdUnavailable("ssh-keygen is not installed (apt-get install openssh-client)")
    if os.geteuid() != 0:
        raise SshdUnavailable("sshd must run as root here (chroot, dedicated user)")

    uid_gid = ensure_sftp_user()
    if not PRIVSEP_DIR.is_dir():  # sshd refuses to start without its privsep directory
        make_dir(PRIVSEP_DIR)

    make_dir(CHROOT_PARENT.parent)
    make_dir(CHROOT_PARENT)
    remove_abandoned(CHROOT_PARENT)
    base = make_dir(CHROOT_PARENT / secrets.token_hex(6))
    config_dir = make_dir(base / "etc")
    chroot = make_dir(base / "chroot")
    local_root = make_dir(chroot / REMOTE_BASE.strip("/"), owner=uid_gid)

    host_key = config_dir / "ssh_host_ed25519_key"
    run_tool(SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", "sluice-test-host", "-f", str(host_key))
    passphrase = secrets.token_urlsafe(18)
    client_key = config_dir / "id_ed25519"
    run_tool(SSH_KEYGEN, "-q", "-t", "ed25519", "-N", passphrase, "-C", "sluice-test-client", "-f", str(client_key))
    authorized_keys = config_dir / "authorized_keys"
    shutil.copyfile(client_key.with_name("id_ed25519.pub"), authorized_keys)
    os.chmod(authorized_keys, 0o644)  # sshd reads it with the user's uid

    host_public = " ".join(host_key.with_name(host_key.name + ".pub").read_text().split()[:2])
    port = free_port()
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
    write_config(
        server.config_path,
        host=server.host,
        port=port,
        host_key=host_key,
        authorized_keys=authorized_keys,
        chroot=chroot,
        pid_file=config_dir / "sshd.pid",
    )
    check = subprocess.run([str(SSHD), "-t", "-f", str(server.config_path)], capture_output=True, text=True)
    if check.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        raise RuntimeError(f"sshd rejected its config: {check.stderr.strip()}")
    return server


@contextmanager
def running_sshd(server: SshdServer | None = None) -> Iterator[SshdServer]:
    """`server` (else a new one) started for as long as the block lasts; stopped and its directory removed
    after."""
    server = server or build_sshd()
    try:
        for attempt in range(3):
            try:
                server.start()
                break
            except RuntimeError:
                # the free port may have been taken between probing and binding
                if attempt == 2 or "Address already in use" not in server.log_text():
                    raise
                server.port = free_port()
                server.known_hosts.write_text(f"[127.0.0.1]:{server.port} {server.host_public_key}\n")
                set_config_port(server.config_path, server.port)
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.base_dir, ignore_errors=True)
