"""What the users stages hand each other: a staged input (extract -> transform), a transformed batch
(transform -> persist), and each stage's result for the parent flow. Manifest lines are these, encoded."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple


class Span(NamedTuple):
    """A byte range of a staged file: `length` bytes from `offset` (whole lines)."""

    offset: int
    length: int


@dataclass(frozen=True)
class StagedInput:
    """One batch of raw JSONL lines on disk, or an input rejected whole (`error`): extract -> transform."""

    source: str
    as_of: str  # when the source said so: the run's fetch time, a file's modification time
    raw_path: str | None = None
    span: Span = Span(0, 0)
    records: int = 0
    plugin: str | None = None  # the users source plug-in that staged it (USERS_SOURCES); None: the API
    label: str | None = None  # the plug-in's name for the input (a CSV file's name)
    checksum: str | None = None  # the plug-in's fingerprint of the input, for its checkpoint
    error: str | None = None  # why the whole input was rejected (it becomes one DLQ entry)
    fields: dict[str, list[str]] | None = None  # staging column -> path in a record (None: DummyJSON's)


def input_kind(staged: StagedInput, n: int) -> str:
    """The kind a run's files give the raw file of its `n`th input besides the APIs: `<source>:<label>`."""
    return f"{staged.source}:{staged.label or n}"


@dataclass(frozen=True)
class RunFiles:
    """The files transform writes for a run: processed and DLQ JSONL (delivered), raw keys (for persist)."""

    processed: str
    dlq: str
    raw_keys: str


@dataclass(frozen=True)
class TransformedBatch:
    """One staged input's batch after the rules: transform -> persist (spans into the run's files)."""

    source: str
    as_of: str
    raw_path: str | None
    files: RunFiles
    processed: Span
    dlq: Span
    raw: Span | None = None  # the raw lines to store (None: an input rejected whole)
    raw_keys: Span | None = None  # the raw lines' ids and hashes, in `files.raw_keys`
    valid: int = 0
    invalid: int = 0


@dataclass
class ApiWalk:
    """One users API's extraction in a run: its whole staged file (the resumed part included), and why the
    walk is no complete picture of the source, if it is not."""

    staged: StagedInput
    resumed: bool = False
    findings: list[str] = field(default_factory=list)
    partial: bool = False  # a shard's range of the walk: never a complete picture on its own
    totals: list[int] = field(default_factory=list)  # the totals the source reported, in order


@dataclass
class ExtractResult:
    """What extract staged: each users API's file (the default source first), then every other input."""

    apis: list[ApiWalk] = field(default_factory=list)
    others: list[StagedInput] = field(default_factory=list)

    @property
    def records(self) -> int:
        return sum(a.staged.records for a in self.apis) + sum(s.records for s in self.others)

    @property
    def findings(self) -> list[str]:
        """Every API walk's findings, each naming its source when several APIs were read."""
        several = len(self.apis) > 1
        return [f"{a.staged.source}: {f}" if several else f for a in self.apis for f in a.findings]

    @property
    def complete_sources(self) -> list[str]:
        """The API sources whose page walk was complete (only these may have users marked deleted)."""
        return [a.staged.source for a in self.apis if not a.findings and not a.partial]


@dataclass
class TransformResult:
    files: dict[str, str]  # kind (processed, dlq) -> path: the run's files to deliver
    valid: int
    invalid: int
    reasons: dict[str, int]
    drift: list[str]
    observed_schema: dict[str, dict]
    schema_changes: dict[str, list]


@dataclass
class PersistResult:
    counts: dict[str, int]  # RUN_COUNTS
    sources: dict[str, dict[str, int]]  # per source: what it added
    deletions_withheld: str | None = None
    key_spans: dict[str, list[tuple[str, Span]]] = field(default_factory=dict)  # per source: its raw keys' spans
