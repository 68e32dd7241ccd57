"""The staging store: where runs stage their files (and a sharded run's shards leave theirs for the parent), a
local folder or an S3 prefix (STAGING_URL), read back by byte range. Both go through fsspec; the filesystem is
made on first use.

Keys are relative posix paths ('runs/<run id>/shard-1/processed.jsonl'). A missing bucket, refused credentials
or an unreachable endpoint raise `StagingError`, whose message names the setting to fix and never a secret."""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson

from models.secrets import secret_block_value
from models.settings import ConfigError

if TYPE_CHECKING:
    from models.settings import Settings

CREDENTIAL_VARS = "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"


class StagingError(RuntimeError):
    """The staging store cannot be reached or used; the message names the setting to fix, never a secret."""


def _no_userinfo(url: str) -> str:
    """`url` without any user:password@ part, fit for a message."""
    parts = urlsplit(url)
    return parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1]).geturl()


def _secret_credentials(block_name: str) -> tuple[str, str]:
    """The key and secret held by the Prefect Secret block STAGING_SECRET_BLOCK names."""
    try:
        value = secret_block_value(block_name, "STAGING_SECRET_BLOCK")
    except ConfigError as exc:
        raise StagingError(str(exc)) from None
    if isinstance(value, str):  # saved as a JSON text
        with contextlib.suppress(ValueError):
            value = orjson.loads(value)
    if isinstance(value, dict) and isinstance(value.get("key"), str) and isinstance(value.get("secret"), str):
        return value["key"], value["secret"]
    raise StagingError(
        f"STAGING_SECRET_BLOCK: the Prefect Secret block {block_name!r} must hold JSON "
        '{"key": "<access key id>", "secret": "<secret access key>"}'
    )


def _check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in key:
        raise ValueError(f"not a relative posix key of the staging store: {key!r}")
    return key


class StagingStore:
    """A folder or an S3 prefix; keys are relative posix paths like 'runs/<run id>/shard-1/processed.jsonl'."""

    def __init__(self, url: str, *, endpoint_url: str | None = None, secret_block: str | None = None) -> None:
        scheme = url.split("://", 1)[0].lower() if "://" in url else ""
        self._endpoint_url = None
        self._secret_block = secret_block
        if scheme == "s3":
            parts = urlsplit(url)
            if "@" in parts.netloc or parts.query or parts.fragment or not parts.netloc:
                raise ConfigError(
                    f"STAGING_URL: expected s3://bucket/prefix, credentials left out, got {_no_userinfo(url)!r}"
                )
            self.bucket: str | None = parts.netloc
            prefix = parts.path.strip("/")
            self._root = f"{self.bucket}/{prefix}" if prefix else self.bucket
            self.url = f"s3://{self._root}"
            if endpoint_url:
                if not endpoint_url.startswith(("http://", "https://")):
                    raise ConfigError(
                        f"STAGING_ENDPOINT_URL must be an http(s) URL, got {_no_userinfo(endpoint_url)!r}"
                    )
                self._endpoint_url = endpoint_url.rstrip("/")
        elif scheme in ("", "file"):
            path = url
            if scheme == "file":
                parts = urlsplit(url)
                if parts.netloc not in ("", "localhost"):
                    raise ConfigError(
                        f"STAGING_URL: a file:// URL names a folder of this host, got {_no_userinfo(url)!r}"
                    )
                path = parts.path
            self.bucket = None
            self._root = self.url = str(Path(path).expanduser().resolve())
        else:
            raise ConfigError(
                f"STAGING_URL: unsupported scheme {scheme + '://'!r}: use a folder path, file:// or s3://bucket/prefix"
            )
        self._fs: Any = None
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> StagingStore:
        url, endpoint_url, secret_block = cls.settings_of(settings)
        return cls(url, endpoint_url=endpoint_url, secret_block=secret_block)

    @staticmethod
    def settings_of(settings: Settings) -> tuple[str, str | None, str | None]:
        """The store's URL (STAGING_URL, default DATA_DIR), endpoint and Secret block."""
        url = (settings.staging_url or "").strip() or str(settings.data_dir)
        return url, settings.staging_endpoint_url, settings.staging_secret_block

    def __repr__(self) -> str:
        return f"StagingStore({self.url!r})"

    def __getstate__(self) -> dict[str, Any]:  # the filesystem (and any credentials in it) stays behind
        return {k: v for k, v in self.__dict__.items() if k not in ("_fs", "_lock")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _fs=None, _lock=threading.Lock())

    @property
    def is_local(self) -> bool:
        return self.bucket is None

    # the filesystem, made once (under the lock: s3fs opens its client on the first call)
    def _filesystem(self) -> Any:
        if self._fs is not None:
            return self._fs
        with self._lock:
            if self._fs is None:
                self._fs = self._open()
        return self._fs

    def _open(self) -> Any:
        if self.is_local:
            from fsspec.implementations.local import LocalFileSystem  # type: ignore[import-untyped]

            return LocalFileSystem()
        from s3fs import S3FileSystem  # type: ignore[import-untyped]

        options: dict[str, Any] = {"skip_instance_cache": True, "use_listings_cache": False}
        if self._endpoint_url:
            options["client_kwargs"] = {"endpoint_url": self._endpoint_url}
        if self._secret_block:
            options["key"], options["secret"] = _secret_credentials(self._secret_block)
        fs = S3FileSystem(**options)
        with self._errors("open"):  # a missing bucket would otherwise read as missing keys
            fs.call_s3("head_bucket", Bucket=self.bucket)
        return fs

    def _credentials_hint(self) -> str:
        if self._secret_block:
            return f"check the key and secret in the Prefect Secret block {self._secret_block!r} (STAGING_SECRET_BLOCK)"
        return f"check {CREDENTIAL_VARS} in the environment, or set STAGING_SECRET_BLOCK"

    def _where(self) -> str:
        return f"the S3 endpoint {_no_userinfo(self._endpoint_url)}" if self._endpoint_url else "AWS S3"

    @contextlib.contextmanager
    def _errors(self, action: str, key: str | None = None) -> Iterator[None]:
        """Turn the filesystem's errors into ones naming the setting to fix."""
        what = f"{self.url}/{key}" if key else self.url
        try:
            yield
        except FileNotFoundError as exc:
            if self.is_local or (key and "bucket does not exist" not in str(exc)):
                raise FileNotFoundError(f"staging store: no {what}") from None
            raise StagingError(
                f"staging store {self.url}: the bucket {self.bucket!r} does not exist at {self._where()}: create it, "
                "or fix STAGING_URL (s3://bucket/prefix)" + (" or STAGING_ENDPOINT_URL" if self._endpoint_url else "")
            ) from None
        except PermissionError as exc:
            if self.is_local:
                raise StagingError(
                    f"staging folder {self.url}: cannot {action} {what} ({exc.strerror}): "
                    "fix the folder's permissions or set STAGING_URL"
                ) from None
            raise StagingError(
                f"staging store {self.url}: access denied to the bucket {self.bucket!r} at {self._where()} "
                f"({action}): {self._credentials_hint()}"
            ) from None
        except StagingError:
            raise
        except Exception as exc:
            if self.is_local:
                raise
            from botocore import exceptions as aws  # type: ignore[import-untyped]

            if isinstance(exc, (aws.NoCredentialsError, aws.PartialCredentialsError)):
                raise StagingError(f"staging store {self.url}: no S3 credentials: {self._credentials_hint()}") from None
            if isinstance(exc, (aws.ConnectionError, aws.HTTPClientError)):
                fix = (
                    "check STAGING_ENDPOINT_URL"
                    if self._endpoint_url
                    else "check the network, or set STAGING_ENDPOINT_URL"
                )
                raise StagingError(
                    f"staging store {self.url}: could not reach {self._where()} ({type(exc).__name__}): {fix}"
                ) from None
            if isinstance(exc, OSError):  # s3fs's rendering of another S3 error code
                raise StagingError(f"staging store {self.url}: could not {action} {what}: {exc}") from None
            raise

    def _path(self, key: str) -> str:
        return f"{self._root}/{_check_key(key)}"

    def location(self, key: str) -> str:
        """Where `key` is, as the stages name a staged file: a local path, or s3://bucket/prefix/key."""
        return self._path(key) if self.is_local else f"s3://{self._path(key)}"

    def key_of(self, location: str) -> str | None:
        """The key of a `location` under this store (None: it is elsewhere)."""
        root = self.url.rstrip("/") + "/"
        if not self.is_local:
            return location[len(root) :] if location.startswith(root) else None
        resolved = str(Path(location).resolve())
        return Path(resolved).relative_to(self.url).as_posix() if resolved.startswith(root) else None

    def _write(self, key: str, write: Callable[[Any, str], None]) -> None:
        """Write `key` whole: on S3 a PUT is atomic already; in the folder, a temporary file renamed."""
        path = self._path(key)
        fs = self._filesystem()
        with self._errors("write", key):
            if not self.is_local:
                write(fs, path)
                return
            os.makedirs(os.path.dirname(path), exist_ok=True)
            temporary = f"{path}.{uuid.uuid4().hex}.tmp"
            try:
                write(fs, temporary)
                os.replace(temporary, path)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(temporary)

    def write_bytes(self, key: str, data: bytes) -> None:
        """An object, whole (a part of a staged file, a shard's result)."""
        self._write(key, lambda fs, path: fs.pipe_file(path, data))

    def read_bytes(self, key: str) -> bytes:
        path = self._path(key)
        with self._errors("read", key):
            return self._filesystem().cat_file(path)

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        """`length` bytes from `offset`: one ranged GET on S3. A file shorter than the span is a StagingError."""
        if offset < 0 or length < 0:
            raise ValueError(f"a span has no negative offset or length, got ({offset}, {length})")
        if length == 0:
            return b""
        path = self._path(key)
        with self._errors("read", key):
            data = self._filesystem().cat_file(path, start=offset, end=offset + length)
        if len(data) != length:
            raise StagingError(
                f"staging store: {self.url}/{key} ends before the span asked ({length} bytes from {offset}): "
                f"got {len(data)} bytes"
            )
        return data

    def size(self, key: str) -> int:
        path = self._path(key)
        with self._errors("read", key):
            return int(self._filesystem().size(path))

    def exists(self, key: str) -> bool:
        path = self._path(key)
        with self._errors("read", key):
            return bool(self._filesystem().isfile(path))

    def keys(self, prefix: str) -> list[str]:
        """The keys under the folder `prefix`, sorted; none there is an empty list."""
        return sorted(self.sizes(prefix))

    def sizes(self, prefix: str) -> dict[str, int]:
        """Each key under the folder `prefix` with its size in bytes (one listing)."""
        path = self._path(prefix.rstrip("/"))
        with self._errors("list", prefix):
            try:
                found = self._filesystem().find(path, detail=True)
            except FileNotFoundError:
                return {}
        root = self._root.rstrip("/") + "/"
        return {
            p[len(root) :]: int(info["size"])
            for p, info in found.items()
            if p.startswith(root) and not p.endswith(".tmp")
        }

    def remove(self, prefix: str) -> None:
        """Everything under the folder `prefix` (or the one key it names); nothing there is no error. S3's bulk
        delete tells a key it refused only in its answer, which s3fs drops: what is left is listed after."""
        path = self._path(prefix.rstrip("/"))
        fs = self._filesystem()
        with self._errors("remove", prefix), contextlib.suppress(FileNotFoundError):
            fs.rm(path, recursive=True)
        left = [] if self.is_local else self.keys(prefix)
        if left:
            raise StagingError(
                f"staging store {self.url}: {len(left)} object(s) left under {prefix} after removing them: "
                f"{self._credentials_hint()} (the key needs s3:DeleteObject)"
            )
