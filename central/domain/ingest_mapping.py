"""Ingest normalisation (domain.md §4.3 step 5): an equipment payload + a step's ingestMapping → one event.

Paths are dotted and rooted at `{"payload": <raw>}` (so they start with `payload.`); `[*]` walks every
element of a list and flattens the result, `[n]` picks one element. Measurement paths are relative to one
item. Pure: no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from central.domain.errors import Rejected

PAYLOAD_INVALID = "INGEST_PAYLOAD_INVALID"
MAPPING_INVALID = "INGEST_MAPPING_INVALID"
EVENT_TYPES = ("AUTO", "BATCH", "TEST")
ALL_OR_NOTHING = "ALL_OR_NOTHING"
# Longest value each field may have (the columns that store them); a longer one is a malformed payload.
MAX_LENGTH = {
    "sn": 128,
    "snList": 128,
    "stationCode": 64,
    "lineCode": 64,
    "carrierCode": 64,
    "testResultId": 128,
}
MAX_BATCH_UNITS = 1000


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()

_SEGMENT = re.compile(r"^([^.\[\]]*)((?:\[(?:\*|\d+)\])*)$")
_INDEX = re.compile(r"\[(\*|\d+)\]")


def _tokens(path: str) -> list[str | int | None]:
    """ "a.b[*].c[0]" → ["a", "b", None, "c", 0]; None stands for [*]."""
    if not isinstance(path, str) or not path.strip():
        raise Rejected(MAPPING_INVALID, f"Mapping path {path!r} is not a non-empty string")
    out: list[str | int | None] = []
    for part in path.strip().split("."):
        m = _SEGMENT.match(part)
        if m is None or (not m.group(1) and not m.group(2)):
            raise Rejected(MAPPING_INVALID, f"Mapping path {path!r} is malformed at {part!r}")
        if m.group(1):
            out.append(m.group(1))
        for idx in _INDEX.findall(m.group(2)):
            out.append(None if idx == "*" else int(idx))
    return out


def get_path(obj: Any, path: str) -> Any:
    """The value at `path` in `obj`, or MISSING. With a `[*]` the answer is always a flat list."""
    current: list[Any] = [obj]
    multi = False
    for tok in _tokens(path):
        nxt: list[Any] = []
        for value in current:
            if tok is None:
                if isinstance(value, list):
                    nxt.extend(value)
            elif isinstance(tok, int):
                if isinstance(value, list) and tok < len(value):
                    nxt.append(value[tok])
            elif isinstance(value, dict) and tok in value:
                nxt.append(value[tok])
        multi = multi or tok is None
        current = nxt
        if not current and not multi:
            return MISSING
    return current if multi else current[0]


# ---- the mapping -----------------------------------------------------------------------------------------

# Where each field is read when the mapping does not say (the canonical payload of the typed endpoints).
DEFAULT_PATHS = {
    "occurredAtPath": None,
    "stationCodePath": "payload.stationCode",
    "lineCodePath": None,
    "snPath": "payload.sn",
    "snListPath": "payload.snList",
    "carrierCodePath": "payload.carrierCode",
    "testResultIdPath": "payload.testResultId",
}
DEFAULT_MEASUREMENTS = {
    "itemsPath": "payload.measurements",
    "namePath": "name",
    "valuePath": "value",
    "unitPath": "unit",
    "judgePath": "judge",
}
DEFAULT_RESULT = {"path": "payload.result", "passValues": ["PASS"], "failValues": ["FAIL"]}


@dataclass(frozen=True)
class Mapping:
    """A validated ingestMapping with every default filled in."""

    event_type: str | None
    paths: dict[str, str | None]
    result_path: str
    pass_values: frozenset[str]
    fail_values: frozenset[str]
    measurements: dict[str, str | None]
    data_spec_map: dict[str, str]
    batch_policy: str

    @classmethod
    def parse(cls, raw: Any) -> Mapping:
        if not isinstance(raw, dict):
            raise Rejected(MAPPING_INVALID, "ingestMapping must be an object")
        event_type = raw.get("eventType")
        if event_type is not None and event_type not in EVENT_TYPES:
            raise Rejected(MAPPING_INVALID, f"ingestMapping.eventType {event_type!r} is not AUTO|BATCH|TEST")
        paths = {k: _path_or_none(raw, k, default) for k, default in DEFAULT_PATHS.items()}
        result = _object(raw, "result")
        meas = _object(raw, "measurements")
        spec_map = raw.get("dataSpecMap") or {}
        if not isinstance(spec_map, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and v for k, v in spec_map.items()
        ):
            raise Rejected(MAPPING_INVALID, "ingestMapping.dataSpecMap must map measurement to spec names")
        policy = raw.get("batchPolicy") or ALL_OR_NOTHING
        if not isinstance(policy, str):
            raise Rejected(MAPPING_INVALID, "ingestMapping.batchPolicy must be a string")
        return cls(
            event_type=event_type,
            paths=paths,
            result_path=_path_or_none(result, "path", DEFAULT_RESULT["path"]) or DEFAULT_RESULT["path"],
            pass_values=_values(result, "passValues"),
            fail_values=_values(result, "failValues"),
            measurements={k: _path_or_none(meas, k, d) for k, d in DEFAULT_MEASUREMENTS.items()},
            data_spec_map=dict(spec_map),
            batch_policy=policy,
        )

    def canonical(self) -> Mapping:
        """This mapping read at the canonical paths (the typed endpoints build a canonical payload); value
        lists, dataSpecMap and batchPolicy are kept."""
        return Mapping(
            event_type=self.event_type,
            paths=dict(DEFAULT_PATHS),
            result_path=DEFAULT_RESULT["path"],
            pass_values=self.pass_values | {"pass"},
            fail_values=self.fail_values | {"fail"},
            measurements=dict(DEFAULT_MEASUREMENTS),
            data_spec_map=self.data_spec_map,
            batch_policy=self.batch_policy,
        )


def _object(raw: dict[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise Rejected(MAPPING_INVALID, f"ingestMapping.{key} must be an object")
    return value


def _path_or_none(raw: dict[str, Any], key: str, default: str | None) -> str | None:
    value = raw.get(key, default)
    if value is None:
        return None
    _tokens(value)  # validates the syntax now, so a bad path is a mapping error and not a payload error
    return str(value)


def _values(result: dict[str, Any], key: str) -> frozenset[str]:
    default = DEFAULT_RESULT[key]
    values = result.get(key, default)
    if not isinstance(values, list) or not values or not all(_scalar(v) for v in values):
        raise Rejected(MAPPING_INVALID, f"ingestMapping.result.{key} must be a non-empty list of values")
    return frozenset(_fold(v) for v in values)


def _scalar(v: Any) -> bool:
    return isinstance(v, str | int | float | bool)


def _fold(v: Any) -> str:
    """Case-insensitive comparison key of a result value (true/false and numbers compare as text)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v).strip().casefold()


# ---- normalisation ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measurement:
    name: str
    spec_name: str  # dataSpecMap[name] or the name itself
    value: Any
    unit: str | None = None
    judge: str | None = None  # PASS | FAIL as reported by the equipment, None when not reported
    mapped: bool = False  # the spec name came from dataSpecMap (so a missing spec is an error)


@dataclass(frozen=True)
class Normalized:
    occurred_at: datetime | None = None  # from occurredAtPath; None = use the envelope's occurredAt
    station_code: str | None = None
    line_code: str | None = None
    sn: str | None = None
    sn_list: list[str] | None = None
    carrier_code: str | None = None
    test_result_id: str | None = None
    result_raw: Any = MISSING
    result: str | None = None  # PASS | FAIL, None when the raw value matched neither list
    measurements: list[Measurement] = field(default_factory=list)
    batch_policy: str = ALL_OR_NOTHING

    @property
    def has_result(self) -> bool:
        return self.result_raw is not MISSING and self.result_raw is not None

    def as_json(self) -> dict[str, Any]:
        """Stored on the IngestEvent (`normalized`)."""
        return {
            "occurredAt": self.occurred_at.isoformat() if self.occurred_at else None,
            "stationCode": self.station_code,
            "lineCode": self.line_code,
            "sn": self.sn,
            "snList": self.sn_list,
            "carrierCode": self.carrier_code,
            "testResultId": self.test_result_id,
            "result": self.result,
            "measurements": [
                {"name": m.name, "specName": m.spec_name, "value": m.value, "unit": m.unit, "judge": m.judge}
                for m in self.measurements
            ],
            "batchPolicy": self.batch_policy,
        }


def normalize(payload: dict[str, Any], mapping: Mapping) -> Normalized:
    """Reads every field the mapping names; malformed values are INGEST_PAYLOAD_INVALID, absent ones None."""
    root = {"payload": payload}
    p = mapping.paths
    result_raw = get_path(root, mapping.result_path)
    return Normalized(
        occurred_at=_time_at(root, p["occurredAtPath"]),
        station_code=_text_at(root, p["stationCodePath"], "stationCode"),
        line_code=_text_at(root, p["lineCodePath"], "lineCode"),
        sn=_text_at(root, p["snPath"], "sn"),
        sn_list=_text_list_at(root, p["snListPath"], "snList"),
        carrier_code=_text_at(root, p["carrierCodePath"], "carrierCode"),
        test_result_id=_text_at(root, p["testResultIdPath"], "testResultId"),
        result_raw=result_raw,
        result=judge_value(result_raw, mapping),
        measurements=_measurements(root, mapping),
        batch_policy=mapping.batch_policy,
    )


def judge_value(raw: Any, mapping: Mapping) -> str | None:
    """PASS / FAIL for a raw result (or judge) value by the mapping's value lists, case-insensitive."""
    if raw is MISSING or raw is None or not _scalar(raw):
        return None
    key = _fold(raw)
    if key in mapping.pass_values:
        return "PASS"
    if key in mapping.fail_values:
        return "FAIL"
    return None


def require(norm: Normalized, event_type: str) -> None:
    """The fields an event of this type cannot do without (domain.md §4.3 step 5)."""
    if event_type == "BATCH":
        needed = {"carrierCode": norm.carrier_code, "snList": norm.sn_list, "result": norm.has_result or None}
    else:
        needed = {"sn": norm.sn, "stationCode": norm.station_code, "result": norm.has_result or None}
        if event_type == "TEST":
            needed["testResultId"] = norm.test_result_id
    missing = [name for name, value in needed.items() if not value]
    if missing:
        raise Rejected(
            PAYLOAD_INVALID,
            f"{event_type} event lacks {', '.join(missing)} (per the step's ingestMapping)",
            details={"missing": missing},
        )
    if event_type != "BATCH" and norm.result is None:
        raise Rejected(PAYLOAD_INVALID, f"Result {norm.result_raw!r} is neither a pass nor a fail value")


def _text(value: Any, name: str) -> str | None:
    if value is MISSING or value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise Rejected(PAYLOAD_INVALID, f"{name} must be text, got {type(value).__name__}")
    text = str(value).strip()
    limit = MAX_LENGTH.get(name)
    if limit is not None and len(text) > limit:
        raise Rejected(PAYLOAD_INVALID, f"{name} is longer than {limit} characters")
    return text or None


def _text_at(root: dict[str, Any], path: str | None, name: str) -> str | None:
    if path is None:
        return None
    value = get_path(root, path)
    if "[*]" in path:  # a flattening path: exactly one value makes sense for a single field
        if len(value) > 1:
            raise Rejected(PAYLOAD_INVALID, f"{name} resolves to {len(value)} values, expected one")
        value = value[0] if value else MISSING
    return _text(value, name)


def _text_list_at(root: dict[str, Any], path: str | None, name: str) -> list[str] | None:
    if path is None:
        return None
    value = get_path(root, path)
    if value is MISSING or value is None:
        return None
    if not isinstance(value, list):
        raise Rejected(PAYLOAD_INVALID, f"{name} must be a list")
    flat: list[Any] = []
    for item in value:  # `boards[*].sns` gives a list per board: one level is flattened
        flat.extend(item if isinstance(item, list) else [item])
    out = [_text(item, name) for item in flat]
    if any(sn is None for sn in out):
        raise Rejected(PAYLOAD_INVALID, f"{name} has empty entries")
    texts = [sn for sn in out if sn is not None]
    if len(set(texts)) != len(texts):
        raise Rejected(PAYLOAD_INVALID, f"{name} names a serial number twice")
    if len(texts) > MAX_BATCH_UNITS:
        raise Rejected(PAYLOAD_INVALID, f"{name} has {len(texts)} entries; at most {MAX_BATCH_UNITS}")
    return texts or None


def parse_time(value: Any, name: str = "occurredAt") -> datetime:
    """ISO-8601 with an offset (or an aware datetime) → UTC; anything else is INGEST_PAYLOAD_INVALID."""
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str) and value.strip():
        text = value.strip()
        try:
            parsed = datetime.fromisoformat(text[:-1] + "+00:00" if text[-1:] in "zZ" else text)
        except ValueError as exc:
            raise Rejected(PAYLOAD_INVALID, f"{name} {value!r} is not an ISO-8601 time") from exc
    else:
        raise Rejected(PAYLOAD_INVALID, f"{name} must be an ISO-8601 time with an offset")
    if parsed.tzinfo is None:
        raise Rejected(PAYLOAD_INVALID, f"{name} {value!r} has no timezone offset")
    try:
        return parsed.astimezone(UTC)
    except OverflowError as exc:  # e.g. 0001-01-01T00:00:00+05:00 has no UTC equivalent
        raise Rejected(PAYLOAD_INVALID, f"{name} {value!r} is out of range") from exc


def _time_at(root: dict[str, Any], path: str | None) -> datetime | None:
    if path is None:
        return None
    value = get_path(root, path)
    if value is MISSING or value is None:
        return None
    return parse_time(value, "payload occurredAt")


def _measurements(root: dict[str, Any], mapping: Mapping) -> list[Measurement]:
    m = mapping.measurements
    if m["itemsPath"] is None:
        return []
    items = get_path(root, m["itemsPath"])
    if items is MISSING or items is None:
        return []
    if isinstance(items, dict):  # {"TEMP": 55.5} form: name → value
        items = [{"name": k, "value": v} for k, v in items.items()]
        paths = dict(DEFAULT_MEASUREMENTS)
    elif isinstance(items, list):
        paths = m
    else:
        raise Rejected(PAYLOAD_INVALID, "measurements must be a list of items")
    out: list[Measurement] = []
    for item in items:
        if not isinstance(item, dict):
            raise Rejected(PAYLOAD_INVALID, "every measurement item must be an object")
        name = _text(_item(item, paths["namePath"]), "measurement name")
        if name is None:
            raise Rejected(PAYLOAD_INVALID, "a measurement item has no name")
        value = _item(item, paths["valuePath"])
        unit = _item(item, paths["unitPath"])
        raw_judge = _item(item, paths["judgePath"])
        # The result's value lists first; plain PASS/FAIL also counts when the result uses other words.
        judge = judge_value(raw_judge, mapping) or (
            _fold(raw_judge).upper() if _scalar(raw_judge) and _fold(raw_judge) in ("pass", "fail") else None
        )
        out.append(
            Measurement(
                name=name,
                spec_name=mapping.data_spec_map.get(name, name),
                value=None if value is MISSING else value,
                unit=str(unit) if _scalar(unit) else None,
                judge=judge,
                mapped=name in mapping.data_spec_map,
            )
        )
    return out


def _item(item: dict[str, Any], path: str | None) -> Any:
    return MISSING if path is None else get_path(item, path)


# ---- values ----------------------------------------------------------------------------------------------


def coerce(data_type: str, value: Any) -> Any:
    """A measurement value as the spec's data type wants it (numeric strings, "true"/"false" accepted), or
    raises ValueError."""
    if value is None or value is MISSING:
        raise ValueError("no value")
    if data_type == "NUMBER":
        if isinstance(value, bool):
            raise ValueError("a boolean is not a number")
        if isinstance(value, int | float):
            number = float(value)
        elif isinstance(value, str):
            number = float(value.strip())
        else:
            raise ValueError("not a number")
        if number != number or number in (float("inf"), float("-inf")):
            raise ValueError("not a finite number")
        return number
    if data_type == "BOOLEAN":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().casefold() in ("true", "false"):
            return value.strip().casefold() == "true"
        raise ValueError("not true/false")
    if data_type == "TEXT":
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ValueError("not text")
        return str(value)
    return value  # JSON: anything


def judge_limits(value: float, low: float | None, high: float | None) -> str | None:
    """PASS/FAIL of a reading against inclusive limits (None when there are none)."""
    if low is None and high is None:
        return None
    ok = (low is None or value >= low) and (high is None or value <= high)
    return "PASS" if ok else "FAIL"
