"""The edge agent's config: validated once, every error names its field path, TLS never silently off."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from edge.config import ConfigError, load_config, parse_config
from tests.brokers import make_tls

CONFIG = Path(__file__).parents[2] / "config"


def minimal(**mqtt: object) -> dict:
    return {
        "edge_id": "edge-line-b",
        "outbox": {"path": "/tmp/o.db"},
        "mqtt": {"url": "mqtt://broker"} | mqtt,
    }


def errors(data: dict) -> str:
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    return str(err.value)


def test_defaults_follow_the_protocol() -> None:
    cfg = parse_config(minimal())
    assert cfg.forwarder.ack_timeout == 10.0
    assert (cfg.forwarder.batch_max_events, cfg.forwarder.batch_max_bytes) == (500, 256 * 1024)
    assert cfg.mqtt.topic_prefix == "mes" and cfg.mqtt.port == 1883 and not cfg.mqtt.tls
    assert cfg.client_id == "mes-edge-edge-line-b" and cfg.devices == [] and cfg.rules == []
    assert parse_config(minimal(url="mqtts://broker")).mqtt.port == 8883


def test_every_error_names_its_field_path() -> None:
    msg = errors(
        {
            "edge_id": "edge/b",
            "typo": 1,
            "outbox": {"path": "/tmp/o.db", "max_events": 0},
            "mqtt": {"url": "http://broker", "topic_prefix": "mes/#"},
            "forwarder": {"batch_max_events": 501, "batch_max_bytes": 256 * 1024 + 1, "ack_timeout": 0},
        }
    )
    for path in (
        "edge_id:",
        "typo: unknown key",
        "outbox.max_events:",
        "mqtt.url: must start with mqtt://",
        "mqtt.topic_prefix:",
        "forwarder.batch_max_events:",
        "forwarder.batch_max_bytes:",
        "forwarder.ack_timeout:",
    ):
        assert path in msg, (path, msg)
    assert "mqtt.key_file: needs cert_file" in errors(minimal(url="mqtts://b", key_file="/etc/hosts"))
    msg = errors(minimal(url="mqtt://u:p@b", username="x"))
    assert "mqtt.username: given both in url and as username/password" in msg
    assert "forwarder.reconnect_max: must be ≥ reconnect_min" in errors(
        minimal() | {"forwarder": {"reconnect_min": 5, "reconnect_max": 1}}
    )


def test_tls_settings_with_a_plain_url_are_refused_not_ignored(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    msg = errors(minimal(ca_file=str(ca)))
    assert "mqtt.ca_file: TLS settings need an mqtts:// url" in msg
    assert "mqtt.cert_file" in errors(minimal(cert_file=str(ca)))
    assert "mqtt.ca_file: no such file" in errors(minimal(url="mqtts://b", ca_file=str(tmp_path / "nope")))
    # A file that is not a certificate is found at start, not at the first connection attempt.
    assert "mqtt.ca_file: not a usable CA certificate" in errors(minimal(url="mqtts://b", ca_file=str(ca)))
    assert "mqtt.cert_file: certificate and key (PEM) cannot be loaded" in errors(
        minimal(url="mqtts://b", cert_file=str(ca))
    )
    cfg = parse_config(minimal(url="mqtts://b:8884"))
    assert cfg.mqtt.tls and cfg.mqtt.port == 8884 and cfg.mqtt.endpoint == "mqtts://b:8884"


def test_credentials_come_from_the_url_the_file_or_the_environment(tmp_path: Path) -> None:
    cfg = parse_config(minimal(url="mqtt://edge%2Db:s%40cret@b"))
    assert cfg.mqtt.credentials() == ("edge-b", "s@cret")
    assert "s@cret" not in cfg.mqtt.endpoint and "cret" not in repr(cfg.mqtt.password)
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    assert parse_config(minimal(username="u", password_file=str(secret))).mqtt.credentials() == (
        "u",
        "from-file",
    )
    toml = tmp_path / "edge.toml"
    toml.write_text(
        'edge_id = "e"\n[outbox]\npath = "state/o.db"\n[mqtt]\nurl = "mqtt://b"\npassword_file = "pw"\n'
    )
    cfg = load_config(toml, environ={})
    assert cfg.outbox.path == tmp_path / "state" / "o.db"  # relative to the config file
    assert cfg.mqtt.credentials() == (None, "from-file")
    env = {"MES_EDGE_MQTT_USERNAME": "edge-e", "MES_EDGE_MQTT_PASSWORD": "from-env"}
    assert load_config(toml, environ=env).mqtt.credentials() == ("edge-e", "from-env")
    assert load_config(environ={"MES_EDGE_CONFIG": str(toml)}).edge_id == "e"


def test_file_problems_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "none.toml", environ={})
    with pytest.raises(ConfigError, match="--config FILE or set MES_EDGE_CONFIG"):
        load_config(environ={})
    broken = tmp_path / "b.toml"
    broken.write_text("edge_id = \n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(broken, environ={})


def test_the_line_b_example_is_valid_with_its_devices_and_rules(tmp_path: Path) -> None:
    top = tomllib.loads((CONFIG / "edge-line-b.example.toml").read_text())
    devices = tomllib.loads((CONFIG / "edge-line-b.devices.example.toml").read_text())
    # The example points at /etc files of a real installation; stand-ins here.
    (tmp_path / "pw").write_text("secret\n")
    top["mqtt"] |= {"password_file": str(tmp_path / "pw"), "ca_file": str(make_tls(tmp_path / "tls").ca)}
    cfg = parse_config(top | devices)
    assert cfg.edge_id == "edge-line-b" and cfg.line_code == "LINE-B" and cfg.mqtt.tls
    assert cfg.forwarder.ack_timeout == 10 and cfg.outbox.max_events == 1_000_000
    assert cfg.mqtt.credentials()[0] == cfg.edge_id  # the shipped Mosquitto ACL relies on it
    assert len(cfg.devices) >= 6 and cfg.rules
