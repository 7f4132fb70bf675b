"""The edge agent's devices and rules for a simulated line (config/edge-line-b.devices.example.toml).

Generated from the simulator's memory maps so the two cannot drift apart: a test checks that the shipped
example equals what this produces for config/sim-line-b.example.toml.
"""

from __future__ import annotations

import json
from typing import Any

from edge.device_config import ModbusDevice, OpcuaDevice, RuleConfig
from edge.sim import layout
from edge.sim.config import SimLineConfig, SimStation

STATUS_MAP = {"1": "normal", "2": "down"}
PLC_RESULT_MAP = {"1": "PASS", "2": "FAIL"}


def _plc(st: SimStation, endpoint: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    base = layout.BASE if st.buffer else layout.LAST
    signals: list[dict[str, Any]] = [
        {"name": "status", "address": layout.STATUS, "type": "uint16"},
        {"name": "counter", "address": layout.COUNTER, "type": "uint32"},
    ]
    for name, (offset, type_, length) in layout.fields(st.kind).items():
        if name == "placements" and st.kind != "mount":
            continue
        sig: dict[str, Any] = {"name": name, "address": base + offset, "type": type_}
        if type_ == "string":
            sig["length"] = length
        if name == "peak_temp":
            sig["scale"] = layout.PEAK_TEMP_SCALE
        signals.append(sig)
    device = {
        "id": st.code,
        "protocol": "modbus",
        "endpoint": endpoint,
        "unit_id": st.unit_id,
        "timeout": 2.0,
        "poll_interval": 0.2,
        "reconnect_min": 0.5,
        "reconnect_max": 10.0,
        "signals": signals,
    }
    rule: dict[str, Any] = {
        "name": f"{st.kind}-record",
        "device": st.code,
        "trigger": {"kind": "counter", "signal": "counter"},
        "event": "INGEST",
        "ingest_type": layout.INGEST_TYPE[st.kind],
        "station_code": st.code,
        "result_map": PLC_RESULT_MAP,
    }
    if st.kind == "reflow":
        rule["fields"] = {
            "carrier_code": "carrier",
            "sn_list": [f"sn_{i}" for i in range(layout.LOT_MAX_SNS)],
            "sn_count": "sn_count",
            "result": "result",
            "occurred_at": "time",
        }
        m = layout.MEASURES["reflow"][0]
        rule["measurements"] = [
            {"name": m.name, "signal": "peak_temp", "unit": m.unit, "low": m.low, "high": m.high}
        ]
    else:
        rule["fields"] = {"sn": "sn", "result": "result", "occurred_at": "time"}
        if st.kind == "mount":
            rule["measurements"] = [{"name": "PLACEMENT_COUNT", "signal": "placements", "unit": "pcs"}]
    if st.buffer:
        rule["record_buffer"] = {"size": st.buffer, "stride": layout.stride(st.kind)}
    return device, [rule, _status_rule(st)]


def _tester(st: SimStation, endpoint: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    slot: str | None = "{slot}" if st.buffer else None
    node_names = {"sn": "SN", "result": "Result", "record_id": "RecordId", "run_no": "RunNo", "time": "Time"}
    signals: list[dict[str, Any]] = [
        {"name": "status", "node": layout.STATUS_NODE},
        {"name": "counter", "node": layout.COUNT_NODE, "type": "uint32"},
        *({"name": k, "node": layout.tester_node(v, slot)} for k, v in node_names.items()),
    ]
    if st.kind in ("spi", "aoi"):
        signals.append({"name": "defects", "node": layout.tester_node("Defects", slot)})
    measurements: list[dict[str, Any]] = []
    for m in layout.MEASURES[st.kind]:
        key = m.name.lower()
        signals += [
            {"name": key, "node": layout.tester_node(f"M.{m.name}", slot)},
            {"name": f"{key}_low", "node": layout.limit_node(m.name, "Low")},
            {"name": f"{key}_high", "node": layout.limit_node(m.name, "High")},
        ]
        measurements.append(
            {
                "name": m.name,
                "signal": key,
                "unit": m.unit,
                "low_signal": f"{key}_low",
                "high_signal": f"{key}_high",
            }
        )
    device = {
        "id": st.code,
        "protocol": "opcua",
        "endpoint": endpoint,
        "timeout": 4.0,
        "poll_interval": 1.0,
        "publishing_interval": 0.2,
        "watchdog_interval": 1.0,
        "reconnect_min": 0.5,
        "reconnect_max": 10.0,
        "signals": signals,
    }
    fields: dict[str, Any] = {
        "sn": "sn",
        "result": "result",
        "test_result_id": "record_id",
        "record_id": "record_id",
        "run_no": "run_no",
        "occurred_at": "time",
    }
    rule: dict[str, Any] = {
        "name": f"{st.kind}-record",
        "device": st.code,
        "trigger": {"kind": "counter", "signal": "counter"},
        "event": "INGEST",
        "ingest_type": "TEST",
        "station_code": st.code,
        "fields": fields,
    }
    if measurements:
        rule["measurements"] = measurements
    if st.kind in ("spi", "aoi"):
        fields["defects"] = "defects"
        rule["inspection"] = {"type": st.kind.upper(), "step_no": layout.STEP_NO[st.kind]}
    if st.buffer:
        rule["record_buffer"] = {"size": st.buffer}
    return device, [rule, _status_rule(st)]


def _status_rule(st: SimStation) -> dict[str, Any]:
    return {
        "name": f"{st.kind}-status",
        "device": st.code,
        "trigger": {"kind": "value_change", "signal": "status"},
        "event": "EQUIPMENT_STATUS",
        "station_code": st.code,
        "status_map": STATUS_MAP,
    }


def edge_section(sim: SimLineConfig, endpoints: dict[str, str] | None = None) -> dict[str, Any]:
    """`{devices: […], rules: […]}` as plain (TOML-shaped) data; endpoints default to the config's."""
    devices: list[dict[str, Any]] = []
    rules: list[dict[str, Any]] = []
    for st in sim.stations:
        if st.protocol == "modbus":
            ep = (endpoints or {}).get(st.code) or f"{st.host}:{st.port}"
            d, r = _plc(st, ep)
        else:
            ep = (endpoints or {}).get(st.code) or f"opc.tcp://{st.host}:{st.port}"
            d, r = _tester(st, ep)
        devices.append(d)
        rules += r
    return {"devices": devices, "rules": rules}


def edge_models(
    sim: SimLineConfig, endpoints: dict[str, str] | None = None
) -> tuple[list[ModbusDevice | OpcuaDevice], list[RuleConfig]]:
    """The same, validated."""
    section = edge_section(sim, endpoints)
    devices: list[ModbusDevice | OpcuaDevice] = [
        ModbusDevice.model_validate(d) if d["protocol"] == "modbus" else OpcuaDevice.model_validate(d)
        for d in section["devices"]
    ]
    return devices, [RuleConfig.model_validate(r) for r in section["rules"]]


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _toml_key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() and not k.isdigit() else json.dumps(k)


def to_toml(section: dict[str, Any]) -> str:
    """Render `edge_section(...)` as the TOML of an edge config's devices/rules part."""
    out: list[str] = []
    for table in ("devices", "rules"):
        for item in section[table]:
            out.append(f"[[{table}]]")
            for k, v in item.items():
                if k == "signals" or (k == "measurements" and len(v) > 1):
                    out.append(f"{k} = [")
                    out += [f"  {_toml_value(x)}," for x in v]
                    out.append("]")
                else:
                    out.append(f"{_toml_key(k)} = {_toml_value(v)}")
            out.append("")
    return "\n".join(out)
