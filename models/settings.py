"""The one configuration object: environment variables (and an optional `.env`)."""

from __future__ import annotations

from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

import orjson
from cronsim import CronSim, CronSimError
from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from models.sources import DEFAULT_NAME, NAME_PATTERN, AuthKind, Pagination, parse_sources

PROJECT_ROOT = Path(__file__).resolve().parent.parent
BUNDLED_DEPARTMENTS = PROJECT_ROOT / "data" / "departments.csv"


class ConfigError(ValueError):
    """A configuration value is missing or malformed; the message names the variable."""


DEFAULT_BATCH_RECORDS = 25_000
# the nicknames Prefect's cron schedules accept, which cronsim reads only spelled out
CRON_NICKNAMES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False)

    # users source
    users_api_base: str | None = None
    users_page_size: int = Field(100, ge=1, le=10_000)
    # how the API pages, where its records are, how it authenticates (models/sources.py, docs/sources.md)
    users_api_name: str = Field(DEFAULT_NAME, pattern=NAME_PATTERN.pattern)
    users_api_records_path: str = "users"
    users_api_pagination: Pagination = "offset"
    users_api_offset_param: str = "skip"
    users_api_limit_param: str = "limit"
    users_api_total_path: str = "total"
    users_api_page_param: str = "page"
    users_api_first_page: int = Field(1, ge=0)
    users_api_total_pages_path: str = ""
    users_api_cursor_param: str = "cursor"
    users_api_cursor_path: str = "next_cursor"
    users_api_fields: Annotated[dict[str, list[str]], NoDecode] = {}
    users_api_auth: AuthKind = "none"
    users_api_key_name: str | None = None
    users_api_username: str | None = None
    users_api_secret: SecretStr | None = None
    users_api_secret_block: str | None = None
    # more users APIs, read beside the default one: a JSON object of name -> the same fields (models/sources.py)
    users_api_sources: Annotated[dict[str, dict], NoDecode] = {}
    # records per task run of each stage: each task run costs the flow and the Prefect server API calls, logs
    # and events, while the stages work through a batch in pieces, so a larger one holds little more memory
    # (docs/benchmarks.md)
    users_batch_records: int = Field(DEFAULT_BATCH_RECORDS, ge=1, le=1_000_000)
    # stage the whole API extract before transform and persist start (for a source quicker than the stages
    # after it: extract then no longer competes with them for the cores; see docs/benchmarks.md)
    users_extract_first: bool = False
    users_csv_dir: Path | None = None
    # users sources staged beside the API, each a module tasks/extract/<name>.py (see csv_drop.py)
    users_sources: Annotated[list[str], NoDecode] = ["csv_drop"]
    users_request_timeout: float = Field(30.0, gt=0)
    extract_retries: int = Field(4, ge=0, le=20)
    extract_retry_base_seconds: float = Field(2.0, ge=0)
    max_retry_after_seconds: float = Field(120.0, ge=0)
    feed_urls: Annotated[list[str], NoDecode] = []
    # users absent from a complete extraction of the API are marked deleted, unless more than this share of
    # the source's known users would go at once (then none is, and the run is flagged as anomalous)
    users_detect_deleted: bool = True
    users_delete_max_share: float = Field(0.10, ge=0, le=1)

    # storage
    database_url: SecretStr = SecretStr("sqlite:///var/app.db")
    database_block: str | None = None
    data_dir: Path = Path("var/data")
    # a run starting removes the staged folders (STAGING_URL's runs/<run id>) of runs over for more than this
    # many days (tasks/retention.py); 0 keeps them all
    run_files_keep_days: int = Field(0, ge=0)
    departments_csv: Path = BUNDLED_DEPARTMENTS
    # where runs stage their files, runs/<run id>/... (tasks/staging/store.py): a folder (default DATA_DIR), or
    # s3://bucket/prefix for the shards of a run on several hosts; the S3 credentials come from the
    # environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) or STAGING_SECRET_BLOCK, a Prefect Secret block
    # holding {"key": ..., "secret": ...}; STAGING_ENDPOINT_URL names an S3-compatible store (MinIO...)
    staging_url: str | None = None
    staging_endpoint_url: str | None = None
    staging_secret_block: str | None = None

    # one run across several workers (docs/deployment.md, "Sharded runs"): the API's page walk cut into this
    # many ranges, each a flow run of USERS_SHARD_DEPLOYMENT taken by any worker of its pool; a failed shard is
    # submitted again alone, up to USERS_SHARD_RETRIES times
    users_shards: int = Field(1, ge=1, le=256)
    users_shard_deployment: str = "users-shard/shard"
    users_shard_retries: int = Field(2, ge=0, le=10)
    # a shard pending this long, or running with a pulse (rewritten every 5 s) older than this, is lost (its
    # worker or host died after taking it)
    users_shard_lost_seconds: float = Field(60.0, ge=10)

    # orchestration
    extract_schedule_cron: str = "0 3 * * *"

    # schema drift and run anomalies
    schema_drift_policy: Literal["warn", "fail", "evolve"] = "warn"
    schema_drift_policies: Annotated[dict[str, Literal["warn", "fail", "evolve"]], NoDecode] = {}
    anomaly_min_runs: int = Field(3, ge=1)
    anomaly_count_tolerance: float = Field(0.5, gt=0)  # relative deviation of the record count from the mean
    anomaly_invalid_rate_tolerance: float = Field(0.1, ge=0)  # absolute rise of the invalid share over the mean
    anomaly_duration_factor: float = Field(3.0, gt=1)  # slower than this many times the mean duration
    anomaly_fail: bool = False

    # delivery
    sftp_host: str | None = None
    sftp_port: int = Field(22, ge=1, le=65535)
    sftp_username: str | None = None
    sftp_key_path: Path | None = None
    sftp_key_passphrase: SecretStr | None = None
    sftp_key_passphrase_block: str | None = None
    sftp_known_hosts: Path | None = None
    sftp_remote_base: str = "/upload"
    # the raw records file as delivered: sensitive values masked (as everywhere outside the raw layer), in
    # full as received (passwords are never kept), or not delivered at all
    deliver_raw: Literal["masked", "full", "none"] = "masked"

    # API
    api_host: str = "127.0.0.1"
    api_port: int = Field(8000, ge=1, le=65535)
    api_key: SecretStr | None = None
    cors_origins: Annotated[list[str], NoDecode] = []
    # the Prefect server POST /etl_runs starts runs on (the variables Prefect's own client reads)
    prefect_api_url: str | None = None
    prefect_api_key: SecretStr | None = None  # Prefect Cloud
    prefect_api_auth_string: SecretStr | None = None  # a self-hosted server's basic auth, `user:password`
    prefect_ui_url: str | None = None

    # per-client request limits of the API (`limits` notation, e.g. "600/minute"; "" turns a group's off): reads
    # (the JSON routes and the console's pages) and writes (starting runs and replays); /health and /metrics
    # are never limited. Counted in this process, or in Redis (RATE_LIMIT_STORAGE_URL=redis://...) so that
    # several API workers share them
    rate_limit_read: str = "600/minute"
    rate_limit_write: str = "30/minute"
    rate_limit_storage_url: SecretStr | None = None

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # text for people at a terminal; json: one JSON object per line, for log collectors
    log_format: Literal["text", "json"] = "text"

    @field_validator("users_api_base", "prefect_api_url")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        v = v.strip()
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"must be an http(s) URL, got {v!r}")
        return v.rstrip("/")

    @field_validator("users_sources")
    @classmethod
    def _module_names(cls, v: list[str]) -> list[str]:
        bad = [name for name in v if not name.isidentifier()]
        if bad:
            raise ValueError(f"not module names under tasks/extract: {bad}")
        return v

    @field_validator("feed_urls", "cors_origins", "users_sources", mode="before")
    @classmethod
    def _comma_list(cls, v: object) -> object:
        if isinstance(v, str):
            return [p.strip() for p in v.split(",") if p.strip()]
        return v

    @field_validator("users_api_sources", mode="before")
    @classmethod
    def _sources(cls, v: object) -> object:
        return parse_sources(v) if isinstance(v, str) else v

    @field_validator("users_api_fields", mode="before")
    @classmethod
    def _field_map(cls, v: object) -> object:
        """A JSON object: staging column -> the path of its value in a record, as a list of keys."""
        if isinstance(v, str):
            return orjson.loads(v) if v.strip() else {}
        return v

    @field_validator("schema_drift_policies", mode="before")
    @classmethod
    def _policy_map(cls, v: object) -> object:
        """`source=policy,source=policy` (e.g. `dummyjson=fail,csv=evolve`)."""
        if isinstance(v, str):
            pairs = [p.split("=", 1) for p in v.split(",") if p.strip()]
            if any(len(p) != 2 for p in pairs):
                raise ValueError(f"expected source=policy pairs separated by commas, got {v!r}")
            return {k.strip(): p.strip() for k, p in pairs}
        return v

    def drift_policy(self, source: str) -> str:
        return self.schema_drift_policies.get(source, self.schema_drift_policy)

    @field_validator("extract_schedule_cron")
    @classmethod
    def _cron(cls, v: str) -> str:
        try:
            CronSim(CRON_NICKNAMES.get(v.lower(), v), datetime.now(timezone.utc))
        except CronSimError as exc:  # pydantic wraps the message with the variable name
            raise ValueError(f"not a valid cron expression: {v!r}") from exc
        return v

    @property
    def database_url_value(self) -> str:
        return self.database_url.get_secret_value()

    @property
    def sftp_enabled(self) -> bool:
        return bool(self.sftp_host)


def _describe(error: ValidationError) -> str:
    lines = []
    for err in error.errors():
        name = "_".join(str(p) for p in err["loc"]).upper() or "configuration"
        value = err.get("input")
        secret = any(word in name.lower() for word in ("key", "passphrase", "url", "auth", "secret", "sources"))
        shown = "" if secret else f" (got {value!r})"
        lines.append(f"{name}: {err['msg']}{shown}")
    return "invalid configuration: " + "; ".join(lines)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings. A bad value raises ConfigError naming the variable."""
    try:
        return Settings()
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
