"""Signal changes → production events (edge.md "Rules"): pure and table-driven from `RuleConfig`.

Two steps, both free of I/O so they are tested without a machine:
- `detect(rule, last, value)` compares a trigger's new value with the last one seen and says which records
  to report (a counter that jumped by three with a record buffer → three keys; without → one key + GAP).
- `build_events(rule, device_id, key, values, observed_at)` turns one record's signal values into the
  events of the rule's kind, with an eventId derived from the device, the rule and the record's key, so
  reading the same record again (after a reconnect or an agent restart) yields the same id: central
  dedupes on it.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from edge.device_config import RuleConfig
from edge.outbox import NewEvent

# Fixed forever: changing it would give re-read records new ids and central would apply them twice.
EVENT_NAMESPACE = uuid.UUID("6f1c2b8e-4a55-5a0e-9d1b-3e0f5c2a7d41")


@dataclass(frozen=True)
class Detection:
    """What a trigger's new value means: one event per key, and the value to remember as `last`."""

    keys: tuple[Any, ...] = ()
    last: Any = None
    warnings: tuple[str, ...] = ()
    from_buffer: bool = False  # keys are counter values whose records are read from the machine's buffer


@dataclass
class Built:
    events: list[NewEvent] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- detection ------------------------------------------------------------------------------------


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return int(f) if math.isfinite(f) else None


def _counter(rule: RuleConfig, last: Any, value: Any) -> Detection:
    cur = _as_int(value)
    if cur is None:
        return Detection(last=last)
    prev = _as_int(last)
    if prev is None:  # first sight (or a restart without saved state): the current count is the baseline
        return Detection(last=cur)
    if cur == prev:
        return Detection(last=cur)
    warnings: list[str] = []
    if cur < prev:
        # A machine restart or a wrap: count from zero, and say so (an operator may need to check the gap).
        warnings.append(f"COUNTER_RESET {rule.device}/{rule.name}: counter went back from {prev} to {cur}")
        prev = 0
        if cur == 0:
            return Detection(last=cur, warnings=tuple(warnings))
    missed = cur - prev - 1
    buf = rule.record_buffer
    if buf is None:
        if missed:
            warnings.append(
                f"GAP {rule.device}/{rule.name}: {missed} record(s) missed "
                f"(counter {prev}→{cur}, no record buffer)"
            )
        return Detection(keys=(cur,), last=cur, warnings=tuple(warnings))
    first = max(prev + 1, cur - buf.size + 1)
    if first > prev + 1:
        warnings.append(
            f"GAP {rule.device}/{rule.name}: {first - prev - 1} record(s) overwritten in the machine's "
            f"buffer of {buf.size} (counter {prev}→{cur})"
        )
    return Detection(keys=tuple(range(first, cur + 1)), last=cur, warnings=tuple(warnings), from_buffer=True)


def _rising_edge(rule: RuleConfig, last: Any, value: Any) -> Detection:
    if value is None:
        return Detection(last=last)
    cur = bool(value)
    if last is None:
        return Detection(last=cur)
    return Detection(keys=(None,) if cur and not last else (), last=cur)


def _value_change(rule: RuleConfig, last: Any, value: Any) -> Detection:
    if value is None:
        return Detection(last=last)
    cur = status_of(rule, value) if rule.event == "EQUIPMENT_STATUS" else value
    if last is None or cur == last:
        return Detection(last=cur)
    return Detection(keys=(cur if rule.trigger.unique else None,), last=cur)


def _node_event(rule: RuleConfig, last: Any, value: Any) -> Detection:
    # Each OPC UA event is an occurrence by itself; `value` is the event's EventId.
    if value is None:
        return Detection(last=last)
    return Detection(keys=(value,), last=last)


DETECTORS: dict[str, Callable[[RuleConfig, Any, Any], Detection]] = {
    "counter": _counter,
    "rising_edge": _rising_edge,
    "value_change": _value_change,
    "node_event": _node_event,
}


def detect(rule: RuleConfig, last: Any, value: Any) -> Detection:
    """Which records the trigger's change from `last` to `value` reports (none on first sight)."""
    return DETECTORS[rule.trigger.kind](rule, last, value)


# --- building -------------------------------------------------------------------------------------


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def status_of(rule: RuleConfig, raw: Any) -> str:
    key = _text(raw)
    return rule.status_map.get(key, key)


def judge_result(rule: RuleConfig, raw: Any, device_id: str = "") -> tuple[str, str | None]:
    """PASS/FAIL from the machine's result word; an unknown word is passed on as is (central refuses it, the
    event lands in the dead letters where an engineer sees it) with a warning, never guessed."""
    if rule.fields.result is None:
        return rule.default_result, None
    key = ("TRUE" if raw else "FALSE") if isinstance(raw, bool) else _text(raw).upper()
    judged = rule.result_map.get(key)
    if judged is None:
        return (
            key,
            f"RESULT_UNMAPPED {device_id or rule.device}/{rule.name}: result {key!r} is not in result_map",
        )
    return judged, None


def occurred_at(rule: RuleConfig, values: Mapping[str, Any], fallback: datetime) -> datetime:
    """The machine's time of the record when a time signal is bound, else `fallback` (when it was seen)."""
    if not rule.fields.occurred_at:
        return fallback
    raw = values.get(rule.fields.occurred_at)
    if isinstance(raw, datetime):
        return raw.replace(tzinfo=UTC) if raw.tzinfo is None else raw.astimezone(UTC)
    if isinstance(raw, (int, float)) and not isinstance(raw, bool) and raw > 0:
        seconds = raw / 1000 if raw > 1e11 else raw  # epoch milliseconds or seconds
        return datetime.fromtimestamp(seconds, UTC)
    if isinstance(raw, str) and raw.strip():
        try:
            t = datetime.fromisoformat(raw.strip().replace("Z", "+00:00"))
        except ValueError:
            return fallback
        return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)
    return fallback


def parse_defects(raw: Any) -> list[dict[str, Any]]:
    """'CODE@LOC;CODE' or a JSON list (of strings or {code, location}) or a string array → defect items."""
    if raw is None:
        return []
    items: list[Any]
    if isinstance(raw, (list, tuple)):
        items = list(raw)
    else:
        text = str(raw).strip()
        if not text:
            return []
        if text.startswith("["):
            try:
                items = json.loads(text)
            except ValueError:
                items = text.split(";")
        else:
            items = text.split(";")
    out: list[dict[str, Any]] = []
    for it in items:
        if isinstance(it, dict) and it.get("code"):
            out.append({k: v for k, v in it.items() if k in ("code", "location", "description", "qty")})
            continue
        code, _, location = _text(it).partition("@")
        if code.strip():
            d: dict[str, Any] = {"code": code.strip()}
            if location.strip():
                d["location"] = location.strip()
            out.append(d)
    return out


def sn_list(rule: RuleConfig, values: Mapping[str, Any]) -> list[str]:
    sns: list[str] = []
    for name in rule.fields.sn_list:
        v = values.get(name)
        for item in v if isinstance(v, (list, tuple)) else [v]:
            s = _text(item)
            if s:
                sns.append(s)
    if rule.fields.sn_count:
        n = _as_int(values.get(rule.fields.sn_count))
        if n is not None and n >= 0:
            sns = sns[:n]
    return sns


def measurements(rule: RuleConfig, values: Mapping[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for m in rule.measurements:
        v = values.get(m.signal)
        if v is None:
            continue
        item: dict[str, Any] = {"name": m.name, "value": v}
        if m.unit:
            item["unit"] = m.unit
        low = values.get(m.low_signal) if m.low_signal else m.low
        high = values.get(m.high_signal) if m.high_signal else m.high
        if isinstance(v, (int, float)) and not isinstance(v, bool) and (low is not None or high is not None):
            ok = (low is None or v >= low) and (high is None or v <= high)
            item["judge"] = "PASS" if ok else "FAIL"
            # Named like central's measurement limits (ingest's typed forms: min/max).
            if low is not None:
                item["min"] = low
            if high is not None:
                item["max"] = high
        out.append(item)
    return out


def _value_field(v: Any) -> dict[str, Any]:
    if isinstance(v, bool):
        return {"valueBoolean": v}
    if isinstance(v, (int, float)):
        return {"valueNumber": v}
    return {"valueText": str(v)}


def event_id(rule: RuleConfig, device_id: str, kind: str, natural: Any, identity: str) -> str:
    """Deterministic from the record (same record read twice → same id); random when nothing identifies it."""
    if natural is None or natural == "":
        return str(uuid.uuid4())
    return str(uuid.uuid5(EVENT_NAMESPACE, f"{device_id}|{rule.name}|{kind}|{natural}|{identity}"))


def build_events(
    rule: RuleConfig, device_id: str, key: Any, values: Mapping[str, Any], observed_at: datetime
) -> Built:
    """The events one record produces (an INGEST, then an INSPECTION_RESULT when configured)."""
    out = Built()
    f = rule.fields
    at = occurred_at(rule, values, observed_at)
    record_id = _text(values.get(f.record_id)) if f.record_id else ""
    natural = record_id or key
    sn = _text(values.get(f.sn)) if f.sn else ""
    run_no = _text(values.get(f.run_no)) if f.run_no else ""
    carrier = _text(values.get(f.carrier_code)) if f.carrier_code else ""
    # The unit(s) the record is about: with the record key it tells apart records after a counter reset.
    identity = sn or f"{carrier}|{','.join(sn_list(rule, values))}"

    if rule.event == "EQUIPMENT_STATUS":
        raw = values.get(f.status) if f.status else values.get(rule.trigger.signal or "")
        status = status_of(rule, raw)
        if rule.status_map and _text(raw) not in rule.status_map:
            out.warnings.append(
                f"STATUS_UNMAPPED {device_id}/{rule.name}: status {_text(raw)!r} not in status_map"
            )
        payload: dict[str, Any] = {"status": status}
        if f.reason and _text(values.get(f.reason)):
            payload["reason"] = _text(values.get(f.reason))
        eid = event_id(rule, device_id, "EQUIPMENT_STATUS", natural, identity)
        out.events.append(NewEvent(eid, "EQUIPMENT_STATUS", at, rule.station_code, payload))
        return out

    items = measurements(rule, values)
    if rule.event == "DEVICE_DATA":
        eid = event_id(rule, device_id, "DEVICE_DATA", natural, identity)
        body: dict[str, Any] = {
            "eventId": eid,
            "eventTime": iso(at),
            "source": "AUTO",
            "stationCode": rule.station_code,
            "equipmentId": rule.station_code,
            "data": [
                {"specName": m["name"], **_value_field(m["value"]), "collectedAt": iso(at)} for m in items
            ],
        }
        if sn:
            body["unitSn"] = sn
        if run_no:
            body["runNo"] = run_no
        if rule.step_no:
            body["stepNo"] = rule.step_no
        out.events.append(NewEvent(eid, "DEVICE_DATA", at, rule.station_code, body))
        return out

    result, warning = judge_result(rule, values.get(f.result) if f.result else None, device_id)
    if warning:
        out.warnings.append(warning)
    inner: dict[str, Any] = {"stationCode": rule.station_code}
    if rule.ingest_type in ("AUTO", "TEST"):
        inner["sn"] = sn
    eid = event_id(rule, device_id, "INGEST", natural, identity)
    if rule.ingest_type == "TEST":
        # The tester's own record id when it has one; else one derived from the record's key (stable).
        inner["testResultId"] = _text(values.get(f.test_result_id)) if f.test_result_id else ""
        if not inner["testResultId"]:
            inner["testResultId"] = f"{device_id}-{natural}" if natural not in (None, "") else eid
    if rule.ingest_type == "BATCH":
        inner["carrierCode"] = carrier
        inner["snList"] = sn_list(rule, values)
    inner["result"] = result
    if items:
        inner["measurements"] = items
    ingest: dict[str, Any] = {"eventType": rule.ingest_type, "payload": inner}
    if run_no:
        ingest["runNo"] = run_no
    out.events.append(NewEvent(eid, "INGEST", at, rule.station_code, ingest))

    insp = rule.inspection
    if insp and (insp.emit_on == "ALWAYS" or result == "FAIL"):
        iid = event_id(rule, device_id, "INSPECTION_RESULT", natural, identity)
        body = {
            "eventId": iid,
            "eventTime": iso(at),
            "stationCode": rule.station_code,
            "unitSn": sn,
            "stepNo": insp.step_no,
            "inspectionType": insp.type,
            "result": result if result in ("PASS", "FAIL") else "FAIL",
            "source": "AUTO",
            "equipmentId": rule.station_code,
        }
        if run_no:
            body["runNo"] = run_no
        if body["result"] == "FAIL":
            defects = parse_defects(values.get(f.defects)) if f.defects else []
            # Central refuses a FAIL without defects; the machine said FAIL, so record that much.
            body["defects"] = defects or [{"code": insp.default_defect_code or f"{insp.type}_FAIL"}]
        if items:
            body["rawData"] = {"measurements": items}
        out.events.append(NewEvent(iid, "INSPECTION_RESULT", at, rule.station_code, body))
    return out
