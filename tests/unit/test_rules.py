"""Rules (edge/rules.py): trigger detection and event building, pure — no machine, no I/O."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from edge.device_config import RuleConfig
from edge.rules import Detection, build_events, detect, parse_defects
from shared.events import EdgeEvent

T0 = datetime(2026, 3, 1, 8, 0, 0, tzinfo=UTC)


def rule(**over: Any) -> RuleConfig:
    base: dict[str, Any] = {
        "name": "print-record",
        "device": "plc-print",
        "trigger": {"kind": "counter", "signal": "counter"},
        "event": "INGEST",
        "ingest_type": "AUTO",
        "station_code": "ST-B-PRINT-01",
        "fields": {"sn": "sn", "result": "result"},
        "result_map": {"1": "PASS", "2": "FAIL"},
    }
    return RuleConfig.model_validate({**base, **over})


def wire(ev: Any, seq: int = 1) -> EdgeEvent:
    """What the outbox would send: the event must fit the wire contract."""
    return EdgeEvent(
        event_id=ev.event_id,
        seq=seq,
        kind=ev.kind,
        occurred_at=ev.occurred_at,
        station_code=ev.station_code,
        payload=ev.payload,
    )


# --- detection ------------------------------------------------------------------------------------


def test_counter_first_sight_is_a_baseline_not_an_event() -> None:
    assert detect(rule(), None, 41) == Detection(last=41)


def test_counter_step_of_one_reports_that_record() -> None:
    d = detect(rule(), 41, 42)
    assert d.keys == (42,) and d.last == 42 and d.warnings == () and not d.from_buffer


def test_counter_unchanged_reports_nothing() -> None:
    assert detect(rule(), 42, 42).keys == ()


def test_counter_jump_without_buffer_is_one_event_and_a_gap_warning() -> None:
    d = detect(rule(), 10, 14)
    assert d.keys == (14,) and d.last == 14
    assert len(d.warnings) == 1 and d.warnings[0].startswith("GAP plc-print/print-record: 3 record(s) missed")


def test_counter_jump_with_buffer_is_one_event_per_increment() -> None:
    d = detect(rule(record_buffer={"size": 8, "stride": 32}), 10, 14)
    assert d.keys == (11, 12, 13, 14) and d.from_buffer and d.warnings == ()


def test_counter_jump_beyond_the_buffer_reports_what_is_left_and_warns() -> None:
    d = detect(rule(record_buffer={"size": 4, "stride": 32}), 10, 20)
    assert d.keys == (17, 18, 19, 20)
    assert d.warnings and d.warnings[0].startswith("GAP") and "6 record(s) overwritten" in d.warnings[0]


def test_counter_going_back_is_a_reset_counted_from_zero() -> None:
    d = detect(rule(record_buffer={"size": 8, "stride": 32}), 500, 2)
    assert d.keys == (1, 2) and d.last == 2 and d.warnings[0].startswith("COUNTER_RESET")
    assert detect(rule(), 500, 0).keys == ()


def test_counter_ignores_unreadable_values() -> None:
    assert detect(rule(), 5, None) == Detection(last=5)
    assert detect(rule(), 5, "garbage") == Detection(last=5)


def test_rising_edge_fires_on_false_to_true_only() -> None:
    r = rule(trigger={"kind": "rising_edge", "signal": "done"})
    assert detect(r, None, True).keys == ()  # first sight
    assert detect(r, False, True).keys == (None,)
    assert detect(r, True, True).keys == ()
    assert detect(r, True, False).keys == () and detect(r, True, False).last is False


def test_value_change_keys_by_value_only_when_values_are_unique() -> None:
    plain = rule(trigger={"kind": "value_change", "signal": "rec"})
    unique = rule(trigger={"kind": "value_change", "signal": "rec", "unique": True})
    assert detect(plain, "A", "B").keys == (None,)
    assert detect(unique, "A", "B").keys == ("B",)
    assert detect(unique, None, "B").keys == () and detect(unique, "B", "B").keys == ()


def test_equipment_status_changes_are_compared_after_mapping() -> None:
    r = rule(
        name="status",
        trigger={"kind": "value_change", "signal": "status"},
        event="EQUIPMENT_STATUS",
        ingest_type=None,
        fields={},
        status_map={"0": "normal", "1": "normal", "2": "down"},
    )
    assert detect(r, None, 1) == Detection(last="normal")
    assert detect(r, "normal", 0).keys == ()  # idle → run: still "normal", nothing to say
    d = detect(r, "normal", 2)
    assert d.keys == (None,) and d.last == "down"


def test_node_event_each_event_is_one_occurrence() -> None:
    r = rule(trigger={"kind": "node_event"})
    assert detect(r, None, "e1").keys == ("e1",)


# --- building -------------------------------------------------------------------------------------


def test_ingest_auto_carries_the_routes_mapping_paths() -> None:
    built = build_events(rule(), "plc-print", 42, {"sn": "SN-1 ", "result": 1}, T0)
    assert built.warnings == []
    (ev,) = built.events
    assert ev.kind == "INGEST" and ev.station_code == "ST-B-PRINT-01" and ev.occurred_at == T0
    # demo-plant.md §3: payload.stationCode, payload.sn, payload.result, payload.measurements
    assert ev.payload == {
        "eventType": "AUTO",
        "payload": {"stationCode": "ST-B-PRINT-01", "sn": "SN-1", "result": "PASS"},
    }
    wire(ev)


def test_event_id_is_deterministic_per_record() -> None:
    r = rule()
    a = build_events(r, "plc-print", 42, {"sn": "SN-1", "result": 1}, T0).events[0]
    again = build_events(r, "plc-print", 42, {"sn": "SN-1", "result": 1}, datetime.now(UTC)).events[0]
    nxt = build_events(r, "plc-print", 43, {"sn": "SN-2", "result": 1}, T0).events[0]
    other_dev = build_events(r, "plc-other", 42, {"sn": "SN-1", "result": 1}, T0).events[0]
    # After a machine reset the counter repeats, but the board differs: not mistaken for a duplicate.
    reset = build_events(r, "plc-print", 42, {"sn": "SN-9", "result": 1}, T0).events[0]
    assert a.event_id == again.event_id
    assert len({a.event_id, nxt.event_id, other_dev.event_id, reset.event_id}) == 4


def test_event_id_is_random_when_nothing_identifies_the_record() -> None:
    r = rule(trigger={"kind": "rising_edge", "signal": "done"})
    a = build_events(r, "d", None, {"sn": "SN-1", "result": 1}, T0).events[0]
    b = build_events(r, "d", None, {"sn": "SN-1", "result": 1}, T0).events[0]
    assert a.event_id != b.event_id


def test_machine_record_id_keys_the_event_when_bound() -> None:
    r = rule(fields={"sn": "sn", "result": "result", "record_id": "rid"})
    a = build_events(r, "d", 1, {"sn": "S", "result": 1, "rid": "R-77"}, T0).events[0]
    b = build_events(r, "d", 2, {"sn": "S", "result": 1, "rid": "R-77"}, T0).events[0]
    assert a.event_id == b.event_id


def test_result_mapping_is_case_insensitive_and_unknown_words_are_not_guessed() -> None:
    r = rule(result_map={"ok": "PASS", "ng": "FAIL"})
    assert (
        build_events(r, "d", 1, {"sn": "S", "result": "Ok"}, T0).events[0].payload["payload"]["result"]
        == "PASS"
    )
    assert (
        build_events(r, "d", 1, {"sn": "S", "result": "NG"}, T0).events[0].payload["payload"]["result"]
        == "FAIL"
    )
    built = build_events(r, "d", 1, {"sn": "S", "result": 7}, T0)
    assert built.events[0].payload["payload"]["result"] == "7"  # central refuses it → dead letter, visible
    assert built.warnings == ["RESULT_UNMAPPED d/print-record: result '7' is not in result_map"]


def test_no_result_signal_uses_the_default_result() -> None:
    r = rule(fields={"sn": "sn"}, default_result="PASS")
    assert build_events(r, "d", 1, {"sn": "S"}, T0).events[0].payload["payload"]["result"] == "PASS"


def test_measurements_carry_unit_and_a_judge_against_limits() -> None:
    r = rule(
        measurements=[
            {"name": "PASTE_HEIGHT", "signal": "h", "unit": "um", "low": 100, "high": 180},
            {"name": "ICT_R1", "signal": "r1", "unit": "kOhm", "low_signal": "r1_lo", "high_signal": "r1_hi"},
            {"name": "PLACEMENT_COUNT", "signal": "n", "unit": "pcs"},
            {"name": "ABSENT", "signal": "missing"},
        ]
    )
    vals = {
        "sn": "S",
        "result": 1,
        "h": 190.5,
        "r1": 10.1,
        "r1_lo": 9.5,
        "r1_hi": 10.5,
        "n": 412,
        "missing": None,
    }
    items = build_events(r, "d", 1, vals, T0).events[0].payload["payload"]["measurements"]
    assert items == [
        {"name": "PASTE_HEIGHT", "value": 190.5, "unit": "um", "judge": "FAIL", "min": 100, "max": 180},
        {"name": "ICT_R1", "value": 10.1, "unit": "kOhm", "judge": "PASS", "min": 9.5, "max": 10.5},
        {"name": "PLACEMENT_COUNT", "value": 412, "unit": "pcs"},
    ]


def test_ingest_test_has_a_test_result_id_from_the_machine_or_the_record_key() -> None:
    r = rule(ingest_type="TEST", fields={"sn": "sn", "result": "result", "test_result_id": "tid"})
    own = build_events(r, "ict", 5, {"sn": "S", "result": 1, "tid": "ICT-0005"}, T0).events[0]
    assert own.payload["payload"]["testResultId"] == "ICT-0005"
    derived = build_events(r, "ict", 5, {"sn": "S", "result": 1, "tid": ""}, T0).events[0]
    assert derived.payload["payload"]["testResultId"] == "ict-5"


def test_batch_carries_carrier_and_the_valid_part_of_the_sn_list() -> None:
    r = rule(
        ingest_type="BATCH",
        fields={
            "carrier_code": "car",
            "sn_list": ["s0", "s1", "s2", "arr"],
            "sn_count": "n",
            "result": "result",
        },
        measurements=[{"name": "PEAK_TEMP", "signal": "peak", "unit": "C", "low": 235, "high": 250}],
    )
    vals = {
        "car": "CAR-1",
        "s0": "A",
        "s1": "",
        "s2": "B",
        "arr": ["C", "D"],
        "n": 3,
        "result": 1,
        "peak": 245.3,
    }
    (ev,) = build_events(r, "oven", 9, vals, T0).events
    assert ev.payload["eventType"] == "BATCH"
    inner = ev.payload["payload"]
    assert inner["carrierCode"] == "CAR-1" and inner["snList"] == ["A", "B", "C"] and "sn" not in inner
    assert inner["measurements"][0]["judge"] == "PASS"
    wire(ev)


def test_inspection_result_follows_the_ingest_on_fail_with_defects() -> None:
    r = rule(
        ingest_type="TEST",
        station_code="ST-B-SPI-01",
        fields={"sn": "sn", "result": "result", "run_no": "run", "defects": "defects", "record_id": "rid"},
        result_map={"PASS": "PASS", "FAIL": "FAIL"},
        inspection={"type": "SPI", "step_no": 20},
    )
    vals = {"sn": "S1", "result": "FAIL", "run": "RUN-1", "defects": "SPI-BRIDGE@U3;SPI-LOW", "rid": "R1"}
    ingest, insp = build_events(r, "spi", 3, vals, T0).events
    assert ingest.kind == "INGEST" and ingest.payload["runNo"] == "RUN-1"
    assert insp.kind == "INSPECTION_RESULT" and insp.event_id == insp.payload["eventId"] != ingest.event_id
    assert insp.payload == {
        "eventId": insp.event_id,
        "eventTime": "2026-03-01T08:00:00.000Z",
        "stationCode": "ST-B-SPI-01",
        "unitSn": "S1",
        "stepNo": 20,
        "inspectionType": "SPI",
        "result": "FAIL",
        "source": "AUTO",
        "equipmentId": "ST-B-SPI-01",
        "runNo": "RUN-1",
        "defects": [{"code": "SPI-BRIDGE", "location": "U3"}, {"code": "SPI-LOW"}],
    }
    wire(insp)
    passed = build_events(r, "spi", 4, {**vals, "result": "PASS"}, T0).events
    assert [e.kind for e in passed] == ["INGEST"]


def test_inspection_fail_without_defects_gets_a_default_defect() -> None:
    r = rule(ingest_type="TEST", inspection={"type": "AOI", "step_no": 50})
    _ingest, insp = build_events(r, "aoi", 1, {"sn": "S", "result": 2}, T0).events
    assert insp.payload["defects"] == [{"code": "AOI_FAIL"}]


def test_inspection_always_also_sends_passes() -> None:
    r = rule(ingest_type="TEST", inspection={"type": "AOI", "step_no": 50, "emit_on": "ALWAYS"})
    kinds = [e.kind for e in build_events(r, "aoi", 1, {"sn": "S", "result": 1}, T0).events]
    assert kinds == ["INGEST", "INSPECTION_RESULT"]


def test_equipment_status_event_maps_the_status_word() -> None:
    r = rule(
        name="status",
        trigger={"kind": "value_change", "signal": "st"},
        event="EQUIPMENT_STATUS",
        ingest_type=None,
        fields={"reason": "why"},
        status_map={"1": "normal", "2": "down"},
    )
    (ev,) = build_events(r, "plc", None, {"st": 2, "why": "E-STOP"}, T0).events
    assert ev.kind == "EQUIPMENT_STATUS" and ev.payload == {"status": "down", "reason": "E-STOP"}
    unmapped = build_events(r, "plc", None, {"st": 9}, T0)
    assert unmapped.events[0].payload == {"status": "9"} and unmapped.warnings[0].startswith(
        "STATUS_UNMAPPED"
    )


def test_device_data_event_is_the_body_of_the_device_data_endpoint() -> None:
    r = rule(
        name="temps",
        event="DEVICE_DATA",
        ingest_type=None,
        step_no=40,
        fields={"sn": "sn"},
        measurements=[{"name": "PEAK_TEMP", "signal": "t"}, {"name": "OK", "signal": "ok"}],
    )
    (ev,) = build_events(r, "oven", 7, {"sn": "S", "t": 245.1, "ok": True}, T0).events
    assert ev.kind == "DEVICE_DATA" and ev.payload["eventId"] == ev.event_id
    assert ev.payload["data"] == [
        {"specName": "PEAK_TEMP", "valueNumber": 245.1, "collectedAt": "2026-03-01T08:00:00.000Z"},
        {"specName": "OK", "valueBoolean": True, "collectedAt": "2026-03-01T08:00:00.000Z"},
    ]
    assert ev.payload["source"] == "AUTO" and ev.payload["stepNo"] == 40 and ev.payload["unitSn"] == "S"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (1772352000123, datetime(2026, 3, 1, 8, 0, 0, 123000, tzinfo=UTC)),  # epoch ms
        (1772352000, datetime(2026, 3, 1, 8, 0, 0, tzinfo=UTC)),  # epoch s
        (datetime(2026, 3, 1, 8, 0, 0), datetime(2026, 3, 1, 8, 0, 0, tzinfo=UTC)),  # OPC UA naive UTC
        ("2026-03-01T09:00:00+01:00", datetime(2026, 3, 1, 8, 0, 0, tzinfo=UTC)),
        (0, T0),  # unset: when it was seen
        ("not a time", T0),
    ],
)
def test_occurred_at_is_the_machines_time_when_bound(raw: Any, expected: datetime) -> None:
    r = rule(fields={"sn": "sn", "result": "result", "occurred_at": "ts"})
    assert build_events(r, "d", 1, {"sn": "S", "result": 1, "ts": raw}, T0).events[0].occurred_at == expected


def test_parse_defects_accepts_text_json_and_arrays() -> None:
    assert parse_defects("A@U1; B") == [{"code": "A", "location": "U1"}, {"code": "B"}]
    assert parse_defects('[{"code": "X", "location": "R2", "qty": 2}]') == [
        {"code": "X", "location": "R2", "qty": 2}
    ]
    assert parse_defects(["C@U9", ""]) == [{"code": "C", "location": "U9"}]
    assert parse_defects("") == [] and parse_defects(None) == []


# --- the wire: what central's services take ---------------------------------------------------------------


def test_built_events_are_valid_bodies_of_centrals_rest_endpoints() -> None:
    """Each kind's payload is the body of its REST endpoint (edge.md "Events"), checked against central's
    own request schemas the way central's MQTT consumer builds them."""
    from central.schemas.device_inputs import DeviceDataIn, InspectionResultIn
    from central.schemas.ingest import IngestEventIn
    from central.schemas.tpm import TpmEquipmentUpdate

    spi = rule(
        ingest_type="TEST",
        fields={"sn": "sn", "result": "result", "run_no": "run", "defects": "d"},
        result_map={"PASS": "PASS", "FAIL": "FAIL"},
        measurements=[{"name": "PASTE_HEIGHT", "signal": "h", "unit": "um", "low": 100, "high": 180}],
        inspection={"type": "SPI", "step_no": 20},
    )
    vals = {"sn": "S1", "result": "FAIL", "run": "RUN-1", "d": "SPI-BRIDGE@U3", "h": 190.0}
    ingest, insp = build_events(spi, "spi", 3, vals, T0).events
    IngestEventIn.model_validate(
        {
            **ingest.payload,
            "dedupeKey": ingest.event_id,
            "sourceSystem": "edge:e1",
            "occurredAt": T0.isoformat(),
        }
    )
    InspectionResultIn.model_validate(insp.payload)
    data = rule(
        name="dd",
        event="DEVICE_DATA",
        ingest_type=None,
        fields={"sn": "sn"},
        measurements=[
            {"name": "N", "signal": "n"},
            {"name": "T", "signal": "t"},
            {"name": "X", "signal": "x"},
        ],
    )
    (dd,) = build_events(data, "plc", 1, {"sn": "S", "n": 412, "t": 245.5, "x": "ok"}, T0).events
    DeviceDataIn.model_validate(dd.payload)
    status = rule(
        name="st",
        trigger={"kind": "value_change", "signal": "s"},
        event="EQUIPMENT_STATUS",
        ingest_type=None,
        fields={},
        status_map={"2": "down"},
    )
    (eq,) = build_events(status, "plc", None, {"s": 2}, T0).events
    TpmEquipmentUpdate.model_validate(eq.payload)
