"""Deliver the run's files to an SFTP server: key auth, strict host keys, atomic uploads.

Safety rules this module keeps:

* the server's host key must already be in ``known_hosts`` (``RejectPolicy``; no trust on
  first use); a *changed* key and an *unknown* host are reported differently;
* only the configured private key is used (no agent, no ``~/.ssh`` key search);
* each file is written to a temporary name in the target directory, its size is checked,
  and only then is it renamed over the final name (``posix-rename@openssh.com``, which
  replaces atomically) -- so a retried delivery leaves exactly one whole copy;
* the passphrase and key contents never appear in logs or exception messages.

Transient failures (refused/timed-out connection, connection dropped mid-transfer) raise
`SftpTransientError` subclasses and are retried by `deliver_files_task`; configuration and
trust problems (host key, passphrase, refused key) are not.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import io
import logging
import os
import posixpath
import re
import secrets
import socket
import stat
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import paramiko
from paramiko.sftp import CMD_STATUS
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff
from pydantic import SecretStr

from tasks.retry import retry_when

if TYPE_CHECKING:
    from models.settings import Settings

__all__ = [
    "AuthRefusedError",
    "HostKeyError",
    "KeyPassphraseError",
    "SftpConnectionLostError",
    "SftpDeliveryError",
    "SftpKeyFileError",
    "SftpRemoteError",
    "SftpTarget",
    "SftpTransientError",
    "SftpUnavailableError",
    "SftpVerificationError",
    "deliver_files_task",
    "is_transient",
    "load_private_key",
    "remote_dir_for",
    "resolve_key_passphrase",
    "upload_files",
]

log = logging.getLogger(__name__)

# One SFTP write request per SSH packet: the peer's max packet is 32 KiB for session
# channels (OpenSSH, asyncssh), and paramiko leaves 64 bytes of it for framing; a write
# request adds ~30 bytes of header. A 32 KiB payload would spill into a second tiny packet.
WRITE_CHUNK = 32 * 1024 - 256
# AEAD ciphers first: AES-GCM authenticates inside the cipher (AES-NI), where the CTR modes need an HMAC that
# paramiko computes per packet in Python; servers without GCM negotiate the next cipher paramiko offers
PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
READ_BLOCK = 1024 * 1024
TEMP_MARKER = ".part-"


# -- errors ---------------------------------------------------------------------------------


class SftpDeliveryError(RuntimeError):
    """Delivery failed. ``retryable`` tells whether trying again may help."""

    retryable = False


class SftpTransientError(SftpDeliveryError):
    """A failure that may go away on its own (network, server restart): retried."""

    retryable = True


class SftpUnavailableError(SftpTransientError):
    """The server could not be reached: connection refused, timed out, reset, DNS."""


class SftpConnectionLostError(SftpTransientError):
    """The connection broke after it was established (EOF, reset, timeout mid-transfer)."""


class SftpVerificationError(SftpTransientError):
    """The uploaded file's size on the server differs from what was sent."""


class HostKeyError(SftpDeliveryError):
    """The server's host key is unknown, or differs from the one in known_hosts."""


class KeyPassphraseError(SftpDeliveryError):
    """The private key is encrypted and the passphrase is missing or wrong."""


class SftpKeyFileError(SftpDeliveryError):
    """The private key file is missing, unreadable or of an unsupported type."""


class AuthRefusedError(SftpDeliveryError):
    """The server did not accept the key for this user."""


class SftpRemoteError(SftpDeliveryError):
    """The server refused an SFTP operation (permission denied, not a directory, ...)."""


def is_transient(exc: BaseException) -> bool:
    """True when retrying could help: our transient errors, or raw network errors."""
    if isinstance(exc, SftpDeliveryError):
        return exc.retryable
    return isinstance(exc, (ConnectionError, TimeoutError, EOFError))


# -- target ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SftpTarget:
    """Where and how to connect. ``passphrase`` is masked in ``repr``."""

    host: str
    port: int
    username: str
    key_path: Path
    known_hosts: Path
    remote_base: str = "/upload"
    passphrase: SecretStr | None = field(default=None, repr=False)
    timeout: float = 30.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "key_path", Path(self.key_path).expanduser())
        object.__setattr__(self, "known_hosts", Path(self.known_hosts).expanduser())
        if isinstance(self.passphrase, str):
            object.__setattr__(self, "passphrase", SecretStr(self.passphrase))

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @classmethod
    def from_settings(cls, settings: Settings, passphrase: SecretStr | None = None) -> SftpTarget:
        """Build the target from settings; ConfigError (a ValueError) names what is missing.

        The passphrase is, in order: the ``passphrase`` argument, ``SFTP_KEY_PASSPHRASE``,
        or the Prefect Secret block named by ``SFTP_KEY_PASSPHRASE_BLOCK``.
        """
        from models.settings import ConfigError

        missing = [
            name
            for name, value in (
                ("SFTP_HOST", settings.sftp_host),
                ("SFTP_USERNAME", settings.sftp_username),
                ("SFTP_KEY_PATH", settings.sftp_key_path),
                ("SFTP_KNOWN_HOSTS", settings.sftp_known_hosts),
            )
            if value is None or not str(value).strip()
        ]
        if missing:
            raise ConfigError(
                "SFTP delivery is not fully configured: set " + ", ".join(missing)
                + " (see docs/sftp.md)"
            )
        if passphrase is None or not passphrase.get_secret_value():
            passphrase = resolve_key_passphrase(settings)
        return cls(
            host=settings.sftp_host.strip(),  # type: ignore[union-attr]
            port=settings.sftp_port,
            username=settings.sftp_username.strip(),  # type: ignore[union-attr]
            key_path=Path(settings.sftp_key_path),  # type: ignore[arg-type]
            known_hosts=Path(settings.sftp_known_hosts),  # type: ignore[arg-type]
            remote_base=settings.sftp_remote_base,
            passphrase=passphrase,
        )


def resolve_key_passphrase(settings: Settings) -> SecretStr | None:
    """``SFTP_KEY_PASSPHRASE`` if set, else the value of the Prefect Secret block named by
    ``SFTP_KEY_PASSPHRASE_BLOCK`` (needs the Prefect API), else None."""
    from models.settings import ConfigError

    if settings.sftp_key_passphrase is not None and settings.sftp_key_passphrase.get_secret_value():
        return settings.sftp_key_passphrase
    name = (settings.sftp_key_passphrase_block or "").strip()
    if not name:
        return None
    from prefect.blocks.system import Secret

    try:
        block = Secret.load(name, _sync=True)
    except Exception as exc:  # the message names the block, never its value
        raise ConfigError(
            f"SFTP_KEY_PASSPHRASE_BLOCK: could not load the Prefect Secret block {name!r} "
            f"({type(exc).__name__})"
        ) from None
    # not Secret.get(): it JSON-decodes, turning a passphrase like "1234" into an int
    value = block.value.get_secret_value()
    if not isinstance(value, str):
        raise ConfigError(f"SFTP_KEY_PASSPHRASE_BLOCK: Secret block {name!r} must hold a string")
    return SecretStr(value)


def remote_dir_for(remote_base: str, run_date: date) -> str:
    """The run's remote directory: ``<remote_base>/YYYY-MM-DD``."""
    return f"{remote_base.rstrip('/')}/{run_date.strftime('%Y-%m-%d')}"


# -- private key ----------------------------------------------------------------------------

_OPENSSH_MAGIC = b"openssh-key-v1\x00"
_OPENSSH_BEGIN = "-----BEGIN OPENSSH PRIVATE KEY-----"
_OPENSSH_END = "-----END OPENSSH PRIVATE KEY-----"


def _ssh_strings(blob: bytes, count: int) -> list[bytes]:
    """The first ``count`` SSH wire-format strings (uint32 length + bytes) of ``blob``."""
    out, pos = [], 0
    for _ in range(count):
        if pos + 4 > len(blob):
            raise ValueError("truncated")
        n = int.from_bytes(blob[pos:pos + 4], "big")
        out.append(blob[pos + 4:pos + 4 + n])
        pos += 4 + n
    return out


def _inspect_key(data: bytes) -> tuple[bool | None, type[paramiko.PKey] | None]:
    """(is it passphrase-protected?, paramiko class) read from the file's clear-text parts.

    Either may be None when the format is not recognised. Knowing the class up front means
    the (deliberately slow) bcrypt KDF of an OpenSSH key runs once, not once per guess.
    """
    text = data.decode("ascii", errors="replace")
    if _OPENSSH_BEGIN in text:
        body = text.split(_OPENSSH_BEGIN, 1)[1].split(_OPENSSH_END, 1)[0]
        try:
            blob = base64.b64decode("".join(body.split()))
            if not blob.startswith(_OPENSSH_MAGIC):
                return None, None
            rest = blob[len(_OPENSSH_MAGIC):]
            cipher, _kdf, _kdf_options = _ssh_strings(rest, 3)
            # then: uint32 number of keys, and the clear-text public key blob
            public = _ssh_strings(rest[sum(4 + len(x) for x in (cipher, _kdf, _kdf_options)) + 4:], 1)[0]
            key_type = _ssh_strings(public, 1)[0].decode("ascii", errors="replace")
        except ValueError:
            return None, None
        if key_type == "ssh-ed25519":
            key_class: type[paramiko.PKey] | None = paramiko.Ed25519Key
        elif key_type == "ssh-rsa":
            key_class = paramiko.RSAKey
        elif key_type.startswith("ecdsa-sha2-"):
            key_class = paramiko.ECDSAKey
        else:
            key_class = None
        return cipher != b"none", key_class
    if "-----BEGIN RSA PRIVATE KEY-----" in text:
        return "Proc-Type: 4,ENCRYPTED" in text, paramiko.RSAKey
    if "-----BEGIN EC PRIVATE KEY-----" in text:
        return "Proc-Type: 4,ENCRYPTED" in text, paramiko.ECDSAKey
    if "-----BEGIN ENCRYPTED PRIVATE KEY-----" in text:  # PKCS#8
        return True, None
    if "-----BEGIN PRIVATE KEY-----" in text:
        return False, None
    return None, None


def load_private_key(key_path: Path, passphrase: SecretStr | None) -> paramiko.PKey:
    """Load an RSA, ECDSA or Ed25519 private key (OpenSSH, PEM or PKCS#8 format).

    Raises KeyPassphraseError when the key is encrypted and the passphrase is missing or
    wrong, SftpKeyFileError when the file is missing or not a supported key. Neither the
    passphrase nor the file's contents are ever part of the message.
    """
    key_path = Path(key_path).expanduser()
    try:
        data = key_path.read_bytes()
    except OSError as exc:
        raise SftpKeyFileError(
            f"cannot read private key {key_path} (SFTP_KEY_PATH): "
            f"{exc.strerror or type(exc).__name__}"
        ) from None
    encrypted, key_class = _inspect_key(data)
    secret = passphrase.get_secret_value() if passphrase is not None else ""
    if encrypted and not secret:
        raise KeyPassphraseError(
            f"private key {key_path} is encrypted but no passphrase was given: set "
            "SFTP_KEY_PASSPHRASE or SFTP_KEY_PASSPHRASE_BLOCK"
        )
    # a passphrase for a clear-text key is ignored (the loaders reject the combination)
    password = secret.encode("utf-8") if (encrypted is not False and secret) else None

    loaders: list[Any]
    if key_class is not None:
        loaders = [lambda: key_class.from_private_key_file(str(key_path), password=password)]
    else:  # PKCS#8 or unrecognised: let cryptography/paramiko sniff it, then try each type
        loaders = [lambda: _load_via_cryptography(data, password)]
        loaders += [
            (lambda cls=cls: cls.from_private_key_file(str(key_path), password=password))
            for cls in (paramiko.RSAKey, paramiko.ECDSAKey, paramiko.Ed25519Key)
        ]
    for loader in loaders:
        try:
            return loader()
        except Exception:  # noqa: BLE001  (wrong type or passphrase; details are dropped:
            continue       # they could echo key material)
    if encrypted:
        raise KeyPassphraseError(
            f"could not decrypt private key {key_path}: the passphrase is wrong (or the key "
            "file is damaged); check SFTP_KEY_PASSPHRASE / SFTP_KEY_PASSPHRASE_BLOCK"
        )
    raise SftpKeyFileError(
        f"{key_path} (SFTP_KEY_PATH) is not a usable private key: use an RSA, ECDSA or "
        "Ed25519 key in OpenSSH, PEM or PKCS#8 format"
    )


def _load_via_cryptography(data: bytes, password: bytes | None) -> paramiko.PKey:
    """PKCS#8 (``BEGIN [ENCRYPTED] PRIVATE KEY``), which paramiko's readers do not parse:
    decrypt with cryptography, then hand paramiko the clear OpenSSH encoding in memory."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    key = serialization.load_pem_private_key(data, password=password)
    if isinstance(key, rsa.RSAPrivateKey):
        cls: type[paramiko.PKey] = paramiko.RSAKey
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        cls = paramiko.ECDSAKey
    elif isinstance(key, ed25519.Ed25519PrivateKey):
        cls = paramiko.Ed25519Key
    else:
        raise ValueError("unsupported key type")
    clear = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    return cls.from_private_key(io.StringIO(clear.decode("ascii")))


# -- connection -----------------------------------------------------------------------------


class _UnknownHostKey(paramiko.SSHException):
    def __init__(self, hostname: str, key: paramiko.PKey) -> None:
        super().__init__(f"Server {hostname!r} not found in known_hosts")
        self.hostname = hostname
        self.key = key


def _transport(sock, **kwargs) -> paramiko.Transport:
    """A paramiko Transport that offers `PREFERRED_CIPHERS` first (then its usual list)."""
    transport = paramiko.Transport(sock, **kwargs)
    options = transport.get_security_options()
    offered = options.ciphers
    options.ciphers = tuple(c for c in PREFERRED_CIPHERS if c in offered) + tuple(
        c for c in offered if c not in PREFERRED_CIPHERS)
    return transport


class _RejectUnknownHost(paramiko.RejectPolicy):
    """RejectPolicy that keeps the offered key, so the error can show its fingerprint."""

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        raise _UnknownHostKey(hostname, key)


def _known_hosts_name(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


def _keyscan_hint(target: SftpTarget) -> str:
    port = "" if target.port == 22 else f"-p {target.port} "
    return f"ssh-keyscan {port}{target.host} >> {target.known_hosts}"


def _exc_text(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _describe_key(key: paramiko.PKey) -> str:
    try:
        return f"{key.get_name()} {key.fingerprint}"
    except Exception:  # noqa: BLE001
        return key.get_name()


class _Session:
    """An authenticated SSH connection with an SFTP channel; always closed by ``close``."""

    def __init__(self, target: SftpTarget) -> None:
        self.target = target
        self.client: paramiko.SSHClient | None = None
        self.sftp: paramiko.SFTPClient | None = None

    def __enter__(self) -> _Session:
        try:
            self._open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        sftp, client = self.sftp, self.client
        self.sftp = self.client = None
        try:
            if sftp is not None:
                sftp.close()
        except Exception:  # noqa: BLE001  (the connection may already be gone)
            pass
        finally:
            if client is not None:
                client.close()

    @property
    def usable(self) -> bool:
        """The connection and its SFTP channel are still open."""
        transport = self.client.get_transport() if self.client is not None else None
        channel = self.sftp.get_channel() if self.sftp is not None else None
        return bool(
            transport is not None and transport.is_active()
            and channel is not None and not channel.closed
        )

    def _open(self) -> None:
        t = self.target
        pkey = load_private_key(t.key_path, t.passphrase)
        client = self.client = paramiko.SSHClient()
        try:
            client.load_host_keys(str(t.known_hosts))
        except FileNotFoundError:
            raise HostKeyError(
                f"cannot verify {_known_hosts_name(t.host, t.port)}: the known_hosts file "
                f"{t.known_hosts} (SFTP_KNOWN_HOSTS) does not exist. Create it with the "
                f"server's key, checking the fingerprint out of band: {_keyscan_hint(t)}"
            ) from None
        except Exception as exc:  # noqa: BLE001
            raise HostKeyError(
                f"cannot read the known_hosts file {t.known_hosts} (SFTP_KNOWN_HOSTS): "
                f"{type(exc).__name__}: {exc}"
            ) from None
        client.set_missing_host_key_policy(_RejectUnknownHost())
        name = _known_hosts_name(t.host, t.port)
        try:
            client.connect(
                t.host,
                port=t.port,
                username=t.username,
                pkey=pkey,
                allow_agent=False,
                look_for_keys=False,
                timeout=t.timeout,
                banner_timeout=t.timeout,
                auth_timeout=t.timeout,
                channel_timeout=t.timeout,
                transport_factory=_transport,
            )
        except paramiko.BadHostKeyException as exc:
            raise HostKeyError(
                f"HOST KEY CHANGED for {name}: the server presented {_describe_key(exc.key)}, "
                f"but {t.known_hosts} (SFTP_KNOWN_HOSTS) expects "
                f"{_describe_key(exc.expected_key)}. This can be a man-in-the-middle attack; "
                "nothing was sent. If the server's key really was replaced, verify the new "
                f"fingerprint with its administrator, remove the old entry (ssh-keygen -R "
                f"'{name}' -f {t.known_hosts}) and add the new one: {_keyscan_hint(t)}"
            ) from None
        except _UnknownHostKey as exc:
            raise HostKeyError(
                f"UNKNOWN HOST {name}: it is not in the known_hosts file {t.known_hosts} "
                f"(SFTP_KNOWN_HOSTS); the server offered {_describe_key(exc.key)}. Nothing "
                "was sent. If that fingerprint is right (check it with the server's "
                f"administrator), add the key: {_keyscan_hint(t)}"
            ) from None
        except paramiko.AuthenticationException as exc:
            raise AuthRefusedError(
                f"{t.address} refused the key {t.key_path} ({_describe_key(pkey)}) for user "
                f"{t.username!r} ({type(exc).__name__}). Add the matching public key to that "
                "user's authorized_keys on the server, or check SFTP_USERNAME / SFTP_KEY_PATH."
            ) from None
        except paramiko.ssh_exception.NoValidConnectionsError as exc:
            reasons = sorted({(e.strerror or str(e)).lower() for e in exc.errors.values()})
            raise SftpUnavailableError(
                f"SFTP server {t.address} is unavailable: {', '.join(reasons) or 'connection refused'}"
            ) from None
        except (socket.timeout, TimeoutError):
            raise SftpUnavailableError(
                f"SFTP server {t.address} is unavailable: no answer within {t.timeout:g} s"
            ) from None
        except socket.gaierror as exc:
            raise SftpUnavailableError(
                f"SFTP server {t.address} is unavailable: cannot resolve {t.host!r} ({exc.strerror})"
            ) from None
        except paramiko.ssh_exception.IncompatiblePeer as exc:
            raise SftpDeliveryError(
                f"SFTP server {t.address}: no common SSH algorithms ({exc})"
            ) from None
        except (OSError, EOFError, paramiko.SSHException) as exc:
            # reset / closed during the handshake (sshd MaxStartups, restarts, ...)
            raise SftpUnavailableError(
                f"SFTP server {t.address} is unavailable: SSH handshake failed ({_exc_text(exc)})"
            ) from None
        try:
            self.sftp = client.open_sftp()
        except paramiko.ChannelException as exc:
            raise SftpRemoteError(
                f"{t.address} did not open an SFTP session for {t.username!r}: {exc}"
            ) from None
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise SftpConnectionLostError(
                f"connection to {t.address} lost while opening SFTP: {_exc_text(exc)}"
            ) from None
        channel = self.sftp.get_channel()
        if channel is not None:
            channel.settimeout(t.timeout)  # a stalled server surfaces as a timeout


# -- upload ---------------------------------------------------------------------------------


def _run_logger() -> Any:
    try:
        from prefect.logging import get_run_logger

        return get_run_logger()
    except Exception:  # noqa: BLE001  (MissingContextError outside a flow/task run)
        return log


def _is_missing(exc: OSError) -> bool:
    return isinstance(exc, FileNotFoundError) or exc.errno == errno.ENOENT


def _makedirs(sftp: paramiko.SFTPClient, path: str) -> None:
    """``mkdir -p`` over SFTP (tolerates a concurrent creator)."""
    path = path.rstrip("/") or "/"
    try:
        attrs = sftp.stat(path)
    except OSError as exc:
        if not _is_missing(exc):
            raise
    else:
        if attrs.st_mode is not None and not stat.S_ISDIR(attrs.st_mode):
            raise SftpRemoteError(f"remote path {path} exists and is not a directory")
        return
    parent = posixpath.dirname(path)
    if parent and parent != path:
        _makedirs(sftp, parent)
    try:
        sftp.mkdir(path)
    except OSError:
        attrs = sftp.stat(path)  # raced with another creator? then it is a directory now
        if attrs.st_mode is None or not stat.S_ISDIR(attrs.st_mode):
            raise


def _temp_pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"^\.{re.escape(name)}{re.escape(TEMP_MARKER)}[0-9a-f]{{12}}$")


def _remove_stale_temps(sftp: paramiko.SFTPClient, remote_dir: str, name: str, listing: list[str]) -> int:
    pattern = _temp_pattern(name)
    removed = 0
    for entry in listing:
        if pattern.match(entry):
            try:
                sftp.remove(posixpath.join(remote_dir, entry))
                removed += 1
            except FileNotFoundError:
                pass
    return removed


def _await_write_acks(remote: paramiko.SFTPFile) -> None:
    """Collect the server's status for every pipelined write.

    paramiko files pipelined writes under no file object, so an error status for one of
    the last outstanding writes would be dropped silently at close. Reading them here
    turns such a status (disk full, quota, ...) into an exception.
    """
    pending = getattr(remote, "_reqs", None)
    expecting = getattr(remote.sftp, "_expecting", None)
    if pending is None or expecting is None:
        return  # a paramiko without these internals: rely on the size check alone
    while pending:
        request = pending.popleft()
        if request not in expecting:
            continue  # its reply was already consumed (out-of-order server); don't wait for it
        kind, _ = remote.sftp._read_response(request)
        if kind != CMD_STATUS:
            raise paramiko.SFTPError("unexpected reply to an SFTP write")


def _replace(sftp: paramiko.SFTPClient, source: str, dest: str) -> None:
    """Rename ``source`` over ``dest``, atomically when the server supports POSIX rename."""
    try:
        sftp.posix_rename(source, dest)
        return
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.EACCES):
            raise
    # Server without posix-rename@openssh.com: SFTPv3 rename refuses to overwrite.
    try:
        sftp.remove(dest)
    except FileNotFoundError:
        pass
    sftp.rename(source, dest)


def _upload_one(sftp: paramiko.SFTPClient, local: Path, remote_dir: str, listing: list[str]) -> dict[str, Any]:
    name = local.name
    final = posixpath.join(remote_dir, name)
    stale = _remove_stale_temps(sftp, remote_dir, name, listing)
    if stale:
        _run_logger().info("removed %d stale partial upload(s) of %s in %s", stale, name, remote_dir)
    temp = posixpath.join(remote_dir, f".{name}{TEMP_MARKER}{secrets.token_hex(6)}")
    digest = hashlib.sha256()
    sent = 0
    renamed = False
    try:
        with local.open("rb") as source, sftp.open(temp, "wb") as remote:
            remote.set_pipelined(True)
            while block := source.read(READ_BLOCK):
                digest.update(block)
                view = memoryview(block)
                for offset in range(0, len(view), WRITE_CHUNK):
                    remote.write(view[offset:offset + WRITE_CHUNK])
                sent += len(block)
            _await_write_acks(remote)
        size = sftp.stat(temp).st_size
        if size != sent:
            raise SftpVerificationError(
                f"upload of {name} to {final} is incomplete: the server has {size} bytes, "
                f"{sent} were sent"
            )
        _replace(sftp, temp, final)
        renamed = True
    except BaseException as exc:
        channel = sftp.get_channel()
        connection_ok = channel is not None and not channel.closed and not isinstance(
            exc, (socket.timeout, TimeoutError, EOFError, ConnectionError, paramiko.SSHException)
        )
        if not renamed and connection_ok:
            try:  # best effort; otherwise the next attempt removes it
                sftp.remove(temp)
            except Exception:  # noqa: BLE001
                pass
        raise
    return {"local_path": str(local), "remote_path": final, "bytes": sent, "sha256": digest.hexdigest()}


def _check_local_files(files: list[Path]) -> list[Path]:
    paths = [Path(f) for f in files]
    seen: dict[str, Path] = {}
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"file to deliver does not exist or is not a file: {path}")
        if not os.access(path, os.R_OK):
            raise PermissionError(f"file to deliver is not readable: {path}")
        if path.name in seen:
            raise ValueError(
                f"two files to deliver share the name {path.name!r}: {seen[path.name]} and {path}"
            )
        seen[path.name] = path
    return paths


def upload_files(target: SftpTarget, files: list[Path], remote_dir: str) -> list[dict[str, Any]]:
    """Upload ``files`` into ``remote_dir`` (created with parents if missing).

    Each file goes to a temporary ``.<name>.part-<random>`` in ``remote_dir``, its size is
    checked with ``stat``, then it is renamed over ``<remote_dir>/<name>`` (replacing an
    earlier copy). Leftover temporaries of the same name from an interrupted attempt are
    removed first. Returns, per file, ``local_path``, ``remote_path``, ``bytes``, ``sha256``.
    """
    paths = _check_local_files(files)
    logger = _run_logger()
    results: list[dict[str, Any]] = []
    if not paths:
        logger.info("nothing to deliver to %s", target.address)
        return results
    remote_dir = remote_dir.rstrip("/") or "/"
    step = f"connecting to {target.address}"
    with _Session(target) as session:
        sftp = session.sftp
        assert sftp is not None
        try:
            step = f"creating {remote_dir}"
            _makedirs(sftp, remote_dir)
            listing = sftp.listdir(remote_dir)
            for path in paths:
                step = f"uploading {path.name} to {remote_dir}"
                started = time.perf_counter()
                result = _upload_one(sftp, path, remote_dir, listing)
                elapsed = max(time.perf_counter() - started, 1e-9)
                logger.info(
                    "delivered %s -> %s:%s (%d bytes, %.1f MB/s, sha256 %s)",
                    path.name, target.address, result["remote_path"], result["bytes"],
                    result["bytes"] / elapsed / 1e6, result["sha256"][:12],
                )
                results.append(result)
        except SftpDeliveryError:
            raise
        except (socket.timeout, TimeoutError) as exc:
            raise SftpConnectionLostError(
                f"SFTP server {target.address} stopped answering while {step} "
                f"(no reply within {target.timeout:g} s): {exc}"
            ) from None
        except OSError as exc:
            if session.usable and not isinstance(exc, ConnectionError):
                # an SFTP status (permission denied, no space, ...) on a healthy connection
                raise SftpRemoteError(
                    f"SFTP server {target.address} refused while {step}: {exc}"
                ) from None
            raise SftpConnectionLostError(
                f"connection to {target.address} lost while {step}: {_exc_text(exc)}"
            ) from None
        except (EOFError, paramiko.SSHException) as exc:
            raise SftpConnectionLostError(
                f"connection to {target.address} lost while {step}: {_exc_text(exc)}"
            ) from None
        except paramiko.SFTPError as exc:
            raise SftpRemoteError(
                f"SFTP server {target.address} answered unexpectedly while {step}: {exc}"
            ) from None
    return results


deliver_files_task = task(
    name="sftp-upload",
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_when(is_transient),  # network trouble, never trust/config errors
    cache_policy=NO_CACHE,  # a side effect, and the target holds a secret: never hash/cache
)(upload_files)
