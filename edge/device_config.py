"""Devices, signals and rules of an edge agent's config (edge.md "Drivers and rules"), validated at start.

Every model refuses unknown keys, so a typo in a TOML file is an error naming its path instead of a silently
ignored setting. Cross-references (a rule's device, the signals it reads) are checked by `check_references`,
which names the offending path too.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

SignalType = Literal[
    "bool", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "string"
]
ModbusTable = Literal["coil", "discrete_input", "holding", "input"]
Order = Literal["big", "little"]
TriggerKind = Literal["counter", "rising_edge", "value_change", "node_event"]
RuleEvent = Literal["INGEST", "DEVICE_DATA", "EQUIPMENT_STATUS"]
IngestType = Literal["AUTO", "TEST", "BATCH"]
Judge = Literal["PASS", "FAIL"]

# Registers per value; strings take `length` registers.
REGISTER_WIDTH: dict[str, int] = {
    "bool": 1,
    "int16": 1,
    "uint16": 1,
    "int32": 2,
    "uint32": 2,
    "float32": 2,
    "int64": 4,
    "uint64": 4,
    "float64": 4,
}
SLOT = "{slot}"
# A machine's result word or text → PASS/FAIL; compared case-insensitively. Rules may replace it.
DEFAULT_RESULT_MAP: dict[str, Judge] = {
    "PASS": "PASS",
    "OK": "PASS",
    "GOOD": "PASS",
    "TRUE": "PASS",
    "FAIL": "FAIL",
    "NG": "FAIL",
    "NOK": "FAIL",
    "FALSE": "FAIL",
}

Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")]
Code = Annotated[str, Field(min_length=1, max_length=64)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModbusSignal(_Strict):
    """One value in a Modbus device's memory: where it is and how its registers decode."""

    name: Name
    table: ModbusTable = "holding"
    address: int = Field(ge=0, le=65535)
    type: SignalType = "uint16"
    length: int | None = Field(default=None, ge=1, le=120, description="registers of a string")
    byte_order: Order = "big"
    word_order: Order = "big"
    scale: float | None = None

    @model_validator(mode="after")
    def _shape(self) -> ModbusSignal:
        if self.table in ("coil", "discrete_input") and self.type != "bool":
            raise ValueError(
                f"type: a {self.table} holds one bit, so type must be 'bool' (got {self.type!r})"
            )
        if self.type == "string" and self.length is None:
            raise ValueError("length: required for a string (number of registers, 2 characters each)")
        if self.type != "string" and self.length is not None:
            raise ValueError("length: only a string has a length (numbers take their type's width)")
        if self.scale is not None and self.type in ("string", "bool"):
            raise ValueError(f"scale: a {self.type} cannot be scaled")
        if self.address + self.width - 1 > 65535:
            raise ValueError("address: the value runs past register 65535")
        return self

    @property
    def width(self) -> int:
        """Registers (or bits) this signal occupies."""
        if self.table in ("coil", "discrete_input"):
            return 1
        return self.length if self.type == "string" else REGISTER_WIDTH[self.type]


class OpcuaSignal(_Strict):
    """One OPC UA variable; `{slot}` in the node id is replaced by the record-buffer slot when one is read."""

    name: Name
    node: str = Field(min_length=3, max_length=512)
    type: SignalType | None = None
    scale: float | None = None

    @field_validator("node")
    @classmethod
    def _node_id(cls, v: str) -> str:
        probe = v.replace(SLOT, "0")
        if not re.match(r"^(ns=\d+;)?[isgb]=.+$", probe):
            raise ValueError("must be an OPC UA NodeId string such as 'ns=2;s=ICT.RecordCount' or 'i=2258'")
        return v


class _DeviceBase(_Strict):
    id: Name
    timeout: float = Field(default=3.0, gt=0, le=120, description="seconds per request / connect")
    poll_interval: float = Field(default=0.5, ge=0.01, le=3600, description="seconds between polls")
    reconnect_min: float = Field(default=0.5, gt=0, le=600, description="first reconnect delay, seconds")
    reconnect_max: float = Field(default=30.0, gt=0, le=3600, description="reconnect delay cap, seconds")

    @model_validator(mode="after")
    def _reconnect(self) -> _DeviceBase:
        if self.reconnect_max < self.reconnect_min:
            raise ValueError("reconnect_max: must be ≥ reconnect_min")
        return self

    def _unique_signals(self, signals: list[Any]) -> None:
        seen: set[str] = set()
        for i, s in enumerate(signals):
            if s.name in seen:
                raise ValueError(f"signals.{i}.name: {s.name!r} is defined twice on device {self.id!r}")
            seen.add(s.name)


class ModbusDevice(_DeviceBase):
    """A Modbus TCP device (PLC); devices sharing host:port share one connection (a gateway)."""

    protocol: Literal["modbus"]
    endpoint: str = Field(description="host:port (or tcp://host:port)")
    unit_id: int = Field(default=1, ge=0, le=255, description="Modbus device id (slave id)")
    retries: int = Field(
        default=0, ge=0, le=5, description="resends of a request before the link is deemed lost"
    )
    signals: list[ModbusSignal] = Field(min_length=1)

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        host_port = v.removeprefix("tcp://")
        host, sep, port = host_port.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("must be host:port, e.g. '192.168.10.21:502'")
        return v

    @model_validator(mode="after")
    def _signals(self) -> ModbusDevice:
        self._unique_signals(self.signals)
        return self

    @property
    def host(self) -> str:
        return self.endpoint.removeprefix("tcp://").rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.endpoint.rpartition(":")[2])

    def signal(self, name: str) -> ModbusSignal | None:
        return next((s for s in self.signals if s.name == name), None)


class OpcuaSecurity(_Strict):
    """Message security of the secure channel. No silent fallback: what is configured is what is used."""

    policy: Literal["None", "Basic256Sha256", "Aes128Sha256RsaOaep", "Aes256Sha256RsaPss"] = "None"
    mode: Literal["None", "Sign", "SignAndEncrypt"] = "None"
    certificate: Path | None = None
    private_key: Path | None = None
    private_key_password: SecretStr | None = None
    server_certificate: Path | None = None
    application_uri: str | None = Field(default=None, description="must match the client certificate's URI")

    @model_validator(mode="after")
    def _consistent(self) -> OpcuaSecurity:
        if self.policy == "None":
            if self.mode != "None":
                raise ValueError(f"mode: {self.mode!r} needs a policy other than 'None'")
            if self.certificate or self.private_key:
                raise ValueError("certificate: only used with a security policy other than 'None'")
        else:
            if self.mode == "None":
                raise ValueError(f"mode: policy {self.policy!r} needs mode 'Sign' or 'SignAndEncrypt'")
            if self.certificate is None:
                raise ValueError(f"certificate: required with policy {self.policy!r}")
            if self.private_key is None:
                raise ValueError(f"private_key: required with policy {self.policy!r}")
        return self


class OpcuaDevice(_DeviceBase):
    """An OPC UA server (tester, inspection machine); read by subscription with a polled fallback."""

    protocol: Literal["opcua"]
    endpoint: str = Field(description="opc.tcp://host:port[/path]")
    timeout: float = Field(default=4.0, gt=0, le=120)
    poll_interval: float = Field(default=1.0, ge=0.01, le=3600, description="polled fallback period")
    subscribe: bool = Field(default=True, description="false: always poll (servers without subscriptions)")
    publishing_interval: float = Field(default=0.2, gt=0, le=60, description="subscription period, seconds")
    watchdog_interval: float = Field(default=1.0, gt=0, le=60, description="session liveness check, seconds")
    username: str | None = None
    password: SecretStr | None = None
    user_certificate: Path | None = None
    user_private_key: Path | None = None
    security: OpcuaSecurity = OpcuaSecurity()
    signals: list[OpcuaSignal] = Field(min_length=1)

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        if not re.match(r"^opc\.tcp://[^/:]+(:\d{1,5})?(/.*)?$", v):
            raise ValueError("must be opc.tcp://host:port[/path]")
        return v

    @model_validator(mode="after")
    def _identity(self) -> OpcuaDevice:
        self._unique_signals(self.signals)
        if (self.username is None) != (self.password is None):
            raise ValueError("password: username and password go together")
        if (self.user_certificate is None) != (self.user_private_key is None):
            raise ValueError("user_private_key: user_certificate and user_private_key go together")
        if self.username and self.user_certificate:
            raise ValueError("user_certificate: choose one identity, user/password or a user certificate")
        return self

    def signal(self, name: str) -> OpcuaSignal | None:
        return next((s for s in self.signals if s.name == name), None)


DeviceConfig = Annotated[ModbusDevice | OpcuaDevice, Field(discriminator="protocol")]


class Trigger(_Strict):
    """What makes a rule fire. `signal` is watched; `node_event` listens to OPC UA events of `node`."""

    kind: TriggerKind
    signal: Name | None = None
    node: str | None = Field(default=None, description="node_event: source node (default: the Server object)")
    event_type: str | None = Field(default=None, description="node_event: event type node id")
    unique: bool = Field(
        default=False, description="value_change: the value never repeats (a record id), so it keys the event"
    )

    @model_validator(mode="after")
    def _shape(self) -> Trigger:
        if self.kind == "node_event":
            if self.signal is not None:
                raise ValueError("signal: a node_event trigger listens to `node`, not to a signal")
        elif self.signal is None:
            raise ValueError(f"signal: required for a {self.kind} trigger")
        if self.kind != "node_event" and (self.node or self.event_type):
            raise ValueError("node: only for a node_event trigger")
        if self.unique and self.kind != "value_change":
            raise ValueError("unique: only for a value_change trigger")
        return self


class Measurement(_Strict):
    """A measured value sent with the event; `name` must equal central's data-spec name."""

    name: Code
    signal: Name
    unit: str | None = Field(default=None, max_length=16)
    low: float | None = None
    high: float | None = None
    low_signal: Name | None = None
    high_signal: Name | None = None

    @model_validator(mode="after")
    def _limits(self) -> Measurement:
        if self.low is not None and self.low_signal:
            raise ValueError("low_signal: give either low or low_signal")
        if self.high is not None and self.high_signal:
            raise ValueError("high_signal: give either high or high_signal")
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ValueError("high: must be ≥ low")
        return self


class Fields(_Strict):
    """Signals an event reads when its trigger fires (names of the device's signals)."""

    sn: Name | None = None
    result: Name | None = None
    test_result_id: Name | None = None
    record_id: Name | None = Field(default=None, description="the machine's own record id: keys the eventId")
    carrier_code: Name | None = None
    sn_list: list[Name] = Field(default_factory=list, description="signals holding SNs (strings or arrays)")
    sn_count: Name | None = Field(default=None, description="how many of sn_list are valid")
    run_no: Name | None = None
    occurred_at: Name | None = Field(default=None, description="machine time: epoch s/ms number or DateTime")
    defects: Name | None = Field(default=None, description="'CODE@LOCATION;…' or a JSON list")
    status: Name | None = None
    reason: Name | None = None

    def names(self) -> list[tuple[str, str]]:
        """(field path, signal) pairs, for reference checks and reads."""
        out = [(k, v) for k, v in self.model_dump(exclude={"sn_list"}).items() if v]
        out += [(f"sn_list.{i}", v) for i, v in enumerate(self.sn_list)]
        return out


class RecordBuffer(_Strict):
    """The machine keeps its last `size` records: record n sits in slot n % size.

    Modbus: a record signal's address + slot·stride; OPC UA: `{slot}` in the node id becomes the slot.
    """

    size: int = Field(ge=1, le=65535)
    stride: int = Field(default=0, ge=0, le=65535)


class Inspection(_Strict):
    """SPI/AOI: also send an INSPECTION_RESULT (after the INGEST of the same record)."""

    type: Literal["SPI", "AOI"]
    step_no: int = Field(ge=1)
    emit_on: Literal["FAIL", "ALWAYS"] = "FAIL"
    default_defect_code: str | None = Field(default=None, max_length=64)


class RuleConfig(_Strict):
    """One row of the rule table: a trigger on a device → one event of `event` kind (edge.md Rules)."""

    name: Name
    device: Name
    trigger: Trigger
    event: RuleEvent = "INGEST"
    ingest_type: IngestType | None = None
    station_code: Code
    step_no: int | None = Field(default=None, ge=1, description="DEVICE_DATA: step of the unit")
    fields: Fields = Fields()
    default_result: Judge = Field(default="PASS", description="when no result signal is bound")
    result_map: dict[str, Judge] = Field(default_factory=lambda: dict(DEFAULT_RESULT_MAP))
    status_map: dict[str, str] = Field(default_factory=dict, description="EQUIPMENT_STATUS: raw → status")
    measurements: list[Measurement] = Field(default_factory=list)
    record_buffer: RecordBuffer | None = None
    inspection: Inspection | None = None

    @field_validator("result_map")
    @classmethod
    def _upper(cls, v: dict[str, Judge]) -> dict[str, Judge]:
        return {k.strip().upper(): j for k, j in v.items()}

    @model_validator(mode="after")
    def _shape(self) -> RuleConfig:
        f = self.fields
        if self.event == "INGEST":
            if self.ingest_type is None:
                raise ValueError("ingest_type: required for an INGEST rule (AUTO, TEST or BATCH)")
            if self.ingest_type in ("AUTO", "TEST") and not f.sn:
                raise ValueError(f"fields.sn: required for an INGEST {self.ingest_type} rule")
            if self.ingest_type == "BATCH" and (not f.carrier_code or not f.sn_list):
                raise ValueError("fields.carrier_code: BATCH needs fields.carrier_code and fields.sn_list")
        elif self.ingest_type is not None:
            raise ValueError("ingest_type: only for an INGEST rule")
        if self.inspection and not (self.event == "INGEST" and self.ingest_type == "TEST"):
            raise ValueError("inspection: only for an INGEST TEST rule (SPI/AOI)")
        if self.event == "EQUIPMENT_STATUS" and not (f.status or self.trigger.signal):
            raise ValueError("fields.status: EQUIPMENT_STATUS needs a status signal (or a trigger signal)")
        if self.event == "DEVICE_DATA" and not self.measurements:
            raise ValueError("measurements: DEVICE_DATA sends measurements, give at least one")
        if self.record_buffer and self.trigger.kind != "counter":
            raise ValueError("record_buffer: a record buffer is indexed by a counter trigger")
        names = [m.name for m in self.measurements]
        for i, n in enumerate(names):
            if n in names[:i]:
                raise ValueError(f"measurements.{i}.name: {n!r} is listed twice")
        return self

    @property
    def has_record_buffer(self) -> bool:
        return self.record_buffer is not None

    def record_signals(self) -> list[str]:
        """Every signal read when the rule fires (fields, measurements and their limits), deduplicated."""
        out: list[str] = [s for _p, s in self.fields.names()]
        for m in self.measurements:
            out += [x for x in (m.signal, m.low_signal, m.high_signal) if x]
        return list(dict.fromkeys(out))


def check_references(devices: list[ModbusDevice | OpcuaDevice], rules: list[RuleConfig]) -> list[str]:
    """Errors (each naming its path) for rules pointing at unknown devices or signals; empty when sound."""
    errors: list[str] = []
    by_id: dict[str, ModbusDevice | OpcuaDevice] = {}
    for i, d in enumerate(devices):
        if d.id in by_id:
            errors.append(f"devices.{i}.id: {d.id!r} is defined twice")
        by_id[d.id] = d
    seen_rules: set[str] = set()
    for i, r in enumerate(rules):
        where = f"rules.{i}"
        if r.name in seen_rules:
            errors.append(f"{where}.name: {r.name!r} is defined twice")
        seen_rules.add(r.name)
        dev = by_id.get(r.device)
        if dev is None:
            errors.append(
                f"{where}.device: no device {r.device!r} (known: {', '.join(sorted(by_id)) or 'none'})"
            )
            continue
        refs: list[tuple[str, str]] = []
        if r.trigger.signal:
            refs.append(("trigger.signal", r.trigger.signal))
        refs += [(f"fields.{p}", s) for p, s in r.fields.names()]
        for j, m in enumerate(r.measurements):
            refs += [
                (f"measurements.{j}.{k}", s)
                for k, s in (
                    ("signal", m.signal),
                    ("low_signal", m.low_signal),
                    ("high_signal", m.high_signal),
                )
                if s
            ]
        for path, sig in refs:
            if dev.signal(sig) is None:
                errors.append(f"{where}.{path}: device {dev.id!r} has no signal {sig!r}")
        if r.trigger.kind == "node_event" and dev.protocol != "opcua":
            errors.append(f"{where}.trigger.kind: node_event needs an OPC UA device ({dev.id!r} is Modbus)")
        if r.record_buffer:
            errors += _buffer_errors(where, r, dev)
    return errors


def _buffer_errors(where: str, rule: RuleConfig, dev: ModbusDevice | OpcuaDevice) -> list[str]:
    buf = rule.record_buffer
    assert buf is not None
    out: list[str] = []
    sigs = [s for s in (dev.signal(n) for n in rule.record_signals()) if s is not None]
    if isinstance(dev, OpcuaDevice):
        # Nodes without `{slot}` (a test program's limits) read the same for every record; but some must vary.
        if sigs and not any(isinstance(s, OpcuaSignal) and SLOT in s.node for s in sigs):
            out.append(f"{where}.record_buffer: none of the rule's signals has '{{slot}}' in its node id")
        return out
    if buf.stride == 0:
        return [f"{where}.record_buffer.stride: required for a Modbus device (registers per record)"]
    for sig in sigs:
        assert isinstance(sig, ModbusSignal)
        if sig.address + (buf.size - 1) * buf.stride + sig.width - 1 > 65535:
            out.append(f"{where}.record_buffer: slot {buf.size - 1} of signal {sig.name!r} runs past 65535")
    return out
