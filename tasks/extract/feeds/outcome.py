"""What fetching one feed came to (`fetch_feed`'s result): fetched and staged, not modified, or failed."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from tasks.extract.errors import SourceError, TransientSourceError
from tasks.extract.feeds.client import Validators

FeedStatus = Literal["fetched", "not_modified", "failed"]


@dataclass(frozen=True)
class FeedOutcome:
    """One feed's fetch: its status, what the server said and what was staged (`path`: its items as JSONL)."""

    url: str
    status: FeedStatus
    http_status: int | None = None
    items: int = 0
    bytes: int = 0
    path: str | None = None
    validators: Validators | None = None  # the response's ETag / Last-Modified, stored once persisted
    warning: str | None = None  # what feedparser recovered from
    error: str | None = None  # why it failed

    @classmethod
    def failed(cls, url: str, exc: object) -> FeedOutcome:
        """A feed whose task failed with `exc`; the error names the URL (a source error's message does)."""
        if isinstance(exc, (SourceError, TransientSourceError)):
            error = str(exc)
        elif isinstance(exc, BaseException):
            error = f"{url}: {type(exc).__name__}: {exc}"
        else:
            error = f"{url}: failed"
        return cls(url=url, status="failed", error=error)

    def as_report(self) -> dict:
        """As the run's summary lists it: a failed feed with its error, the others with the response."""
        if self.status == "failed":
            return {"url": self.url, "status": self.status, "items": self.items, "error": self.error}
        validators = None if self.validators is None else dataclasses.asdict(self.validators)
        return {
            "url": self.url,
            "status": self.status,
            "http_status": self.http_status,
            "items": self.items,
            "bytes": self.bytes,
            "path": self.path,
            "validators": validators,
            "warning": self.warning,
        }
