"""Config (factor III): one settings class, env vars with a prefix, `.env`, strict validation."""

from __future__ import annotations

import re
import tomllib
from datetime import timedelta
from pathlib import Path

import pytest

import service
from service.settings import (
    API_KEY_MIN_LENGTH,
    ConfigError,
    Settings,
    env_name,
    load_settings,
    redis_urls,
)
from tests.support import ROOT

pytestmark = pytest.mark.factor("III")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No TASKS_* or PORT from the developer's shell, and no .env in the working directory."""
    import os

    for name in list(os.environ):
        if name.startswith("TASKS_") or name == "PORT":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def settings_env_names() -> set[str]:
    return {env_name(name) for name in Settings.model_fields}


def test_defaults_match_the_contract() -> None:
    settings = load_settings()
    assert settings.port == 8080 and settings.host == "0.0.0.0"
    assert settings.metrics_port == 9090
    assert settings.store == "memory"
    assert settings.redis_url == "redis://localhost:6379/0" and settings.redis_password is None
    assert settings.redis_username is None
    assert settings.redis_timeout_seconds == 1.0 and settings.redis_key_prefix == "tasks:"
    assert settings.redis_max_connections == 16
    assert settings.redis_mode == "standalone" and settings.redis_shards == 16
    assert settings.max_body_bytes == 128 * 1024 and settings.max_header_bytes == 16 * 1024
    assert settings.api_key_list == () and settings.log_level == "info"
    assert settings.shutdown_delay_seconds == 0 and settings.graceful_timeout_seconds == 20
    assert settings.idempotency_ttl_seconds == 86400
    assert settings.cleanup_retention == timedelta(days=7)
    assert (settings.version, settings.git_revision, settings.build_date) == (
        service.__version__, "unknown", "unknown"
    )  # fmt: skip


def test_port_is_read_without_prefix_and_the_rest_with_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "9000")
    monkeypatch.setenv("TASKS_PORT", "1")  # not a setting: ignored
    monkeypatch.setenv("TASKS_STORE", "redis")
    monkeypatch.setenv("TASKS_LOG_LEVEL", "DEBUG")
    settings = load_settings()
    assert (settings.port, settings.store, settings.log_level) == (9000, "redis", "debug")


def test_dotenv_is_read_and_environment_variables_win(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text("TASKS_REDIS_KEY_PREFIX=dotenv:\nPORT=7000\n")
    monkeypatch.setenv("PORT", "7001")
    settings = load_settings()
    assert settings.redis_key_prefix == "dotenv:" and settings.port == 7001


@pytest.mark.parametrize(
    ("value", "expected"),
    [("30s", 30), ("15m", 900), ("12h", 43200), ("7d", 604800)],
)
def test_cleanup_retention_accepts_n_and_a_unit(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: int
) -> None:
    monkeypatch.setenv("TASKS_CLEANUP_RETENTION", value)
    assert load_settings().cleanup_retention == timedelta(seconds=expected)


def test_api_keys_are_a_comma_separated_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKS_API_KEYS", " key-alpha-0123456789, key-beta-0123456789 ,,")
    settings = load_settings()
    assert settings.api_key_list == ("key-alpha-0123456789", "key-beta-0123456789")
    assert "key-alpha" not in repr(settings) and "key-alpha" not in str(settings.model_dump())


@pytest.mark.parametrize("value", [",", " , ,", "  ", "short-key", "long-enough-key-1,short"])
def test_api_keys_fail_closed(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    """A value that holds no key, or a key under 16 characters, is a config error: it never
    leaves writes open, and never lets a guessable key in."""
    monkeypatch.setenv("TASKS_API_KEYS", value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert caught.value.variable == "TASKS_API_KEYS"
    assert "short" not in str(caught.value) and "long-enough" not in str(caught.value)


def test_an_api_key_of_16_characters_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKS_API_KEYS", "k" * API_KEY_MIN_LENGTH)
    assert load_settings().api_key_list == ("k" * API_KEY_MIN_LENGTH,)


def test_empty_secrets_mean_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKS_API_KEYS", "")
    monkeypatch.setenv("TASKS_REDIS_PASSWORD", "")
    monkeypatch.setenv("TASKS_REDIS_USERNAME", "")
    settings = load_settings()
    assert settings.api_keys is None and settings.redis_password is None
    assert settings.redis_username is None


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("TASKS_STORE", "postgres"),
        ("TASKS_REDIS_URL", "http://user:hunter2@host/0"),
        ("TASKS_REDIS_URL", "redis://:hunter2@host:99999/0"),
        ("TASKS_REDIS_URL", "redis://:hunter2@/0"),
        ("TASKS_REDIS_URL", "redis://:hunter2@host/zero"),
        ("TASKS_REDIS_URL", "redis://:hunter2@a:7000,redis://b:7001"),  # a list: cluster only
        ("TASKS_REDIS_MODE", "sentinel"),
        ("TASKS_REDIS_SHARDS", "0"),
        ("TASKS_REDIS_SHARDS", "257"),
        ("PORT", "0"),
        ("TASKS_METRICS_PORT", "0"),
        ("TASKS_METRICS_PORT", "8080"),  # PORT's default: /metrics never shares the API's port
        ("TASKS_REDIS_TIMEOUT_SECONDS", "-1"),
        ("TASKS_REDIS_KEY_PREFIX", "has space"),
        ("TASKS_REDIS_USERNAME", "has space"),
        ("TASKS_LOG_LEVEL", "verbose"),
        ("TASKS_SHUTDOWN_DELAY_SECONDS", "soon"),
        ("TASKS_IDEMPOTENCY_TTL_SECONDS", "0"),
        ("TASKS_CLEANUP_RETENTION", "7"),
        ("TASKS_CLEANUP_RETENTION", "0d"),
    ],
)
def test_invalid_values_name_the_variable_and_never_echo_the_value(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert caught.value.variable == variable
    assert str(caught.value).startswith(f"{variable}: ") and "\n" not in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_rediss_urls_and_passwords_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKS_REDIS_URL", "rediss://default:pw@redis.example:6380/2")
    monkeypatch.setenv("TASKS_REDIS_PASSWORD", "secret")
    settings = load_settings()
    assert settings.redis_password is not None
    assert settings.redis_password.get_secret_value() == "secret"


def test_cluster_mode_takes_seed_nodes_as_a_comma_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKS_REDIS_MODE", "Cluster")
    monkeypatch.setenv("TASKS_REDIS_URL", "redis://:pw@node-a:7000, redis://node-b:7001")
    settings = load_settings()
    assert settings.redis_mode == "cluster"
    assert redis_urls(settings.redis_url) == ["redis://:pw@node-a:7000", "redis://node-b:7001"]


@pytest.mark.parametrize(
    "value",
    ["redis://:hunter2@node-a:7000/1", "redis://:hunter2@node-a:7000,rediss://node-b:7001"],
)
def test_cluster_mode_refuses_a_database_number_or_mixed_schemes(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("TASKS_REDIS_MODE", "cluster")
    monkeypatch.setenv("TASKS_REDIS_URL", value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert caught.value.variable == "TASKS_REDIS_URL" and "hunter2" not in str(caught.value)


def test_env_example_lists_exactly_the_settings() -> None:
    text = (ROOT / ".env.example").read_text()
    listed = set(re.findall(r"^([A-Z_]+)=", text, flags=re.MULTILINE))
    assert listed == settings_env_names()


def test_readme_config_table_lists_exactly_the_settings() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    assert "<!-- config-table" in section
    listed = set(re.findall(r"^\| `([A-Z_]+)` \|", section, flags=re.MULTILINE))
    assert listed == settings_env_names()


@pytest.mark.factor("I")
def test_package_version_matches_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert service.__version__ == project["version"]
