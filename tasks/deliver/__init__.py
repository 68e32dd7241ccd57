"""Deliver the run's files to an SFTP server: key auth, strict host keys, whole files only.

Safety rules this package keeps:

* the server's host key must already be in ``known_hosts`` (``RejectPolicy``; no trust on
  first use); a *changed* key and an *unknown* host are reported differently;
* only the configured private key is used (no agent, no ``~/.ssh`` key search);
* a file is written to a temporary name, its size is checked, and only then is it renamed
  over the final name (``posix-rename@openssh.com``, which replaces atomically); the flows
  upload during the run and rename only once persist succeeded (`staging`);
* the passphrase and key contents never appear in logs or exception messages.

Transient failures (refused/timed-out connection, connection dropped mid-transfer) raise
`SftpTransientError` subclasses and are retried by the tasks; configuration and trust
problems (host key, passphrase, refused key, a refused operation) are not.
"""

from tasks.deliver.errors import (
    AuthRefusedError,
    HostKeyError,
    KeyPassphraseError,
    SftpConnectionLostError,
    SftpDeliveryError,
    SftpKeyFileError,
    SftpPublishError,
    SftpRemoteError,
    SftpTransientError,
    SftpUnavailableError,
    SftpVerificationError,
    is_transient,
)
from tasks.deliver.keys import load_private_key
from tasks.deliver.session import SftpOperation, SftpSession
from tasks.deliver.staging import (
    INCOMING_DIR,
    StagedFile,
    daily_name,
    discard_files,
    incoming_dir,
    publish_files,
    publish_task,
    stage_files,
    stage_task,
)
from tasks.deliver.target import SftpTarget, remote_dir_for, resolve_key_passphrase
from tasks.deliver.transfer import deliver_files_task, upload_files

__all__ = [
    "INCOMING_DIR",
    "AuthRefusedError",
    "HostKeyError",
    "KeyPassphraseError",
    "SftpConnectionLostError",
    "SftpDeliveryError",
    "SftpKeyFileError",
    "SftpOperation",
    "SftpPublishError",
    "SftpRemoteError",
    "SftpSession",
    "SftpTarget",
    "SftpTransientError",
    "SftpUnavailableError",
    "SftpVerificationError",
    "StagedFile",
    "daily_name",
    "deliver_files_task",
    "discard_files",
    "incoming_dir",
    "is_transient",
    "load_private_key",
    "publish_files",
    "publish_task",
    "remote_dir_for",
    "resolve_key_passphrase",
    "stage_files",
    "stage_task",
    "upload_files",
]
