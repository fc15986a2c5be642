"""The one settings class: every environment variable the service and jobs read is a field."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service import __version__

ENV_PREFIX = "TASKS_"
_RETENTION = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

API_KEY_MIN_LENGTH = 16
"""Shorter keys are refused at start: a guessable key is an open door."""

# The largest valid task as a body: the longest title and description with every character
# written as a JSON-escaped surrogate pair (12 bytes, `\ud83d\ude00`), plus the field names,
# is about 122,500 bytes; 128 KiB lets every valid task in.
DEFAULT_MAX_BODY_BYTES = 128 * 1024


def split_api_keys(value: str) -> tuple[str, ...]:
    return tuple(k.strip() for k in value.split(",") if k.strip())


class ConfigError(Exception):
    """Invalid configuration; the message names the variable and never echoes its value."""

    def __init__(self, variable: str, reason: str) -> None:
        super().__init__(f"{variable}: {reason}")
        self.variable = variable
        self.reason = reason


class Settings(BaseSettings):
    """Config from env vars (prefix TASKS_, plus PORT), then `.env` in the working directory."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        validate_default=True,
        populate_by_name=True,
    )

    port: Annotated[int, Field(ge=1, le=65535, validation_alias="PORT")] = 8080
    # /metrics has a listener of its own, always: the API's exposure (Ingress, HTTPRoute, a
    # public Service) then never reaches it, and a NetworkPolicy can admit scrapers to it alone.
    metrics_port: Annotated[int, Field(ge=1, le=65535)] = 9090
    host: str = "0.0.0.0"  # noqa: S104 (a container must listen on all interfaces)
    store: Literal["memory", "redis"] = "memory"
    # cluster: a Redis Cluster (or a managed one in cluster mode); the URL names seed nodes.
    redis_mode: Literal["standalone", "cluster"] = "standalone"
    redis_url: str = "redis://localhost:6379/0"
    # Cluster mode: index shards, each under a hash tag of its own (fixed at first use).
    redis_shards: Annotated[int, Field(ge=1, le=256)] = 16
    # An ACL user (not a secret); unset: the URL's user if any, else Redis's `default`.
    redis_username: Annotated[str, Field(max_length=256, pattern=r"^\S+$")] | None = None
    redis_password: SecretStr | None = None
    redis_timeout_seconds: Annotated[float, Field(gt=0, le=60)] = 1.0
    redis_max_connections: Annotated[int, Field(ge=1, le=10_000)] = 16
    redis_key_prefix: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^\S+$")] = (
        "tasks:"
    )
    api_keys: SecretStr | None = None
    max_body_bytes: Annotated[int, Field(ge=1024, le=64 * 1024 * 1024)] = DEFAULT_MAX_BODY_BYTES
    max_header_bytes: Annotated[int, Field(ge=1024, le=1024 * 1024)] = 16 * 1024
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    shutdown_delay_seconds: Annotated[float, Field(ge=0, le=300)] = 0.0
    graceful_timeout_seconds: Annotated[float, Field(ge=0, le=3600)] = 20.0
    idempotency_ttl_seconds: Annotated[int, Field(ge=1)] = 86400
    cleanup_retention: timedelta = timedelta(days=7)
    version: str = __version__
    git_revision: str = "unknown"
    build_date: str = "unknown"

    @field_validator("log_level", mode="before")
    @classmethod
    def _lowercase_level(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("metrics_port")
    @classmethod
    def _own_port(cls, value: int, info: ValidationInfo) -> int:
        if value == info.data.get("port"):
            raise ValueError("must differ from PORT (/metrics is served on a listener of its own)")
        return value

    @field_validator("redis_username", mode="before")
    @classmethod
    def _empty_username_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("redis_password", mode="before")
    @classmethod
    def _empty_secret_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _empty_keys_are_unset(cls, value: Any) -> Any:
        # Only an empty value opens writes; anything else must hold keys (fail closed).
        return None if value == "" else value

    @field_validator("api_keys")
    @classmethod
    def _check_api_keys(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        keys = split_api_keys(value.get_secret_value())
        if not keys:
            raise ValueError("holds no key (only commas or blanks); leave it empty for open writes")
        if any(len(key) < API_KEY_MIN_LENGTH for key in keys):
            raise ValueError(f"every key must be at least {API_KEY_MIN_LENGTH} characters")
        return value

    @field_validator("redis_mode", mode="before")
    @classmethod
    def _lowercase_mode(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str, info: ValidationInfo) -> str:
        # Messages never include the URL: it may carry a password.
        cluster = info.data.get("redis_mode") == "cluster"
        urls = redis_urls(value)
        if len(urls) > 1 and not cluster:
            raise ValueError("names several nodes: only TASKS_REDIS_MODE=cluster takes a list")
        for url in urls:
            _check_one_url(url, cluster=cluster)
        if len({urlsplit(url).scheme for url in urls}) > 1:
            raise ValueError("every seed node needs the same scheme")
        return value

    @field_validator("cleanup_retention", mode="before")
    @classmethod
    def _parse_retention(cls, value: Any) -> Any:
        if isinstance(value, timedelta):
            return value
        match = _RETENTION.match(str(value))
        if match is None or int(match.group(1)) == 0:
            raise ValueError("must be a positive duration like 30m, 12h or 7d")
        return timedelta(seconds=int(match.group(1)) * _UNIT_SECONDS[match.group(2)])

    @property
    def api_key_list(self) -> tuple[str, ...]:
        """The bearer keys that may write; empty means writes are open."""
        if self.api_keys is None:
            return ()
        return split_api_keys(self.api_keys.get_secret_value())


def redis_urls(value: str) -> list[str]:
    """The node URLs in TASKS_REDIS_URL: one, or (cluster mode) a comma-separated list of seeds."""
    return [url.strip() for url in value.split(",") if url.strip()] or [value]


def _check_one_url(url: str, *, cluster: bool) -> None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValueError("not a valid URL") from None
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError("scheme must be redis:// or rediss://")
    if not parts.hostname:
        raise ValueError("a host is required")
    if port == 0:
        raise ValueError("port must be 1-65535")
    db = parts.path.strip("/")
    if db and not db.isdigit():
        raise ValueError("the path must be a database number, e.g. /0")
    if cluster and db not in ("", "0"):
        raise ValueError("a cluster has database 0 only")


def env_name(field: str) -> str:
    """The environment variable that sets a settings field."""
    return "PORT" if field.lower() == "port" else ENV_PREFIX + field.upper()


def load_settings(**overrides: Any) -> Settings:
    """Read the settings, turning a validation failure into one ConfigError naming the variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        error = exc.errors(include_url=False, include_input=False)[0]
        field = str(error["loc"][0]) if error["loc"] else "settings"
        reason = error["msg"].removeprefix("Value error, ")
        raise ConfigError(env_name(field), reason) from None
