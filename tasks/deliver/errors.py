"""What can go wrong in a delivery; `retryable` (and `is_transient`) says whether another try can help."""

from __future__ import annotations


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


class SftpPublishError(SftpDeliveryError):
    """A staged upload is gone or changed on the server before publishing: nothing was published."""


def is_transient(exc: BaseException) -> bool:
    """True when retrying could help: our transient errors, or raw network errors."""
    if isinstance(exc, SftpDeliveryError):
        return exc.retryable
    return isinstance(exc, (ConnectionError, TimeoutError, EOFError))
