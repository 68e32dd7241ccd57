"""A staged file in object storage, which has no append: each append is one object under the file's key, named
by the byte offset it starts at (`<file>/<offset>`), so the file is its parts in order, and a span of it (the
unit the stages hand each other) is a ranged read of the part or parts holding it. One stage appends to a file
at a time; any process reads it. tasks/staging/files.py sends an `s3://` location here."""

from __future__ import annotations

import bisect
import functools
import threading
from dataclasses import dataclass

from models.settings import get_settings
from tasks.staging.store import StagingError, StagingStore

OFFSET_DIGITS = 15  # a part's name: its offset, zero-padded, so the names sort in file order
MARK = ".file"  # an empty object saying the file exists, parts or none


def is_remote(location: object) -> bool:
    """A staged file on the store (s3://...), not a local path."""
    return isinstance(location, str) and location.startswith("s3://")


@functools.lru_cache(maxsize=8)
def _store(url: str, endpoint_url: str | None, secret_block: str | None) -> StagingStore:
    return StagingStore(url, endpoint_url=endpoint_url, secret_block=secret_block)


def staging_store() -> StagingStore:
    """The store STAGING_URL names, one per process and setting (its filesystem and client are made once)."""
    return _store(*StagingStore.settings_of(get_settings()))


@dataclass(frozen=True)
class _Part:
    offset: int
    size: int
    key: str


_lock = threading.Lock()
_known: dict[str, list[_Part]] = {}  # location -> its parts as last listed or appended by this process
_mine: set[str] = set()  # locations this process created or appended to: its parts list is the truth


class PartsFile:
    """The staged file at `location` (s3://bucket/prefix/key), under the store STAGING_URL names."""

    def __init__(self, location: str) -> None:
        store = staging_store()
        key = store.key_of(location)
        if key is None:
            raise StagingError(f"{location} is not in the staging store {store.url} (STAGING_URL changed?)")
        self.location, self.store, self.key = location, store, key.rstrip("/")

    def _list(self) -> list[_Part]:
        found = []
        for key, size in self.store.sizes(self.key).items():
            name = key.rsplit("/", 1)[-1]
            if key.startswith(self.key + "/") and name.isdigit() and key.count("/") == self.key.count("/") + 1:
                found.append(_Part(int(name), size, key))
        found.sort(key=lambda p: p.offset)
        with _lock:  # a listing begun before this process's last append must not hide it
            known = _known.get(self.location)
            if known is not None and self.location in _mine and _end(known) > _end(found):
                return known
            _known[self.location] = found
        return found

    def _parts(self, *, through: int = 0) -> list[_Part]:
        """The parts, listed again unless those known reach `through` bytes."""
        with _lock:
            known = _known.get(self.location)
        if known is not None and _end(known) >= through:
            return known
        return self._list()

    def exists(self) -> bool:
        return self.store.exists(f"{self.key}/{MARK}")

    def size(self) -> int:
        """The file's length: as this process wrote it, or as the store lists it now."""
        with _lock:
            mine = self.location in _mine
        return _end(self._parts() if mine else self._list())

    def reset(self) -> None:
        """Empty: every part removed."""
        self.store.remove(self.key)
        self.store.write_bytes(f"{self.key}/{MARK}", b"")
        with _lock:
            _known[self.location] = []
            _mine.add(self.location)

    def append(self, data: bytes) -> tuple[int, int]:
        """`data` as the file's next part; the (offset, length) it occupies."""
        with _lock:
            mine = self.location in _mine
        parts = self._parts() if mine else self._list()
        start = _end(parts)
        if data:
            key = f"{self.key}/{start:0{OFFSET_DIGITS}d}"
            self.store.write_bytes(key, data)
            with _lock:  # the known list grows in place: an append costs no copy of it
                if _known.get(self.location) is not parts:
                    _known[self.location] = parts = list(parts)
                parts.append(_Part(start, len(data), key))
                _mine.add(self.location)
        return start, len(data)

    def truncate(self, length: int) -> None:
        """The file cut back to `length` bytes (a resumed walk drops what its checkpoint does not cover)."""
        parts = self._list()
        kept = [p for p in parts if p.offset + p.size <= length]
        for part in parts[len(kept) :]:
            if part.offset < length:  # a part across the cut: its head stays
                head = self.store.read_range(part.key, 0, length - part.offset)
                self.store.write_bytes(part.key, head)
                kept.append(_Part(part.offset, len(head), part.key))
            else:
                self.store.remove(part.key)
        with _lock:
            _known[self.location] = kept
            _mine.add(self.location)
        if _end(kept) < length:
            raise StagingError(f"{self.location} holds {_end(kept)} bytes, fewer than the {length} to keep")

    def read(self, offset: int, length: int) -> bytes:
        """`length` bytes from `offset`: a ranged read of each part holding them."""
        if length <= 0:
            return b""
        parts = self._parts(through=offset + length)
        if _end(parts) < offset + length:
            raise StagingError(
                f"{self.location} ends before the span asked ({length} bytes from {offset}): it holds {_end(parts)}"
            )
        at = bisect.bisect_right(parts, offset, key=_offset) - 1
        out, end = [], offset + length
        while offset < end:
            part = parts[at]
            take = min(end, part.offset + part.size) - offset
            out.append(self.store.read_range(part.key, offset - part.offset, take))
            offset, at = offset + take, at + 1
        return b"".join(out)


def _offset(part: _Part) -> int:
    return part.offset


def _end(parts: list[_Part]) -> int:
    return parts[-1].offset + parts[-1].size if parts else 0
