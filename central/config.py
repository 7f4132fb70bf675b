"""Central's configuration: TOML file + MES_* environment, validated once at start (architecture.md §6)."""

from __future__ import annotations

import os
import ssl
import tomllib
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from shared import tls

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
    # "disabled", "embedded" (an amqtt broker in this process on 127.0.0.1:mqtt_embedded_port) or
    # "mqtt://user:password@host:port" (Mosquitto/EMQX in production; mqtts:// for TLS).
    mqtt_url: str = "disabled"
    mqtt_embedded_port: int = Field(1884, ge=0, le=65535)
    mqtt_topic_prefix: str = "mes"
    # MQTT v5 shared subscription group: several central processes split the edges' batches between them.
    mqtt_shared_group: str | None = None
    mqtt_client_id: str | None = None
    # A batch larger than this is refused unread (edge.md allows 256 KiB; the margin covers older agents).
    mqtt_max_payload_bytes: int = Field(1024 * 1024, ge=1024)
    # TLS (mqtts:// only): the CA that signed the broker's certificate (the system store when unset), and a
    # client certificate for a listener that requires one (mutual TLS; the key in cert_file or key_file).
    mqtt_ca_file: str | None = None
    mqtt_cert_file: str | None = None
    mqtt_key_file: str | None = None
    log_level: str = "INFO"
    # Peers whose X-Forwarded-For / X-Real-IP names the client (nginx on this host by default); the header of
    # any other peer is ignored.
    trusted_proxies: list[str] = ["127.0.0.1", "::1"]
    session_ttl_seconds: int = Field(7 * 24 * 3600, ge=60)
    secure_cookies: bool = False
    sign_in_max_failures: int = Field(5, ge=1)
    sign_in_window_seconds: int = Field(900, ge=1)
    idempotency_ttl_seconds: int = Field(24 * 3600, ge=60)
    # How long a claimed Idempotency-Key is held for a request that has not committed: after it, a retry takes
    # over the claim of a request that died with its process (services/idempotency.py).
    idempotency_lease_seconds: int = Field(120, ge=1)
    allow_demo_seed: bool = False
    bootstrap_admin_email: str | None = None
    bootstrap_admin_password: SecretStr | None = None
    seed_admin_password: SecretStr = SecretStr("ChangeMe123!")
    seed_test_password: SecretStr = SecretStr("Test123!")
    migrate_on_start: bool = True
    # Run the background loops (outbound delivery, sync scheduler) in this process. They are safe to run in
    # several processes at once; switch off to dedicate some processes to requests only.
    run_workers: bool = True
    # ERP/TPM pull sync (docs/integration.md); an unset base URL makes that sync answer 502.
    erp_base_url: str | None = None
    erp_api_key: SecretStr | None = None
    tpm_base_url: str | None = None
    tpm_api_key: SecretStr | None = None
    sync_timeout_seconds: float = Field(30.0, gt=0)
    # Seconds between scheduled pulls of every ERP/TPM entity; 0 = scheduler off (the default).
    sync_interval_seconds: int = Field(0, ge=0)
    # Outbound ERP completion feedback (domain.md §9 Push): enqueue + deliver only when enabled.
    outbound_feedback_enabled: bool = False
    outbound_erp_base_url: str | None = None
    outbound_erp_path: str = "/api/mes/outbound/erp/feedback"
    outbound_erp_api_key: SecretStr | None = None
    outbound_max_attempts: int = Field(50, ge=1)
    outbound_poll_seconds: float = Field(30.0, gt=0)  # domain.md §3: worker every 30 s, batch 50
    outbound_backoff_base_seconds: float = Field(30.0, gt=0)  # retry at now + 30 s·2^(attempts−1)
    outbound_backoff_max_seconds: float = Field(3600.0, gt=0)
    # `mes-central archive`: closed runs that ended more than this many days ago leave the database.
    archive_after_days: int = Field(365, ge=1)

    @field_validator("database_url")
    @classmethod
    def _known_driver(cls, v: str) -> str:
        if not (v.startswith("sqlite+aiosqlite://") or v.startswith("postgresql+asyncpg://")):
            raise ValueError("must start with sqlite+aiosqlite:// or postgresql+asyncpg://")
        return v

    @field_validator("mqtt_url")
    @classmethod
    def _mqtt_url(cls, v: str) -> str:
        if v in ("disabled", "embedded") or v.startswith(("mqtt://", "mqtts://")):
            return v
        raise ValueError('must be "disabled", "embedded", mqtt://user:pass@host:port or mqtts://…')

    @field_validator("log_level")
    @classmethod
    def _level(cls, v: str) -> str:
        v = v.upper()
        if v not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
        return v

    @model_validator(mode="after")
    def _mqtt_tls(self) -> Settings:
        files = {
            "mqtt_ca_file": self.mqtt_ca_file,
            "mqtt_cert_file": self.mqtt_cert_file,
            "mqtt_key_file": self.mqtt_key_file,
        }
        tls.check_settings(
            self.mqtt_url.startswith("mqtts://"),
            "mqtt_url",
            files,
            cert="mqtt_cert_file",
            key="mqtt_key_file",
        )
        return self

    def mqtt_ssl_context(self) -> ssl.SSLContext:
        return tls.client_context(self.mqtt_ca_file, self.mqtt_cert_file, self.mqtt_key_file)

    @model_validator(mode="after")
    def _outbound_target(self) -> Settings:
        if self.outbound_feedback_enabled and not self.outbound_erp_base_url:
            raise ValueError(
                "outbound_feedback_enabled needs outbound_erp_base_url (MES_OUTBOUND_ERP_BASE_URL)"
            )
        return self

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
            where = f"{field} (MES_{field.upper()}): " if field else ""
            lines.append(f"  {where}{err['msg']}")
        raise ConfigError("invalid configuration:\n" + "\n".join(lines)) from exc
