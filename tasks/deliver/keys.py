"""The configured private key, loaded without ever showing the passphrase or the key in a message."""

from __future__ import annotations

import base64
import hmac
import io
from pathlib import Path
from typing import Any

import paramiko
from pydantic import SecretStr

from tasks.deliver.errors import KeyPassphraseError, SftpKeyFileError

_OPENSSH_MAGIC = b"openssh-key-v1\x00"
_OPENSSH_BEGIN = "-----BEGIN OPENSSH PRIVATE KEY-----"
_OPENSSH_END = "-----END OPENSSH PRIVATE KEY-----"


def _ssh_strings(blob: bytes, count: int) -> list[bytes]:
    """The first ``count`` SSH wire-format strings (uint32 length + bytes) of ``blob``."""
    out, pos = [], 0
    for _ in range(count):
        if pos + 4 > len(blob):
            raise ValueError("truncated")
        n = int.from_bytes(blob[pos : pos + 4], "big")
        out.append(blob[pos + 4 : pos + 4 + n])
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
            rest = blob[len(_OPENSSH_MAGIC) :]
            cipher, _kdf, _kdf_options = _ssh_strings(rest, 3)
            # then: uint32 number of keys, and the clear-text public key blob
            public = _ssh_strings(rest[sum(4 + len(x) for x in (cipher, _kdf, _kdf_options)) + 4 :], 1)[0]
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

    The last key loaded is kept while its file and passphrase stay the same: a delivery
    connects twice (upload, then publish after persist), and an OpenSSH key's bcrypt KDF
    takes about a third of a second each time.
    """
    key_path = Path(key_path).expanduser()
    secret = (passphrase.get_secret_value() if passphrase is not None else "").encode("utf-8")
    try:
        info = key_path.stat()
        identity = (str(key_path.resolve()), info.st_mtime_ns, info.st_size, info.st_ino, info.st_mode)
    except OSError:
        identity = None
    kept = _last_key[0] if _last_key else None
    if identity is not None and kept is not None and kept[0] == identity and hmac.compare_digest(kept[1], secret):
        return kept[2]
    key = _read_private_key(key_path, passphrase)
    if identity is not None:
        _last_key[:] = [(identity, secret, key)]
    return key


_last_key: list[tuple] = []  # (file identity, passphrase, key) of the last key loaded


def _read_private_key(key_path: Path, passphrase: SecretStr | None) -> paramiko.PKey:
    try:
        data = key_path.read_bytes()
    except OSError as exc:
        raise SftpKeyFileError(
            f"cannot read private key {key_path} (SFTP_KEY_PATH): {exc.strerror or type(exc).__name__}"
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
            continue  # they could echo key material)
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
