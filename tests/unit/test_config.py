"""Configuration: TOML file + MES_* environment, validated once with clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from central.config import DEFAULT_DB_URL, ConfigError, load_settings

EXAMPLE = Path(__file__).parents[2] / "config" / "central.example.toml"


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MES_CONFIG", raising=False)
    st = load_settings()
    assert st.database_url == DEFAULT_DB_URL and st.http_host == "127.0.0.1" and st.http_port == 8080
    assert st.mqtt_url == "disabled" and st.is_sqlite


def test_example_file_loads_with_nested_sections() -> None:
    st = load_settings(EXAMPLE)
    assert st.http_port == 8080 and st.session_ttl_seconds == 604800 and st.sign_in_max_failures == 5


def test_environment_wins_over_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MES_HTTP_PORT", "9090")
    monkeypatch.setenv("MES_DATABASE_URL", "postgresql+asyncpg://u@h/db")
    st = load_settings(EXAMPLE)
    assert st.http_port == 9090 and st.database_url == "postgresql+asyncpg://u@h/db" and not st.is_sqlite


def test_bad_values_name_the_field_and_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MES_HTTP_PORT", "not-a-port")
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert "http_port (MES_HTTP_PORT)" in str(err.value)
    monkeypatch.delenv("MES_HTTP_PORT")
    bad = tmp_path / "c.toml"
    bad.write_text('database_url = "mysql://x"\nunknown_key = 1\n')
    with pytest.raises(ConfigError) as err:
        load_settings(bad)
    assert "database_url" in str(err.value) and "unknown_key" in str(err.value)


def test_missing_or_broken_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.toml")
    broken = tmp_path / "b.toml"
    broken.write_text("http_port = \n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_settings(broken)


def test_secrets_do_not_leak_through_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MES_BOOTSTRAP_ADMIN_PASSWORD", "Sup3r-Secret")
    st = load_settings()
    assert "Sup3r-Secret" not in repr(st) and "Sup3r-Secret" not in str(st.model_dump())
