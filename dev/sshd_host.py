"""What the loopback sshd (dev/sshd.py) needs of the host: the SFTP-only user, root-owned directories for
its chroot, its config file, and leftovers of sessions that died cleaned up."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

SSHD = Path(os.environ.get("SLUICE_TEST_SSHD", "/usr/sbin/sshd"))
SSH_KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"
SFTP_USER = "sluicesftp"


class SshdUnavailable(RuntimeError):
    """This machine cannot run the server (no OpenSSH, not root, no SFTP user)."""


def run_tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=True, capture_output=True, text=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_sftp_user() -> tuple[int, int]:
    """Create the SFTP-only system user if missing (idempotent); return (uid, gid)."""
    import pwd  # POSIX only, like the rest of this module

    try:
        pw = pwd.getpwnam(SFTP_USER)
    except KeyError:
        try:
            run_tool(
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
                raise SshdUnavailable(f"could not create user {SFTP_USER}: {exc.stderr.strip()}") from exc
        pw = pwd.getpwnam(SFTP_USER)
    # Without PAM, sshd refuses accounts whose password field starts with "!" (useradd's
    # default, "locked"). "*" means "no password can match" without locking the account.
    shadow = subprocess.run(["getent", "shadow", SFTP_USER], capture_output=True, text=True)
    if shadow.returncode == 0 and shadow.stdout.split(":")[1].startswith("!"):
        run_tool("usermod", "-p", "*", SFTP_USER)
    return pw.pw_uid, pw.pw_gid


def make_dir(path: Path, mode: int = 0o755, owner: tuple[int, int] = (0, 0)) -> Path:
    path.mkdir(mode=mode, exist_ok=True)
    os.chown(path, *owner)
    os.chmod(path, mode)
    return path


def write_config(
    path: Path, *, host: str, port: int, host_key: Path, authorized_keys: Path, chroot: Path, pid_file: Path
) -> None:
    """sshd's config: key auth for the SFTP user only, confined to `chroot`, SFTP and nothing else."""
    lines = [
        f"Port {port}",
        f"ListenAddress {host}",
        f"HostKey {host_key}",
        f"PidFile {pid_file}",
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
        f"    ChrootDirectory {chroot}",
        "    ForceCommand internal-sftp",
        "    AllowTcpForwarding no",
        "    AllowAgentForwarding no",
        "    X11Forwarding no",
        "    PermitTTY no",
        "",
    ]
    path.write_text("\n".join(lines))
    os.chmod(path, 0o644)


def set_config_port(path: Path, port: int) -> None:
    lines = path.read_text().splitlines()
    path.write_text("\n".join(f"Port {port}" if ln.startswith("Port ") else ln for ln in lines) + "\n")


def remove_abandoned(parent: Path, min_age: float = 3600.0) -> None:
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
