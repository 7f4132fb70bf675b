"""The edge agent's configuration: one TOML file, validated once at start; each error names its field path."""

from __future__ import annotations

import os
import re
import ssl
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from edge.device_config import DeviceConfig, RuleConfig, check_references
from shared import tls
from shared.events import MAX_BATCH_BYTES, MAX_BATCH_EVENTS
from shared.topics import DEFAULT_PREFIX

# The only environment variables read, once, by load_config: secrets are better kept out of the TOML file.
ENV_MQTT_USERNAME = "MES_EDGE_MQTT_USERNAME"
ENV_MQTT_PASSWORD = "MES_EDGE_MQTT_PASSWORD"
ENV_CONFIG = "MES_EDGE_CONFIG"

_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class ConfigError(Exception):
    """The configuration cannot be used; the message has one line per problem, each naming its field path."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OutboxConfig(_Strict):
    """Where events wait for central's ack, and how much may wait before devices are refused."""

    path: Path
    max_events: int = Field(default=1_000_000, ge=1)
    max_bytes: int = Field(default=1024**3, ge=64 * 1024)


class MqttConfig(_Strict):
    """The broker: `mqtt://` is plain TCP, `mqtts://` is TLS; nothing in between, no fallback."""

    url: str
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    client_id: str | None = Field(default=None, max_length=128)
    topic_prefix: str = DEFAULT_PREFIX
    keepalive: int = Field(default=30, ge=5, le=3600)
    connect_timeout: float = Field(default=5.0, gt=0, le=120)
    protocol: Literal["3.1.1", "5"] = "3.1.1"
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ValueError("must start with mqtt:// (plain TCP) or mqtts:// (TLS)")
        try:
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"bad port: {exc}") from None
        if not parts.hostname:
            raise ValueError("has no host")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError("must be scheme://[user:password@]host[:port], without a path or query")
        if port == 0:
            raise ValueError("port must be 1…65535")
        return v

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not v or any(c in v for c in "+#$") or v.startswith("/") or v.endswith("/") or "//" in v:
            raise ValueError("must be non-empty topic levels without wildcards or empty levels, e.g. 'mes'")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> MqttConfig:
        parts = urlsplit(self.url)
        if parts.username is not None and (self.username is not None or self.password is not None):
            raise ValueError("username: given both in url and as username/password; keep one")
        if self.password is not None and self.password_file is not None:
            raise ValueError("password_file: give either password or password_file")
        files = {"ca_file": self.ca_file, "cert_file": self.cert_file, "key_file": self.key_file}
        tls.check_settings(self.tls, "url", files, cert="cert_file", key="key_file")
        return self

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "mqtts"

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or (8883 if self.tls else 1883)

    @property
    def endpoint(self) -> str:
        """host:port with the scheme, never the credentials (safe to log)."""
        return f"{urlsplit(self.url).scheme}://{self.host}:{self.port}"

    def ssl_context(self) -> ssl.SSLContext:
        return tls.client_context(self.ca_file, self.cert_file, self.key_file)

    def credentials(self) -> tuple[str | None, str | None]:
        """(username, password) from the url, the fields or the password file; read at start only."""
        parts = urlsplit(self.url)
        if parts.username is not None:
            return unquote(parts.username), unquote(parts.password) if parts.password is not None else None
        password = self.password.get_secret_value() if self.password else None
        if self.password_file is not None:
            password = self.password_file.read_text(encoding="utf-8").strip()
        return self.username, password


class ForwarderConfig(_Strict):
    """Batching, acks and reconnects of the MQTT forwarder (edge.md delivery rules)."""

    ack_timeout: float = Field(default=10.0, gt=0, le=3600, description="seconds before the batch is resent")
    batch_max_events: int = Field(default=MAX_BATCH_EVENTS, ge=1, le=MAX_BATCH_EVENTS)
    batch_max_bytes: int = Field(default=MAX_BATCH_BYTES, ge=4096, le=MAX_BATCH_BYTES)
    status_interval: float = Field(default=30.0, gt=0, le=3600, description="periodic status republish, s")
    reconnect_min: float = Field(default=0.5, gt=0, le=600)
    reconnect_max: float = Field(default=30.0, gt=0, le=3600)
    retry_min: float = Field(default=0.5, gt=0, le=600, description="first delay after a RETRY ack")
    retry_max: float = Field(default=30.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _ranges(self) -> ForwarderConfig:
        if self.reconnect_max < self.reconnect_min:
            raise ValueError("reconnect_max: must be ≥ reconnect_min")
        if self.retry_max < self.retry_min:
            raise ValueError("retry_max: must be ≥ retry_min")
        return self


class AcquisitionConfig(_Strict):
    """How device records become outbox events."""

    # Devices answer with different delays (a Modbus poll, an OPC UA publishing interval), so a board's record
    # at a later station can be read before its record at the earlier one; central would refuse it. Records
    # read within this window are stored together in the machines' time order. Keep it ≥ 2× the slowest
    # device's poll/publishing interval and below the machines' cycle. 0 (the default: at a real line's takt
    # of seconds the race needs a skew of a whole takt; central holds early events anyway, see
    # central/mqtt/parked.py) stores each reading at once, adding no latency.
    reorder_window: float = Field(default=0.0, ge=0, le=10, description="seconds records are merged in")


class MetricsConfig(_Strict):
    """The optional Prometheus listener (`GET /metrics`). It has no authentication (the edge has no user
    accounts): keep it on the loopback address, or firewall the port to the Prometheus host."""

    listen: str = Field(default="127.0.0.1:9464", description="host:port; [::1]:9464 for IPv6")

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        parts = urlsplit(f"//{v}")
        try:
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"bad port: {exc}") from None
        if not parts.hostname or port is None or parts.path or parts.username is not None:
            raise ValueError("must be host:port, e.g. 127.0.0.1:9464")
        return v

    @property
    def host(self) -> str:
        return urlsplit(f"//{self.listen}").hostname or ""

    @property
    def port(self) -> int:
        return urlsplit(f"//{self.listen}").port or 0


class EdgeConfig(_Strict):
    """One edge agent = one line: identity, outbox, broker, forwarder, devices and rules."""

    edge_id: str = Field(pattern=_ID, description="also the MQTT topic level and central's source system")
    line_code: str | None = Field(default=None, max_length=64)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    outbox: OutboxConfig
    mqtt: MqttConfig
    forwarder: ForwarderConfig = ForwarderConfig()
    acquisition: AcquisitionConfig = AcquisitionConfig()
    metrics: MetricsConfig | None = None  # no [metrics] section: no listener
    devices: list[DeviceConfig] = Field(default_factory=list)
    rules: list[RuleConfig] = Field(default_factory=list)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v

    @property
    def client_id(self) -> str:
        return self.mqtt.client_id or f"mes-edge-{self.edge_id}"


def _path(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in loc) or "(file)"


_BLAMED = re.compile(r"^([A-Za-z_]\w*(?:\.\w+)*): (.+)$", re.DOTALL)


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = tuple(err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "value_error" and (m := _BLAMED.match(msg)):
            # A model's validator names the sub-field it blames ("key_file: …"): make that part of the path.
            loc, msg = (*loc, *m.group(1).split(".")), m.group(2)
        lines.append(f"{_path(loc)}: {msg}")
    return "\n".join(lines)


def _resolve(data: dict[str, Any], base: Path) -> None:
    """Relative file paths are relative to the config file, not to whatever directory the agent started in."""
    sections = (("outbox", ("path",)), ("mqtt", ("password_file", "ca_file", "cert_file", "key_file")))
    for section, keys in sections:
        sub = data.get(section)
        if isinstance(sub, dict):
            for key in keys:
                value = sub.get(key)
                if isinstance(value, str) and value and not Path(value).is_absolute():
                    sub[key] = str(base / value)


def _check_files(cfg: EdgeConfig) -> list[str]:
    errors = []
    for name in ("password_file", "ca_file", "cert_file", "key_file"):
        p: Path | None = getattr(cfg.mqtt, name)
        if p is not None and not p.is_file():
            errors.append(f"mqtt.{name}: no such file: {p}")
    if not errors and cfg.mqtt.tls:
        m = cfg.mqtt
        try:
            ctx = ssl.create_default_context(cafile=str(m.ca_file) if m.ca_file else None)
        except (ssl.SSLError, OSError) as exc:
            errors.append(f"mqtt.ca_file: not a usable CA certificate (PEM): {exc}")
        else:
            if m.cert_file is not None:
                try:
                    ctx.load_cert_chain(str(m.cert_file), str(m.key_file) if m.key_file else None)
                except (ssl.SSLError, OSError) as exc:
                    errors.append(f"mqtt.cert_file: certificate and key (PEM) cannot be loaded: {exc}")
    if cfg.outbox.path.is_dir():
        errors.append(f"outbox.path: is a directory, expected a file path: {cfg.outbox.path}")
    return errors


def parse_config(data: dict[str, Any], *, base: Path | None = None) -> EdgeConfig:
    """Validates an already-parsed TOML document; raises ConfigError naming every bad field."""
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    if base is not None:
        _resolve(data, base)
    try:
        cfg = EdgeConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    errors = check_references(list(cfg.devices), list(cfg.rules)) + _check_files(cfg)
    if errors:
        raise ConfigError("\n".join(errors))
    return cfg


def load_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> EdgeConfig:
    """Reads the TOML file (given path, else MES_EDGE_CONFIG) and MQTT credentials from the environment."""
    env = os.environ if environ is None else environ
    path = path or env.get(ENV_CONFIG)
    if not path:
        raise ConfigError(f"no config file: pass --config FILE or set {ENV_CONFIG}")
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: invalid TOML: {exc}") from None
    mqtt = data.get("mqtt")
    if isinstance(mqtt, dict):
        if env.get(ENV_MQTT_USERNAME):
            mqtt["username"] = env[ENV_MQTT_USERNAME]
        if env.get(ENV_MQTT_PASSWORD):
            mqtt["password"] = env[ENV_MQTT_PASSWORD]
            mqtt.pop("password_file", None)
    try:
        return parse_config(data, base=p.resolve().parent)
    except ConfigError as exc:
        raise ConfigError(f"{p}: invalid configuration:\n{exc}") from None


def redact(text: str) -> str:
    """Strips credentials from a URL inside text (for logs and error messages)."""
    return re.sub(r"(mqtts?://)[^@/\s]*@", r"\1***@", text)
