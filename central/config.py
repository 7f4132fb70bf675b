"""Central's configuration: TOML file + MES_* environment, validated once at start (architecture.md §6)."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

DEFAULT_DB_URL = "sqlite+aiosqlite:///./var/mes.db"


class ConfigError(Exception):
    """Configuration could not be loaded; the message names every bad field."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MES_", extra="forbid", frozen=True)

    database_url: str = DEFAULT_DB_URL
    database_pool_size: int = Field(10, ge=1, le=200)
    database_echo: bool = False
    http_host: str = "127.0.0.1"
    http_port: int = Field(8080, ge=0, le=65535)
    # Largest accepted request body; bigger ones get 413 PAYLOAD_TOO_LARGE.
    http_max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    mqtt_url: str = "disabled"
    log_level: str = "INFO"
    session_ttl_seconds: int = Field(7 * 24 * 3600, ge=60)
    secure_cookies: bool = False
    sign_in_max_failures: int = Field(5, ge=1)
    sign_in_window_seconds: int = Field(900, ge=1)
    idempotency_ttl_seconds: int = Field(24 * 3600, ge=60)
    allow_demo_seed: bool = False
    bootstrap_admin_email: str | None = None
    bootstrap_admin_password: SecretStr | None = None
    seed_admin_password: SecretStr = SecretStr("ChangeMe123!")
    seed_test_password: SecretStr = SecretStr("Test123!")
    migrate_on_start: bool = True

    @field_validator("database_url")
    @classmethod
    def _known_driver(cls, v: str) -> str:
        if not (v.startswith("sqlite+aiosqlite://") or v.startswith("postgresql+asyncpg://")):
            raise ValueError("must start with sqlite+aiosqlite:// or postgresql+asyncpg://")
        return v

    @field_validator("log_level")
    @classmethod
    def _level(cls, v: str) -> str:
        v = v.upper()
        if v not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
        return v

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Explicit arguments (the TOML file's values) lose to the environment: env > file > defaults.
        return (env_settings, init_settings)


def _flatten_toml(data: dict[str, Any]) -> dict[str, Any]:
    """`[http] port = 1` → `http_port = 1`, matching the MES_HTTP_PORT environment name."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            for sub, v in _flatten_toml(value).items():
                flat[f"{key}_{sub}"] = v
        else:
            flat[key] = value
    return flat


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Reads the TOML file (explicit path, else MES_CONFIG), then the environment; raises ConfigError."""
    file_values: dict[str, Any] = {}
    path = path or os.environ.get("MES_CONFIG")
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            file_values = _flatten_toml(tomllib.loads(p.read_text(encoding="utf-8")))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{p}: invalid TOML: {exc}") from exc
    file_values.update(overrides)
    try:
        return Settings(**file_values)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            field = ".".join(str(x) for x in err["loc"])
            lines.append(f"  {field} (MES_{field.upper()}): {err['msg']}")
        raise ConfigError("invalid configuration:\n" + "\n".join(lines)) from exc
