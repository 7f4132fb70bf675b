"""The demo plant as data (demo-plant.md §1–§4): codes, names, users, routes, business records."""

from __future__ import annotations

from typing import Any

EDGE_KEY_NAME = "edge-line-b"
EDGE_ROLE = ("edge-agent", "Edge agent", ["system:integration", "exec:track_in", "exec:track_out"])

# fmt: off
# code, name, processType, readinessChecks.enabled (line meta)
LINES = [
    ("LINE-A", "SMT Production Line A", "SMT",
     ["ROUTE", "LOADING", "EQUIPMENT", "MATERIAL", "STENCIL", "SOLDER_PASTE"]),
    ("LINE-DIP-A", "DIP Production Line A", "DIP", ["ROUTE", "EQUIPMENT", "MATERIAL"]),
    ("LINE-ING", "Ingest Test Line", "SMT", ["ROUTE"]),
    ("LINE-B", "SMT Automated Line B", "SMT", ["ROUTE", "EQUIPMENT", "STENCIL", "SOLDER_PASTE"]),
]
# group code, group name, line code, [(station code, station name, station type)]
GROUPS: list[tuple[str, str, str, list[tuple[str, str, str]]]] = [
    ("SMT-LINE-A", "SMT Line A Group", "LINE-A", [
        ("ST-PRINT-01", "Stencil Printer 01", "MANUAL"),
        ("ST-SPI-01", "SPI 01", "MANUAL"),
        ("ST-MOUNT-01", "Pick & Place 01", "MANUAL"),
        ("ST-REFLOW-01", "Reflow Oven 01", "MANUAL"),
        ("ST-AOI-01", "AOI 01", "MANUAL"),
    ]),
    ("DIP-LINE-A", "DIP Line A Group", "LINE-DIP-A", [
        ("ST-DIP-INS-01", "DIP Insertion 01", "MANUAL"),
        ("ST-DIP-WAVE-01", "Wave Solder 01", "MANUAL"),
        ("ST-DIP-POST-01", "Post Solder 01", "MANUAL"),
        ("ST-DIP-TEST-01", "Functional Test 01", "MANUAL"),
    ]),
    ("GRP-AUTO", "Ingest AUTO Group", "LINE-ING", [("ST-AUTO-01", "Auto Station 01", "AUTO")]),
    ("GRP-TEST", "Ingest TEST Group", "LINE-ING", [("ST-TEST-01", "Test Station 01", "TEST")]),
    ("GRP-BATCH", "Ingest BATCH Group", "LINE-ING", [("ST-BATCH-01", "Batch Station 01", "BATCH")]),
    ("GRP-B-PRINT", "Line B Printing", "LINE-B", [("ST-B-PRINT-01", "Stencil Printer B01", "AUTO")]),
    ("GRP-B-SPI", "Line B SPI", "LINE-B", [("ST-B-SPI-01", "SPI B01", "TEST")]),
    ("GRP-B-MOUNT", "Line B Mounting", "LINE-B", [("ST-B-MOUNT-01", "Pick & Place B01", "AUTO")]),
    ("GRP-B-REFLOW", "Line B Reflow", "LINE-B", [("ST-B-REFLOW-01", "Reflow Oven B01", "BATCH")]),
    ("GRP-B-AOI", "Line B AOI", "LINE-B", [("ST-B-AOI-01", "AOI B01", "TEST")]),
    ("GRP-B-ICT", "Line B ICT", "LINE-B", [("ST-B-ICT-01", "ICT B01", "TEST")]),
]
# Lines whose stations get a TPM equipment row (status "normal"); LINE-ING has no EQUIPMENT readiness.
TPM_LINES = ("LINE-A", "LINE-DIP-A", "LINE-B")
# code, name, defaultType, isKeyQuality
OPERATIONS = [
    ("PRINTING", "Solder Paste Printing", "MANUAL", False),
    ("SPI", "Solder Paste Inspection", "MANUAL", True),
    ("MOUNTING", "Component Mounting", "MANUAL", False),
    ("REFLOW", "Reflow Soldering", "MANUAL", False),
    ("AOI", "Automated Optical Inspection", "MANUAL", True),
    ("DIP_INSERT", "DIP Insertion", "MANUAL", False),
    ("WAVE_SOLDER", "Wave Solder", "MANUAL", False),
    ("POST_SOLDER", "Post Solder", "MANUAL", False),
    ("FUNC_TEST", "Functional Test", "MANUAL", True),
    ("OP-AUTO", "Ingest AUTO Operation", "AUTO", False),
    ("OP-TEST", "Ingest TEST Operation", "TEST", False),
    ("OP-BATCH", "Ingest BATCH Operation", "BATCH", False),
    ("B-PRINT", "Line B Solder Paste Printing", "AUTO", False),
    ("B-SPI", "Line B Solder Paste Inspection", "TEST", True),
    ("B-MOUNT", "Line B Component Mounting", "AUTO", False),
    ("B-REFLOW", "Line B Reflow Soldering", "BATCH", False),
    ("B-AOI", "Line B Automated Optical Inspection", "TEST", True),
    ("B-ICT", "Line B In-Circuit Test", "TEST", True),
]
# operation, spec name, trigger, spec {min,max,unit}, required; all KEY / NUMBER / method AUTO.
# Ingest measurements are matched to these by name.
SPECS: list[tuple[str, str, str, dict[str, Any], bool]] = [
    ("OP-AUTO", "TEMP-AUTO", "EACH_UNIT", {"unit": "C"}, True),
    ("OP-TEST", "TEMP-TEST", "EACH_UNIT", {"unit": "C"}, True),
    ("OP-BATCH", "TEMP-BATCH", "EACH_CARRIER", {"unit": "C"}, True),
    ("B-SPI", "PASTE_HEIGHT", "EACH_UNIT", {"min": 100, "max": 180, "unit": "um"}, False),
    ("B-SPI", "PASTE_AREA", "EACH_UNIT", {"min": 70, "max": 130, "unit": "%"}, False),
    ("B-SPI", "PASTE_VOLUME", "EACH_UNIT", {"min": 70, "max": 130, "unit": "%"}, False),
    ("B-MOUNT", "PLACEMENT_COUNT", "EACH_UNIT", {"min": 0, "unit": "pcs"}, False),
    ("B-REFLOW", "PEAK_TEMP", "EACH_CARRIER", {"min": 235, "max": 250, "unit": "C"}, False),
    ("B-ICT", "ICT_VCC_3V3", "EACH_UNIT", {"min": 3.2, "max": 3.4, "unit": "V"}, False),
    ("B-ICT", "ICT_R1", "EACH_UNIT", {"min": 9.5, "max": 10.5, "unit": "kOhm"}, False),
    ("B-ICT", "ICT_IDLE_CURRENT", "EACH_UNIT", {"min": 5, "max": 50, "unit": "mA"}, False),
]
# code, name, processType, productCode, with step-scoped execution configs,
# [(stepNo, operation, group, requiresFAI)].
# Every step's station type is its operation's defaultType; the last step is isLast.
ROUTINGS: list[tuple[str, str, str, str | None, bool, list[tuple[int, str, str, bool]]]] = [
    ("PCBA-STD-V1", "Standard PCBA Process V1", "SMT", None, False, [
        (1, "PRINTING", "SMT-LINE-A", True), (2, "SPI", "SMT-LINE-A", False),
        (3, "MOUNTING", "SMT-LINE-A", False), (4, "REFLOW", "SMT-LINE-A", False),
        (5, "AOI", "SMT-LINE-A", False),
    ]),
    ("PCBA-DIP-V1", "DIP PCBA Process V1", "DIP", None, False, [
        (1, "DIP_INSERT", "DIP-LINE-A", True), (2, "WAVE_SOLDER", "DIP-LINE-A", False),
        (3, "POST_SOLDER", "DIP-LINE-A", False), (4, "FUNC_TEST", "DIP-LINE-A", False),
    ]),
    ("ROUTE-AUTO-V1", "Ingest AUTO Route V1", "SMT", "P-ING-AUTO", True, [(1, "OP-AUTO", "GRP-AUTO", False)]),
    ("ROUTE-TEST-V1", "Ingest TEST Route V1", "SMT", "P-ING-TEST", True, [(1, "OP-TEST", "GRP-TEST", False)]),
    ("ROUTE-BATCH-V1", "Ingest BATCH Route V1", "SMT", "P-ING-BATCH", True,
     [(1, "OP-BATCH", "GRP-BATCH", False)]),
    ("PCBA-AUTO-V1", "Automated PCBA Process V1", "SMT", "P-2001", True, [
        (10, "B-PRINT", "GRP-B-PRINT", False), (20, "B-SPI", "GRP-B-SPI", False),
        (30, "B-MOUNT", "GRP-B-MOUNT", False), (40, "B-REFLOW", "GRP-B-REFLOW", False),
        (50, "B-AOI", "GRP-B-AOI", False), (60, "B-ICT", "GRP-B-ICT", False),
    ]),
]
MATERIALS = [
    ("MAT-001", "Chip Resistor 10K", "SMD", "PCS"),
    ("MAT-002", "MLCC Capacitor 100nF", "SMD", "PCS"),
    ("MAT-003", "IC Chip MCU", "IC", "PCS"),
]
MATERIAL_LOTS = [("MAT-001", "LOT-2024-001")]
BOM = [("P-1001", "MAT-001", 10.0), ("P-1001", "MAT-002", 5.0), ("P-1001", "MAT-003", 1.0)]
# line, slot code, slot name, position, material, product, routing, priority
SLOTS = [("LINE-A", "SLOT-01", "Feeder Slot 01", 1, "MAT-001", "P-1001", "PCBA-STD-V1", 1)]
# line, current stencil (status READY, tension 45), current solder-paste lot (status COMPLIANT)
CONSUMABLES = [("LINE-A", "STENCIL-001", "SP-LOT-001"), ("LINE-B", "STENCIL-B-01", "SP-LOT-B-001")]
# productCode, line, routing, samplingType, sampleValue, priority
OQC_RULES = [
    ("P-1001", "LINE-DIP-A", "PCBA-DIP-V1", "FIXED", 1.0, 10),
    ("P-2001", None, None, "PERCENTAGE", 5.0, 10),
]
# email, name, role, bound lines, bound stations ("@LINE" = every station of that line)
USERS: list[tuple[str, str, str, tuple[str, ...], tuple[str, ...]]] = [
    ("admin@example.com", "Admin", "admin", (), ()),
    ("planner@example.com", "张计划", "planner", (), ()),
    ("engineer@example.com", "李工艺", "engineer", (), ()),
    ("quality@example.com", "王质量", "quality", (), ()),
    ("material@example.com", "周物料", "material", ("LINE-A", "LINE-DIP-A"), ()),
    ("operator@example.com", "钱操作", "operator", (), ("@LINE-A", "@LINE-DIP-A")),
    ("operator.aoi@example.com", "赵检测", "operator", (), ("ST-AOI-01",)),
    ("trace@example.com", "孙追溯", "trace", (), ()),
]
# woNo, productCode, routing, plannedQty, status, run (runNo, line, planQty, shift, changeover, SNs) | None
WORK_ORDERS: list[tuple[str, str, str, int, str, tuple[str, str, int, str, str, list[str]] | None]] = [
    ("WO-DEMO-SMT-001", "P-1001", "PCBA-STD-V1", 10, "RECEIVED", None),
    ("WO-DEMO-DIP-001", "P-1001", "PCBA-DIP-V1", 10, "RECEIVED", None),
    ("WO-DEMO-SMT-RUN-001", "P-1001", "PCBA-STD-V1", 3, "IN_PROGRESS",
     ("RUN-DEMO-SMT-001", "LINE-A", 3, "D1", "DEMO-SMT-001", [f"SN-DEMO-SMT-{i:04d}" for i in (1, 2, 3)])),
    ("WO-DEMO-DIP-RUN-001", "P-1001", "PCBA-DIP-V1", 2, "IN_PROGRESS",
     ("RUN-DEMO-DIP-001", "LINE-DIP-A", 2, "D1", "DEMO-DIP-001", [f"SN-DEMO-DIP-{i:04d}" for i in (1, 2)])),
]
# Keys of the seed summary: rows created by this call, per kind.
SUMMARY_KEYS = (
    "roles", "users", "lineBindings", "stationBindings", "apiKeys", "lines", "stationGroups", "stations",
    "tpmEquipment", "operations", "dataSpecs", "routings", "executionConfigs", "routeVersions", "materials",
    "materialLots", "bomItems", "feederSlots", "slotMappings", "stencilBindings", "stencilStatusRecords",
    "solderPasteBindings", "solderPasteStatusRecords", "oqcSamplingRules", "workOrders", "runs", "units",
)
# fmt: on


def stations_of(line: str) -> list[str]:
    return [code for g in GROUPS if g[2] == line for code, _n, _t in g[3]]


def ingest_mapping(event_type: str) -> dict[str, Any]:
    """The ingestMapping of demo-plant.md §3 for one step type (the dotted paths the tests use)."""
    m: dict[str, Any] = {
        "eventType": event_type,
        "stationCodePath": "payload.stationCode",
        "result": {"path": "payload.result", "passValues": ["PASS"], "failValues": ["FAIL"]},
        "measurements": {
            "itemsPath": "payload.measurements",
            "namePath": "name",
            "valuePath": "value",
            "unitPath": "unit",
            "judgePath": "judge",
        },
    }
    if event_type in ("AUTO", "TEST"):
        m["snPath"] = "payload.sn"
    if event_type == "TEST":
        m["testResultIdPath"] = "payload.testResultId"
    if event_type == "BATCH":
        m.update(
            carrierCodePath="payload.carrierCode", snListPath="payload.snList", batchPolicy="ALL_OR_NOTHING"
        )
    return m
