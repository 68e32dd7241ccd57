"""Users API sources as configured: the default one from the flat USERS_API_* settings, more from
USERS_API_SOURCES (a JSON object, name -> the same fields). Secrets are never in this configuration itself:
the default's comes from USERS_API_SECRET (or the Prefect Secret block USERS_API_SECRET_BLOCK), another
source's from the environment variable its `secret_env` names (or its `secret_block`)."""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from models.secrets import secret_block_text

if TYPE_CHECKING:
    from models.settings import Settings

DEFAULT_NAME = "dummyjson"
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,47}$")  # a source's name: its tables' `source`, its checkpoint key
Pagination = Literal["offset", "page", "cursor", "link"]
AuthKind = Literal["none", "api_key_header", "api_key_query", "bearer", "basic"]
DEFAULT_KEY_NAMES = {"api_key_header": "X-API-Key", "api_key_query": "api_key"}


class ApiSourceConfig(BaseModel):
    """How one users API is read: where, how it pages, where its records are, how it authenticates."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = DEFAULT_NAME
    base_url: str
    page_size: int = Field(100, ge=1, le=10_000)
    records_path: str = "users"  # dotted path to the records list in a page's body ("" = the body is the list)
    pagination: Pagination = "offset"
    offset_param: str = "skip"
    limit_param: str = "limit"  # the page size's parameter, whatever the style (`per_page`, `page_size`...)
    total_path: str | None = "total"  # the source's record count in the body, if it gives one
    page_param: str = "page"
    first_page: int = Field(1, ge=0)
    total_pages_path: str | None = None  # the page count in the body, if it gives one
    cursor_param: str = "cursor"
    cursor_path: str = "next_cursor"  # the next page's cursor in the body (`cursor` style)
    fields: dict[str, list[str]] | None = None  # staging column -> path in a record (None: DummyJSON's)
    auth: AuthKind = "none"
    key_name: str | None = None  # an API key's header or query parameter
    username: str | None = None  # basic auth
    secret_env: str | None = None  # the environment variable holding the secret (USERS_API_SOURCES entries)
    secret_block: str | None = None  # or the Prefect Secret block holding it
    uses_settings_secret: bool = False  # the default source: USERS_API_SECRET (read when needed, never carried)

    @field_validator("total_path", "total_pages_path", "fields", mode="before")
    @classmethod
    def _unset(cls, v: object) -> object:
        """An empty setting means none."""
        return None if v in ("", {}) else v

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        return v.rstrip("/")

    @property
    def checkpoint_key(self) -> str:
        return f"users:{self.name}"

    @property
    def api_key_name(self) -> str:
        return self.key_name or DEFAULT_KEY_NAMES.get(self.auth, "")

    @property
    def secret_setting(self) -> str:
        """Where the secret is configured, for messages (never the value)."""
        if self.uses_settings_secret:
            return "USERS_API_SECRET (or USERS_API_SECRET_BLOCK)" if self.secret_block else "USERS_API_SECRET"
        where = f"secret_block {self.secret_block!r}" if self.secret_block else f"secret_env {self.secret_env}"
        return f"USERS_API_SOURCES[{self.name}] ({where})"

    @property
    def fingerprint(self) -> str:
        """What a checkpoint must match to be resumed: the same source paged the same way (never the secret)."""
        base = f"{self.base_url}|{self.page_size}"
        if self.pagination == "offset" and (self.offset_param, self.limit_param) == ("skip", "limit"):
            return base  # what checkpoints stored before the pagination styles
        param = {"offset": self.offset_param, "page": self.page_param}.get(self.pagination, self.cursor_param)
        return f"{base}|{self.pagination}|{param}|{self.limit_param}"

    def secret_value(self, settings: Settings) -> str | None:
        """The credential, from the environment or a Prefect Secret block; ConfigError naming the setting when
        the source needs one and none is there."""
        from models.settings import ConfigError

        if self.auth == "none":
            return None
        own = settings.users_api_secret if self.uses_settings_secret else None
        value = own.get_secret_value() if own is not None else None
        if not value and self.secret_env:
            value = os.environ.get(self.secret_env)  # the one place a source's named variable is read
        if not value and self.secret_block:
            value = secret_block_text(self.secret_block, self.secret_setting)
        if not value:
            raise ConfigError(f"users API {self.name!r} needs a credential ({self.auth}): set {self.secret_setting}")
        if self.auth == "basic" and not self.username:
            name = "USERS_API_USERNAME" if self.uses_settings_secret else f"USERS_API_SOURCES[{self.name}].username"
            raise ConfigError(f"users API {self.name!r} uses basic auth: set {name}")
        return value


def parse_sources(text: str | None) -> dict[str, dict]:
    """USERS_API_SOURCES: a JSON object of name -> fields; a secret written into it is refused."""
    if not text or not text.strip():
        return {}
    try:
        raw = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise ValueError("expected a JSON object of source name -> its settings")
    for name, fields in raw.items():
        if not NAME_PATTERN.match(name):
            raise ValueError(f"source name {name!r}: lower-case letters, digits and _ (starting with a letter)")
        if "secret" in fields or "uses_settings_secret" in fields:
            raise ValueError(f"source {name!r}: never write a secret here; name its variable in secret_env")
        if "name" in fields:
            raise ValueError(f"source {name!r}: its name is its key")
    return raw


def api_sources(
    settings: Settings, *, base_url: str | None = None, page_size: int | None = None
) -> list[ApiSourceConfig]:
    """Every configured users API: the default (USERS_API_BASE, or `base_url`) first, then USERS_API_SOURCES'."""
    from models.settings import ConfigError

    found = []
    default_base = base_url or settings.users_api_base
    try:
        if default_base:
            # the flat settings are the model's fields, each named `users_api_<field>`
            names = [f for f in ApiSourceConfig.model_fields if hasattr(settings, f"users_api_{f}")]
            own = {f: getattr(settings, f"users_api_{f}") for f in names}
            found.append(
                ApiSourceConfig(
                    **own,
                    base_url=default_base,
                    page_size=page_size or settings.users_page_size,
                    uses_settings_secret=True,
                )
            )
        for name, fields in settings.users_api_sources.items():
            found.append(ApiSourceConfig(name=name, **fields))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"USERS_API_SOURCES / USERS_API_*: {where}: {first['msg']}") from None
    names = [s.name for s in found]
    if len(set(names)) != len(names):
        raise ConfigError(f"users API sources need distinct names, got {names}")
    return found
