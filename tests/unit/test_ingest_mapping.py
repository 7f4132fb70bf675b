"""Ingest normalisation (domain.md §4.3 step 5): paths, flattening, result values, measurements, mapping."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from central.domain import ingest_mapping as im
from central.domain.errors import Rejected
from central.services.demo_plant import ingest_mapping as demo_mapping

ROOT = {
    "payload": {
        "a": {"b": 1},
        "boards": [{"sn": "S1", "parts": [1, 2]}, {"sn": "S2", "parts": [3]}],
        "z": None,
    }
}


def code(fn: Any, *args: Any) -> str:
    with pytest.raises(Rejected) as info:
        fn(*args)
    return info.value.code


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("payload.a.b", 1),
        ("payload.a", {"b": 1}),
        ("payload.boards[1].sn", "S2"),
        ("payload.boards[*].sn", ["S1", "S2"]),
        ("payload.boards[*].parts[*]", [1, 2, 3]),  # [*] flattens through every level
        ("payload.boards[*].parts", [[1, 2], [3]]),
        ("payload.boards[*].missing", []),
        ("payload.z", None),
        ("payload.a.c", im.MISSING),
        ("payload.boards[5]", im.MISSING),
        ("a.b", im.MISSING),  # rooted at {payload: …}: a path must start with payload.
    ],
)
def test_get_path(path: str, expected: Any) -> None:
    assert im.get_path(ROOT, path) == expected


@pytest.mark.parametrize("path", ["", "payload..a", "payload.a[x]", "payload.[", 5])
def test_malformed_paths_are_mapping_errors(path: Any) -> None:
    assert code(im.get_path, ROOT, path) == "INGEST_MAPPING_INVALID"


def test_demo_mapping_reads_the_s11_payload() -> None:
    mapping = im.Mapping.parse(demo_mapping("AUTO"))
    norm = im.normalize(
        {
            "stationCode": "ST-AUTO-01",
            "sn": "SN-1",
            "result": "Pass",
            "measurements": [{"name": "TEMP-AUTO", "value": 55.5, "unit": "C", "judge": "pass"}],
        },
        mapping,
    )
    assert (norm.station_code, norm.sn, norm.result, norm.sn_list) == ("ST-AUTO-01", "SN-1", "PASS", None)
    assert norm.measurements == [
        im.Measurement(name="TEMP-AUTO", spec_name="TEMP-AUTO", value=55.5, unit="C", judge="PASS")
    ]
    im.require(norm, "AUTO")
    assert norm.as_json()["measurements"][0]["judge"] == "PASS"


def test_required_fields_per_type() -> None:
    auto = im.Mapping.parse(demo_mapping("AUTO"))
    test = im.Mapping.parse(demo_mapping("TEST"))
    batch = im.Mapping.parse(demo_mapping("BATCH"))
    empty = im.normalize({}, auto)
    with pytest.raises(Rejected) as info:
        im.require(empty, "AUTO")
    assert info.value.code == "INGEST_PAYLOAD_INVALID" and info.value.details == {
        "missing": ["sn", "stationCode", "result"]
    }
    no_id = im.normalize({"sn": "S", "stationCode": "T", "result": "FAIL"}, test)
    with pytest.raises(Rejected) as info:
        im.require(no_id, "TEST")
    assert info.value.details == {"missing": ["testResultId"]}
    with pytest.raises(Rejected) as info:
        im.require(im.normalize({"snList": ["A"], "result": "PASS"}, batch), "BATCH")
    assert info.value.details == {"missing": ["carrierCode"]}
    # A BATCH result outside the value lists is refused later (after the run gate); AUTO/TEST here.
    im.require(im.normalize({"snList": ["A"], "carrierCode": "C", "result": "MEH"}, batch), "BATCH")
    assert code(im.require, im.normalize({"sn": "S", "stationCode": "T", "result": "MEH"}, auto), "AUTO") == (
        "INGEST_PAYLOAD_INVALID"
    )


def test_result_values_are_case_insensitive_and_configurable() -> None:
    mapping = im.Mapping.parse(
        {"result": {"path": "payload.r", "passValues": ["OK", 1, True], "failValues": ["NG", 0]}}
    )
    for raw, expected in (
        ("ok", "PASS"),
        ("Ng", "FAIL"),
        (1, "PASS"),
        ("0", "FAIL"),
        (True, "PASS"),
        ("x", None),
    ):
        assert im.normalize({"r": raw}, mapping).result == expected, raw
    assert im.normalize({}, mapping).has_result is False
    assert im.normalize({"r": None}, mapping).has_result is False


def test_measurements_item_relative_paths_and_spec_map() -> None:
    mapping = im.Mapping.parse(
        {
            "measurements": {
                "itemsPath": "payload.test.steps[*].readings[*]",
                "namePath": "meta.tag",
                "valuePath": "v",
                "unitPath": "u",
                "judgePath": "verdict",
            },
            "dataSpecMap": {"vcc": "ICT_VCC_3V3"},
            "result": {"path": "payload.r", "passValues": ["GOOD"], "failValues": ["BAD"]},
        }
    )
    payload = {
        "test": {
            "steps": [
                {"readings": [{"meta": {"tag": "vcc"}, "v": 3.3, "u": "V", "verdict": "good"}]},
                {
                    "readings": [
                        {"meta": {"tag": "r1"}, "v": "10.1", "verdict": "FAIL"},
                        {"meta": {"tag": "x"}},
                    ]
                },
            ]
        }
    }
    got = im.normalize(payload, mapping).measurements
    assert got == [
        im.Measurement("vcc", "ICT_VCC_3V3", 3.3, "V", "PASS", mapped=True),
        im.Measurement("r1", "r1", "10.1", None, "FAIL"),  # plain PASS/FAIL also counts as a judge
        im.Measurement("x", "x", None, None, None),
    ]


def test_measurements_as_a_name_value_object() -> None:
    norm = im.normalize({"measurements": {"TEMP": 55, "RPM": "1200"}}, im.Mapping.parse({}))
    assert [(m.name, m.value) for m in norm.measurements] == [("TEMP", 55), ("RPM", "1200")]


@pytest.mark.parametrize(
    "payload",
    [
        {"measurements": "55"},
        {"measurements": [55]},
        {"measurements": [{"value": 1}]},
        {"sn": {"x": 1}},
        {"sn": True},
        {"snList": "A,B"},
        {"snList": ["A", ""]},
        {"snList": ["A", "A"]},
        {"snList": [f"SN-{i}" for i in range(1001)]},
        {"sn": "S" * 129},
        {"carrierCode": "C" * 65},
        {"testResultId": "T" * 129},
    ],
)
def test_malformed_payload_values(payload: dict[str, Any]) -> None:
    assert code(im.normalize, payload, im.Mapping.parse({})) == "INGEST_PAYLOAD_INVALID"


def test_sn_lists_flatten_and_single_fields_take_one_value() -> None:
    mapping = im.Mapping.parse({"snListPath": "payload.boards[*].sns", "snPath": "payload.boards[*].id"})
    norm = im.normalize({"boards": [{"sns": ["A", "B"], "id": "X"}, {"sns": ["C"]}]}, mapping)
    assert (norm.sn_list, norm.sn) == (["A", "B", "C"], "X")
    two = {"boards": [{"id": "X"}, {"id": "Y"}]}
    assert code(im.normalize, two, mapping) == "INGEST_PAYLOAD_INVALID"
    assert im.normalize({"sn": 12345}, im.Mapping.parse({})).sn == "12345"  # numeric serials become text


def test_payload_time_and_parse_time() -> None:
    mapping = im.Mapping.parse({"occurredAtPath": "payload.t"})
    norm = im.normalize({"t": "2026-01-02T03:04:05.678+08:00"}, mapping)
    assert norm.occurred_at == datetime(2026, 1, 1, 19, 4, 5, 678000, tzinfo=UTC)
    assert im.parse_time("2026-01-01T00:00:00Z") == datetime(2026, 1, 1, tzinfo=UTC)
    for bad in (
        "2026-01-01T00:00:00",
        "soon",
        "",
        1767225600,
        None,
        datetime(2026, 1, 1),
        "0001-01-01T00:00+05:00",
    ):
        assert code(im.parse_time, bad) == "INGEST_PAYLOAD_INVALID"


@pytest.mark.parametrize(
    "raw",
    [
        "x",
        {"eventType": "MANUAL"},
        {"result": "payload.result"},
        {"result": {"passValues": []}},
        {"result": {"failValues": "FAIL"}},
        {"measurements": ["payload.m"]},
        {"dataSpecMap": {"a": 1}},
        {"batchPolicy": 3},
        {"snPath": "payload..sn"},
    ],
)
def test_invalid_mappings(raw: Any) -> None:
    assert code(im.Mapping.parse, raw) == "INGEST_MAPPING_INVALID"


def test_defaults_and_canonical_form() -> None:
    custom = im.Mapping.parse(
        {
            "snPath": "payload.board.serial",
            "result": {"path": "payload.v", "passValues": ["OK"], "failValues": ["NG"]},
            "dataSpecMap": {"t": "TEMP"},
            "batchPolicy": "PARTIAL",
        }
    )
    assert custom.paths["stationCodePath"] == "payload.stationCode" and custom.batch_policy == "PARTIAL"
    canon = custom.canonical()
    assert canon.paths["snPath"] == "payload.sn" and canon.result_path == "payload.result"
    assert canon.pass_values == {"ok", "pass"} and canon.fail_values == {"ng", "fail"}
    assert (canon.data_spec_map, canon.batch_policy) == ({"t": "TEMP"}, "PARTIAL")


@pytest.mark.parametrize(
    ("data_type", "raw", "expected"),
    [
        ("NUMBER", 5, 5.0),
        ("NUMBER", " 2.5 ", 2.5),
        ("BOOLEAN", "TRUE", True),
        ("BOOLEAN", False, False),
        ("TEXT", 12, "12"),
        ("JSON", {"a": [1]}, {"a": [1]}),
    ],
)
def test_coerce(data_type: str, raw: Any, expected: Any) -> None:
    assert im.coerce(data_type, raw) == expected


@pytest.mark.parametrize(
    ("data_type", "raw"),
    [
        ("NUMBER", True),
        ("NUMBER", "abc"),
        ("NUMBER", "nan"),
        ("NUMBER", None),
        ("BOOLEAN", "yes"),
        ("TEXT", [1]),
    ],
)
def test_coerce_refuses(data_type: str, raw: Any) -> None:
    with pytest.raises(ValueError):
        im.coerce(data_type, raw)


def test_judge_limits() -> None:
    assert im.judge_limits(5, 1, 10) == "PASS"
    assert im.judge_limits(11, 1, 10) == "FAIL"
    assert im.judge_limits(0, 1, None) == "FAIL"
    assert im.judge_limits(5, None, None) is None
