"""Pipeline bookkeeping: one row per run, one checkpoint per source."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Column, DateTime, Index, Text
from sqlmodel import Field, SQLModel

TZ = DateTime(timezone=True)


class EtlRunBase(SQLModel):
    flow_name: str = Field(default="users-etl", max_length=64, index=True)
    status: str = Field(default="running", max_length=16, index=True)
    started_at: datetime = Field(sa_type=TZ)
    finished_at: datetime | None = Field(default=None, sa_type=TZ)
    duration_seconds: float | None = None
    extracted: int = 0
    valid: int = 0
    invalid: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    invalidated: int = Field(default=0, sa_column_kwargs={"server_default": "0"})  # current users now invalid
    deleted: int = Field(default=0, sa_column_kwargs={"server_default": "0"})  # absent from a complete extraction
    restored: int = Field(default=0, sa_column_kwargs={"server_default": "0"})  # current again (valid again, or back)
    raw_inserted: int = 0
    dlq_inserted: int = 0
    dlq_opened: int = Field(default=0, sa_column_kwargs={"server_default": "0"})  # new or reopened entries
    dlq_resolved: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    delivered_files: int = 0
    delivered_bytes: int = Field(default=0, sa_type=BigInteger)  # a big day's files pass 2 GiB
    failed_stage: str | None = Field(default=None, max_length=32)
    error: str | None = Field(default=None, sa_column=Column(Text))
    anomalies: str | None = Field(default=None, sa_column=Column(Text))  # "; "-joined findings, null when normal
    schema_drift: str | None = Field(default=None, sa_column=Column(Text))  # "; "-joined changes, null when none


class EtlRun(EtlRunBase, table=True):
    __tablename__ = "etl_runs"
    __table_args__ = (Index("ix_etl_runs_started_at_id", "started_at", "id"),)  # newest first, off the index
    id: str = Field(primary_key=True, max_length=64)  # the Prefect flow run id
    stage_seconds: str = Field(default="{}", sa_column=Column(Text, nullable=False, default="{}"))
    delivered: str = Field(default="[]", sa_column=Column(Text, nullable=False, default="[]"))
    files: str = Field(default="{}", sa_column=Column(Text, nullable=False, default="{}"))
    dlq_reasons: str = Field(default="{}", sa_column=Column(Text, nullable=False, default="{}"))
    sources: str = Field(default="{}", sa_column=Column(Text, nullable=False, default="{}"))  # per-source counts
    observed_schema: str = Field(
        default="{}", sa_column=Column(Text, nullable=False, default="{}")
    )  # source -> field -> type
    # a sharded run's shards, one object each (flows/users_shards.py); [] for a run of one shard
    shards: str = Field(default="[]", sa_column=Column(Text, nullable=False, default="[]", server_default="[]"))
    # where a running run runs and when it was last known alive (tasks/runs.py: its process's heartbeat)
    heartbeat_at: datetime | None = Field(default=None, sa_type=TZ)
    pid: int | None = None
    host: str | None = Field(default=None, max_length=255)


class EtlRunPublic(EtlRunBase):
    id: str
    stage_seconds: dict[str, float]
    delivered: list[dict]
    files: dict[str, str]
    dlq_reasons: dict[str, int]
    sources: dict[str, dict[str, int]] = {}  # per source: inserted, updated, unchanged, failed
    observed_schema: dict[str, dict[str, str]] = {}  # per source: the fields and types this run saw
    shards: list[dict] = []  # a sharded run's shards: range, counts, flow runs, seconds


class EtlCheckpoint(SQLModel, table=True):
    """Where a source's extraction stands: the next page, and the staged file it is filling."""

    __tablename__ = "etl_checkpoints"
    source: str = Field(primary_key=True, max_length=128)
    status: str = Field(default="idle", max_length=16)  # in_progress | complete | failed
    run_id: str | None = Field(default=None, max_length=64)
    cursor: int = 0  # next skip
    total: int | None = None
    staged_path: str | None = None
    staged_bytes: int = Field(default=0, sa_type=BigInteger)
    staged_records: int = 0
    fingerprint: str | None = Field(default=None, max_length=256)  # base URL + page size
    last_success_at: datetime | None = Field(default=None, sa_type=TZ)
    last_failure_at: datetime | None = Field(default=None, sa_type=TZ)
    last_error: str | None = Field(default=None, sa_column=Column(Text))
    updated_at: datetime | None = Field(default=None, sa_type=TZ)
    state: str = Field(default="{}", sa_column=Column(Text, nullable=False, default="{}"))  # source-specific JSON


# ---------------------------------------------------------------- API variants (requests / responses, no tables)


class EtlRunsPublic(SQLModel):
    data: list[EtlRunPublic]
    total: int
    page: int
    page_size: int
    has_more: bool


class EtlRunCreate(SQLModel):
    """Parameter overrides for a run started through the API (anything left out: the deployment's own)."""

    model_config = {"extra": "forbid"}
    api_base: str | None = Field(
        default=None, min_length=8, max_length=2000, schema_extra={"pattern": r"^https?://[^\s\x00]+$"}
    )
    page_size: int | None = Field(default=None, ge=1, le=10_000)
    batch_records: int | None = Field(default=None, ge=1, le=1_000_000)
    deliver_files: bool | None = None
    shards: int | None = Field(default=None, ge=1, le=256)  # one run across this many workers' flow runs


class EtlRunStarted(SQLModel):
    flow_run_id: str
    flow_run_name: str | None
    deployment: str
    state: str | None
    parameters: dict
    ui_url: str


class RunBrief(SQLModel):
    id: str
    flow_name: str = "users-etl"
    status: str
    started_at: datetime
    finished_at: datetime | None
    duration_seconds: float | None
    failed_stage: str | None = None
    error: str | None = None
    extracted: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    invalid: int = 0
    anomalies: str | None = None


class CheckpointPublic(SQLModel):
    """Where a source stands: API cursor, CSV file checksum, feed validators, schema snapshot."""

    source: str
    status: str
    cursor: int
    total: int | None
    staged_records: int
    last_success_at: datetime | None
    last_failure_at: datetime | None
    last_error: str | None
    updated_at: datetime | None


class DepartmentCount(SQLModel):
    department: str
    department_code: str
    users: int


class StatsPublic(SQLModel):
    processed_users: int
    dlq_users: int
    raw_users: int
    dlq_rate: float | None = Field(description="dlq_users / (processed_users + dlq_users); null when both are 0")
    by_department: list[DepartmentCount]
    runs_total: int
    runs_by_status: dict[str, int]
    last_success: RunBrief | None
    last_failure: RunBrief | None
    mean_duration_seconds: float | None = Field(description="over completed runs")
    last_duration_seconds: float | None = Field(description="of the most recent finished run")
    recent_runs: list[RunBrief] = Field(default=[], description="the last 10 runs of every flow, newest first")
    checkpoints: list[CheckpointPublic] = Field(default=[], description="per source")
    invalid_users: int = Field(default=0, description="stored users whose newest record failed validation")
    deleted_users: int = Field(default=0, description="stored users absent from the source")
    dlq_users_resolved: int = Field(default=0, description="DLQ entries closed (not in dlq_users)")


class HealthPublic(SQLModel):
    status: str = Field(description='"ok", "no runs yet" or "unhealthy"')
    database: str
    reason: str | None = None
    last_run: RunBrief | None = None
    last_run_age_seconds: float | None = None
