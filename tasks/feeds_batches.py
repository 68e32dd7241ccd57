"""What the feeds-etl stages hand each other: the run's files, each transformed batch's spans in them
(transform -> persist), and each stage's result for the parent flow."""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field

from tasks.extract.feeds.outcome import FeedOutcome, FeedStatus
from tasks.staging.batches import Span


@dataclass(frozen=True)
class FeedFiles:
    """The run's staged files: the feeds' items as fetched (extract), processed and DLQ items (transform)."""

    raw: str
    processed: str
    dlq: str

    def by_kind(self) -> dict[str, str]:
        """kind -> path, as etl_runs.files, the summary and deliver list them."""
        return {"raw": self.raw, "processed": self.processed, "dlq": self.dlq}


@dataclass(frozen=True)
class FeedBatch:
    """One span of the raw file through the rules: where its lines are in each of the run's files."""

    raw: Span
    processed: Span
    dlq: Span
    valid: int = 0
    invalid: int = 0
    reasons: dict[str, int] = field(default_factory=dict)  # rule -> the batch's items failing it


@dataclass(frozen=True)
class FeedsExtractResult:
    """Every feed's outcome, in the order asked, and the one raw file holding the fetched feeds' items."""

    raw_path: str
    feeds: list[FeedOutcome]

    @property
    def records(self) -> int:
        return sum(o.items for o in self.feeds)

    def with_status(self, status: FeedStatus) -> list[FeedOutcome]:
        return [o for o in self.feeds if o.status == status]

    def error(self) -> str | None:
        """The run's error when feeds failed: how many, and why each one did."""
        failed = self.with_status("failed")
        if not failed:
            return None
        return f"{len(failed)} of {len(self.feeds)} feeds failed: " + "; ".join(str(o.error) for o in failed)


@dataclass(frozen=True)
class FeedsTransformResult:
    """The run's files and each batch transform wrote to them (what persist stores, batch by batch)."""

    files: FeedFiles
    batches: list[FeedBatch]

    @property
    def valid(self) -> int:
        return sum(b.valid for b in self.batches)

    @property
    def invalid(self) -> int:
        return sum(b.invalid for b in self.batches)

    @property
    def reasons(self) -> dict[str, int]:
        """rule -> the run's items failing it."""
        total: Counter[str] = Counter()
        for b in self.batches:
            total.update(b.reasons)
        return dict(total)


@dataclass(frozen=True)
class FeedsPersistResult:
    """What persist added: feed items inserted, updated, left unchanged; raw and DLQ rows added."""

    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    raw_inserted: int = 0
    dlq_inserted: int = 0

    def counts(self) -> dict[str, int]:
        """As etl_runs' columns of the same names take them."""
        return dataclasses.asdict(self)
