"""An authenticated SFTP session (strict host keys, the configured key only) and the translation of what
paramiko raises into errors that say what was being done and how to fix it."""

from __future__ import annotations

import socket

import paramiko

from tasks.deliver.errors import (
    AuthRefusedError,
    HostKeyError,
    SftpConnectionLostError,
    SftpDeliveryError,
    SftpRemoteError,
    SftpUnavailableError,
)
from tasks.deliver.keys import load_private_key
from tasks.deliver.target import SftpTarget

# AEAD ciphers first: AES-GCM authenticates inside the cipher (AES-NI), where the CTR modes need an HMAC that
# paramiko computes per packet in Python; servers without GCM negotiate the next cipher paramiko offers
PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")


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
        c for c in offered if c not in PREFERRED_CIPHERS
    )
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


def exc_text(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _describe_key(key: paramiko.PKey) -> str:
    try:
        return f"{key.get_name()} {key.fingerprint}"
    except Exception:  # noqa: BLE001
        return key.get_name()


class SftpSession:
    """An authenticated SSH connection with an SFTP channel; always closed by ``close``."""

    def __init__(self, target: SftpTarget) -> None:
        self.target = target
        self.client: paramiko.SSHClient | None = None
        self.sftp: paramiko.SFTPClient | None = None

    def __enter__(self) -> SftpSession:
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
        return bool(transport is not None and transport.is_active() and channel is not None and not channel.closed)

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
                f"cannot read the known_hosts file {t.known_hosts} (SFTP_KNOWN_HOSTS): {type(exc).__name__}: {exc}"
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
            raise SftpDeliveryError(f"SFTP server {t.address}: no common SSH algorithms ({exc})") from None
        except (OSError, EOFError, paramiko.SSHException) as exc:
            # reset / closed during the handshake (sshd MaxStartups, restarts, ...)
            raise SftpUnavailableError(
                f"SFTP server {t.address} is unavailable: SSH handshake failed ({exc_text(exc)})"
            ) from None
        try:
            self.sftp = client.open_sftp()
        except paramiko.ChannelException as exc:
            raise SftpRemoteError(f"{t.address} did not open an SFTP session for {t.username!r}: {exc}") from None
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise SftpConnectionLostError(
                f"connection to {t.address} lost while opening SFTP: {exc_text(exc)}"
            ) from None
        channel = self.sftp.get_channel()
        if channel is not None:
            channel.settimeout(t.timeout)  # a stalled server surfaces as a timeout


class SftpOperation:
    """``with SftpOperation(session) as op:`` ... set ``op.step`` before each step; a failure of paramiko or
    the connection leaves the block as an `SftpDeliveryError` naming the step (transient when the
    connection is gone, `SftpRemoteError` when a healthy server refused)."""

    def __init__(self, session: SftpSession) -> None:
        self.session = session
        self.step = f"connecting to {session.target.address}"

    def __enter__(self) -> SftpOperation:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, _tb: object) -> None:
        if exc is None or isinstance(exc, SftpDeliveryError) or not isinstance(exc, Exception):
            return
        t, step = self.session.target, self.step
        if isinstance(exc, (socket.timeout, TimeoutError)):
            raise SftpConnectionLostError(
                f"SFTP server {t.address} stopped answering while {step} (no reply within {t.timeout:g} s): {exc}"
            ) from None
        if isinstance(exc, OSError):
            if self.session.usable and not isinstance(exc, ConnectionError):
                # an SFTP status (permission denied, no space, ...) on a healthy connection
                raise SftpRemoteError(f"SFTP server {t.address} refused while {step}: {exc}") from None
            raise SftpConnectionLostError(f"connection to {t.address} lost while {step}: {exc_text(exc)}") from None
        if isinstance(exc, (EOFError, paramiko.SSHException)):
            raise SftpConnectionLostError(f"connection to {t.address} lost while {step}: {exc_text(exc)}") from None
        if isinstance(exc, paramiko.SFTPError):
            raise SftpRemoteError(f"SFTP server {t.address} answered unexpectedly while {step}: {exc}") from None
