"""Memory maps of the simulated machines: PLC registers and tester nodes (the edge config mirrors these).

PLC (Modbus holding registers, big-endian words and bytes):
    0        status            uint16   1 RUN, 2 ALARM
    1–2      record counter    uint32   records completed since power-up (boards, or oven lots)
    20…      last record       (layout below)
    200 + (n % buffer)·stride  record n, when the PLC keeps a buffer
Record of a printer / placer (stride 32):  sn string[16 regs] @0, result uint16 @16 (1 PASS, 2 FAIL),
    placements uint32 @17, time uint64 epoch-ms @20.
Record of an oven lot (stride 160): carrier string[8] @0, result uint16 @8, sn count uint16 @9,
    peak temperature uint16 in 0.1 °C @10, time uint64 epoch-ms @12, SN i string[16] @16 + 16·i (i < 8).

Tester (OPC UA, namespace 2): Tester.Status (Int32), Tester.RecordCount (UInt32), the last record under
Tester.Last.<Field>, record n under Tester.Records[n % buffer].<Field>; fields SN, Result ("PASS"/"FAIL"),
RecordId, RunNo, Time (DateTime), Defects ("CODE@LOCATION;…"), M.<measurement> (Double); test limits
under Tester.Limits.<measurement>.Low / .High.
"""

from __future__ import annotations

from dataclasses import dataclass

STATUS = 0
COUNTER = 1
LAST = 20
BASE = 200
STATUS_RUN = 1
STATUS_ALARM = 2
RESULT_PASS = 1
RESULT_FAIL = 2

UNIT_STRIDE = 32
# field: (offset, type, length in registers for strings)
UNIT_FIELDS: dict[str, tuple[int, str, int]] = {
    "sn": (0, "string", 16),
    "result": (16, "uint16", 0),
    "placements": (17, "uint32", 0),
    "time": (20, "uint64", 0),
}
LOT_STRIDE = 160
LOT_MAX_SNS = 8
LOT_FIELDS: dict[str, tuple[int, str, int]] = {
    "carrier": (0, "string", 8),
    "result": (8, "uint16", 0),
    "sn_count": (9, "uint16", 0),
    "peak_temp": (10, "uint16", 0),
    "time": (12, "uint64", 0),
    **{f"sn_{i}": (16 + 16 * i, "string", 16) for i in range(LOT_MAX_SNS)},
}
PEAK_TEMP_SCALE = 0.1

NAMESPACE_URI = "urn:mes-sim:tester"
TESTER_FIELDS: dict[str, str] = {
    "SN": "String",
    "Result": "String",
    "RecordId": "String",
    "RunNo": "String",
    "Time": "DateTime",
    "Defects": "String",
}


@dataclass(frozen=True)
class Measure:
    """A measured quantity: central's data-spec name, unit, limits and the simulated distribution."""

    name: str
    unit: str
    low: float
    high: float
    nominal: float
    sigma: float
    decimals: int = 2


MEASURES: dict[str, list[Measure]] = {
    "spi": [
        Measure("PASTE_HEIGHT", "um", 100, 180, 140, 8, 1),
        Measure("PASTE_AREA", "%", 70, 130, 100, 6, 1),
        Measure("PASTE_VOLUME", "%", 70, 130, 100, 6, 1),
    ],
    "aoi": [],
    "ict": [
        Measure("ICT_VCC_3V3", "V", 3.2, 3.4, 3.3, 0.02, 3),
        Measure("ICT_R1", "kOhm", 9.5, 10.5, 10.0, 0.1, 3),
        Measure("ICT_IDLE_CURRENT", "mA", 5, 50, 22, 4, 2),
    ],
    "mount": [Measure("PLACEMENT_COUNT", "pcs", 0, 1e9, 412, 0, 0)],
    "reflow": [Measure("PEAK_TEMP", "C", 235, 250, 245, 1.5, 1)],
    "print": [],
}
DEFECTS = {"spi": "SPI-INSUFFICIENT@U3", "aoi": "AOI-BRIDGE@U7", "ict": "ICT-OPEN@R1"}
# Route step of the tester's station in PCBA-AUTO-V1 (SPI/AOI results carry it).
STEP_NO = {"print": 10, "spi": 20, "mount": 30, "reflow": 40, "aoi": 50, "ict": 60}
INGEST_TYPE = {
    "print": "AUTO",
    "mount": "AUTO",
    "reflow": "BATCH",
    "spi": "TEST",
    "aoi": "TEST",
    "ict": "TEST",
}


def max_buffer(kind: str) -> int:
    if kind == "reflow":
        return (65536 - BASE) // LOT_STRIDE
    if kind in ("print", "mount"):
        return (65536 - BASE) // UNIT_STRIDE
    return 256  # tester: nodes per slot × slots stays small enough to build quickly


def stride(kind: str) -> int:
    return LOT_STRIDE if kind == "reflow" else UNIT_STRIDE


def fields(kind: str) -> dict[str, tuple[int, str, int]]:
    return LOT_FIELDS if kind == "reflow" else UNIT_FIELDS


def tester_node(field: str, slot: int | str | None) -> str:
    where = "Last" if slot is None else f"Records[{slot}]"
    return f"ns=2;s=Tester.{where}.{field}"


COUNT_NODE = "ns=2;s=Tester.RecordCount"
STATUS_NODE = "ns=2;s=Tester.Status"


def limit_node(measure: str, bound: str) -> str:
    return f"ns=2;s=Tester.Limits.{measure}.{bound}"
