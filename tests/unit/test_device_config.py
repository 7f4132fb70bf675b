"""Device/rule config (edge/device_config.py): errors name the field path; the shipped examples agree."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, ValidationError

from edge.device_config import DeviceConfig, RuleConfig, check_references
from edge.drivers.decode import decode, encode, scaled
from edge.sim.config import SimConfigError, load_sim_config
from edge.sim.edge_map import edge_models

CONFIG = Path(__file__).parents[2] / "config"


class Section(BaseModel):
    """The devices/rules part of an edge config, as the agent's EdgeConfig embeds it."""

    model_config = ConfigDict(extra="forbid")
    devices: list[DeviceConfig] = []
    rules: list[RuleConfig] = []


def errors(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ValidationError) as exc:
        Section.model_validate(data)
    return [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.value.errors()]


MODBUS = {
    "id": "plc",
    "protocol": "modbus",
    "endpoint": "10.0.0.5:502",
    "signals": [{"name": "c", "address": 1}],
}
RULE = {
    "name": "r",
    "device": "plc",
    "trigger": {"kind": "counter", "signal": "c"},
    "ingest_type": "AUTO",
    "station_code": "ST-1",
    "fields": {"sn": "c"},
}


def test_unknown_keys_are_refused_with_their_path() -> None:
    bad = {**MODBUS, "signals": [{"name": "c", "adress": 1}]}
    errs = errors({"devices": [bad]})
    assert any(e.startswith("devices.0.modbus.signals.0.adress: Extra inputs") for e in errs)
    assert any(e.startswith("devices.0.modbus.signals.0.address: Field required") for e in errs)


@pytest.mark.parametrize(
    ("device", "where", "says"),
    [
        ({**MODBUS, "protocol": "profibus"}, "devices.0", "tag 'profibus'"),
        ({**MODBUS, "endpoint": "10.0.0.5"}, "devices.0.modbus.endpoint", "host:port"),
        ({**MODBUS, "unit_id": 300}, "devices.0.modbus.unit_id", "less than or equal to 255"),
        (
            {**MODBUS, "signals": [{"name": "s", "address": 1, "type": "string"}]},
            "devices.0.modbus.signals.0",
            "length: required for a string",
        ),
        (
            {**MODBUS, "signals": [{"name": "b", "table": "coil", "address": 1, "type": "uint16"}]},
            "devices.0.modbus.signals.0",
            "type: a coil holds one bit",
        ),
        (
            {**MODBUS, "signals": [{"name": "c", "address": 1}, {"name": "c", "address": 2}]},
            "devices.0.modbus",
            "signals.1.name: 'c' is defined twice",
        ),
        ({**MODBUS, "reconnect_min": 5, "reconnect_max": 1}, "devices.0.modbus", "reconnect_max"),
        (
            {
                "id": "t",
                "protocol": "opcua",
                "endpoint": "http://x",
                "signals": [{"name": "a", "node": "i=1"}],
            },
            "devices.0.opcua.endpoint",
            "opc.tcp://",
        ),
        (
            {
                "id": "t",
                "protocol": "opcua",
                "endpoint": "opc.tcp://h:4840",
                "signals": [{"name": "a", "node": "Tester.Count"}],
            },
            "devices.0.opcua.signals.0.node",
            "NodeId",
        ),
        (
            {
                "id": "t",
                "protocol": "opcua",
                "endpoint": "opc.tcp://h:4840",
                "security": {"policy": "Basic256Sha256", "mode": "SignAndEncrypt"},
                "signals": [{"name": "a", "node": "i=1"}],
            },
            "devices.0.opcua.security",
            "certificate: required with policy 'Basic256Sha256'",
        ),
        (
            {
                "id": "t",
                "protocol": "opcua",
                "endpoint": "opc.tcp://h:4840",
                "security": {"policy": "None", "mode": "Sign"},
                "signals": [{"name": "a", "node": "i=1"}],
            },
            "devices.0.opcua.security",
            "mode: 'Sign' needs a policy",
        ),
        (
            {
                "id": "t",
                "protocol": "opcua",
                "endpoint": "opc.tcp://h:4840",
                "username": "edge",
                "signals": [{"name": "a", "node": "i=1"}],
            },
            "devices.0.opcua",
            "password: username and password go together",
        ),
    ],
)
def test_device_errors_name_the_field(device: dict[str, Any], where: str, says: str) -> None:
    errs = errors({"devices": [device]})
    assert any(e.startswith(where) and says in e for e in errs), errs


@pytest.mark.parametrize(
    ("over", "where", "says"),
    [
        ({"ingest_type": None}, "rules.0", "ingest_type: required for an INGEST rule"),
        ({"fields": {}}, "rules.0", "fields.sn: required for an INGEST AUTO rule"),
        (
            {"ingest_type": "BATCH", "fields": {"carrier_code": "c"}},
            "rules.0",
            "BATCH needs fields.carrier_code",
        ),
        (
            {"inspection": {"type": "SPI", "step_no": 20}},
            "rules.0",
            "inspection: only for an INGEST TEST rule",
        ),
        ({"trigger": {"kind": "counter"}}, "rules.0.trigger", "signal: required for a counter trigger"),
        ({"trigger": {"kind": "bounce", "signal": "c"}}, "rules.0.trigger.kind", "Input should be"),
        ({"result_map": {"1": "MAYBE"}}, "rules.0.result_map.1", "Input should be 'PASS' or 'FAIL'"),
        (
            {"trigger": {"kind": "rising_edge", "signal": "c"}, "record_buffer": {"size": 4, "stride": 8}},
            "rules.0",
            "record_buffer: a record buffer is indexed by a counter trigger",
        ),
        ({"event": "EQUIPMENT_STATUS"}, "rules.0", "ingest_type: only for an INGEST rule"),
    ],
)
def test_rule_errors_name_the_field(over: dict[str, Any], where: str, says: str) -> None:
    errs = errors({"devices": [MODBUS], "rules": [{**RULE, **over}]})
    assert any(e.startswith(where) and says in e for e in errs), errs


def test_references_to_unknown_devices_and_signals_name_their_path() -> None:
    sec = Section.model_validate(
        {
            "devices": [MODBUS, MODBUS],
            "rules": [
                {**RULE, "device": "nope"},
                {**RULE, "fields": {"sn": "serial"}, "measurements": [{"name": "T", "signal": "temp"}]},
                {**RULE, "name": "buf", "record_buffer": {"size": 4}},
                {**RULE, "name": "evt", "trigger": {"kind": "node_event"}},
            ],
        }
    )
    errs = check_references(sec.devices, sec.rules)
    assert errs == [
        "devices.1.id: 'plc' is defined twice",
        "rules.0.device: no device 'nope' (known: plc)",
        "rules.1.name: 'r' is defined twice",
        "rules.1.fields.sn: device 'plc' has no signal 'serial'",
        "rules.1.measurements.0.signal: device 'plc' has no signal 'temp'",
        "rules.2.record_buffer.stride: required for a Modbus device (registers per record)",
        "rules.3.trigger.kind: node_event needs an OPC UA device ('plc' is Modbus)",
    ]


def test_shipped_device_example_loads_and_matches_the_simulated_line() -> None:
    data = tomllib.loads((CONFIG / "edge-line-b.devices.example.toml").read_text("utf-8"))
    sec = Section.model_validate(data)
    assert check_references(sec.devices, sec.rules) == []
    sim = load_sim_config(CONFIG / "sim-line-b.example.toml")
    devices, rules = edge_models(sim)
    assert sec.devices == devices and sec.rules == rules
    assert [d.id for d in devices] == [s.code for s in sim.stations]
    stations = {r.station_code for r in rules}
    assert stations == {
        "ST-B-PRINT-01",
        "ST-B-SPI-01",
        "ST-B-MOUNT-01",
        "ST-B-REFLOW-01",
        "ST-B-AOI-01",
        "ST-B-ICT-01",
    }


def test_sim_config_errors_name_the_field(tmp_path: Path) -> None:
    p = tmp_path / "sim.toml"
    p.write_text(
        '[line]\ntakt = -1\n[sn]\nprefix = "SN-"\n[[stations]]\ncode = "A"\nkind = "laser"\n', "utf-8"
    )
    with pytest.raises(SimConfigError) as exc:
        load_sim_config(p)
    text = str(exc.value)
    assert "takt: Input should be greater than 0" in text and "stations.0.kind: Input should be" in text


# --- register decoding (pure; the driver test checks the same against a real server) --------------

VALUES = {
    "int16": -1234,
    "uint16": 54321,
    "int32": -123456789,
    "uint32": 3_000_000_000,
    "int64": -9_000_000_000_000,
    "uint64": 18_000_000_000_000_000_000,
    "float32": 245.5,
    "float64": -3.141592653589793,
}


@pytest.mark.parametrize("type_", list(VALUES))
@pytest.mark.parametrize("byte_order", ["big", "little"])
@pytest.mark.parametrize("word_order", ["big", "little"])
def test_encode_decode_round_trip(type_: str, byte_order: str, word_order: str) -> None:
    regs = encode(VALUES[type_], type_, byte_order=byte_order, word_order=word_order)
    assert decode(regs, type_, byte_order=byte_order, word_order=word_order) == VALUES[type_]


def test_word_and_byte_order_mean_what_plcs_mean() -> None:
    # 0x12345678 as uint32: big/big = [0x1234, 0x5678]; word-swapped (CDAB) = [0x5678, 0x1234];
    # byte-swapped (BADC) = [0x3412, 0x7856]; both (DCBA) = [0x7856, 0x3412].
    assert decode([0x1234, 0x5678], "uint32") == 0x12345678
    assert decode([0x5678, 0x1234], "uint32", word_order="little") == 0x12345678
    assert decode([0x3412, 0x7856], "uint32", byte_order="little") == 0x12345678
    assert decode([0x7856, 0x3412], "uint32", byte_order="little", word_order="little") == 0x12345678
    assert decode(encode("SN-42", "string", length=4), "string") == "SN-42"
    assert decode([0x4E53, 0x312D], "string", byte_order="little") == "SN-1"
    assert scaled(2453, 0.1) == 245.3 and scaled("x", 0.1) == "x"
