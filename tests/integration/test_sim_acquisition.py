"""The simulated LINE-B + Acquisition with a list sink: the events central needs, and fault injection.

One simulated line for the module (its three OPC UA testers take seconds to build); each test asks it for more
boards and compares what the agent produced with the simulator's ground truth.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import pytest_asyncio

from edge.acquisition import Acquisition
from edge.device_config import ModbusDevice, OpcuaDevice, RuleConfig
from edge.rules import NewEvent
from edge.sim.config import SimLineConfig, load_sim_config
from edge.sim.edge_map import edge_section
from edge.sim.line import SimLine
from shared.events import EdgeEvent

pytestmark = pytest.mark.asyncio(loop_scope="module")

CONFIG = Path(__file__).parents[2] / "config"
ROUTE = ["ST-B-PRINT-01", "ST-B-SPI-01", "ST-B-MOUNT-01", "ST-B-REFLOW-01", "ST-B-AOI-01", "ST-B-ICT-01"]
SPEC_NAMES = {  # central's data specs per station (central/services/demo_plant.py SPECS)
    "ST-B-SPI-01": {"PASTE_HEIGHT", "PASTE_AREA", "PASTE_VOLUME"},
    "ST-B-MOUNT-01": {"PLACEMENT_COUNT"},
    "ST-B-REFLOW-01": {"PEAK_TEMP"},
    "ST-B-ICT-01": {"ICT_VCC_3V3", "ICT_R1", "ICT_IDLE_CURRENT"},
}


def sim_config(tmp: Path) -> SimLineConfig:
    """The shipped example line, on free ports, faster, with a short oven lot."""
    base = load_sim_config(CONFIG / "sim-line-b.example.toml").model_dump(by_alias=True, exclude_none=True)
    stations = [
        {**s, "port": 0, **({"lot_size": 3} if s["kind"] == "reflow" else {})} for s in base["stations"]
    ]
    return SimLineConfig.model_validate(
        {**base, "takt": 0.4, "boards": 6, "ground_truth": str(tmp / "truth.jsonl"), "stations": stations}
    )


def edge_config(sim: SimLineConfig, line: SimLine) -> SimpleNamespace:
    """The shipped edge devices/rules (== edge_section of the example) on the live ports, polled fast."""
    section = edge_section(sim, line.endpoints())
    for d in section["devices"]:
        d.update(poll_interval=0.05, reconnect_min=0.1, reconnect_max=0.5)
        if d["protocol"] == "opcua":
            d.update(publishing_interval=0.05, watchdog_interval=0.3)
    devices = [
        ModbusDevice.model_validate(d) if d["protocol"] == "modbus" else OpcuaDevice.model_validate(d)
        for d in section["devices"]
    ]
    return SimpleNamespace(devices=devices, rules=[RuleConfig.model_validate(r) for r in section["rules"]])


class Sink:
    """The outbox's stand-in: keeps events in order; can play 'full' (refuse) on demand."""

    def __init__(self) -> None:
        self.events: list[NewEvent] = []
        self.full = False
        self.refused = 0

    async def __call__(self, evs: list[NewEvent]) -> bool:
        if self.full:
            self.refused += 1
            return False
        self.events.extend(evs)
        return True

    def ingests(self, station: str | None = None) -> list[NewEvent]:
        return [
            e for e in self.events if e.kind == "INGEST" and (station is None or e.station_code == station)
        ]


async def eventually(check: Callable[[], Awaitable[bool] | bool], within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while True:
        res = check()
        if isinstance(res, Awaitable):
            res = await res
        if res:
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.05)


class Agent:
    def __init__(self, cfg: SimpleNamespace, sink: Sink, state_path: Path | None = None) -> None:
        self.acq = Acquisition(cfg, sink, state_path=state_path, retry_delay=0.1)
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self.acq.run(self._stop))

    def states(self) -> dict[str, str]:
        return {d.id: d.state for d in self.acq.device_states()}

    async def connected(self) -> None:
        await eventually(lambda: set(self.states().values()) == {"CONNECTED"})

    async def stop(self) -> None:
        self._stop.set()
        await self._task


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def line(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[SimLineConfig, SimLine]]:
    cfg = sim_config(tmp_path_factory.mktemp("sim"))
    sim = SimLine(cfg)
    await sim.start()
    yield cfg, sim
    await sim.close()


def record_key(e: NewEvent) -> tuple[str, str, str]:
    inner = e.payload["payload"]
    unit = inner.get("sn") or ",".join(inner["snList"])
    return (e.station_code or "", unit, inner["result"])


def truth_key(r: dict[str, Any]) -> tuple[str, str, str]:
    return (r["station"], r.get("sn") or ",".join(r["snList"]), r["result"])


def matches_truth(sink: Sink, records: list[dict[str, Any]]) -> bool:
    return sorted(record_key(e) for e in sink.ingests()) == sorted(truth_key(r) for r in records)


# --- the happy path -------------------------------------------------------------------------------


async def test_n_boards_make_the_events_central_expects(line: tuple[SimLineConfig, SimLine]) -> None:
    cfg, sim = line
    sink = Sink()
    agent = Agent(edge_config(cfg, sim), sink)
    try:
        await agent.connected()
        sim.fail_next("ST-B-SPI-01")  # the first board fails solder-paste inspection
        await asyncio.wait_for(sim.run(), 60)
        records = sim.records()
        await eventually(lambda: matches_truth(sink, records))
    finally:
        await agent.stop()

    sns = [f"SN-RUN-B-0001-{n:04d}" for n in range(1, 7)]
    failed, good = sns[0], sns[1:]
    assert sim.failed_boards == [failed] and sim.done_boards == good

    # One INGEST per machine record, of the station's type; an SPI FAIL adds an INSPECTION_RESULT after it.
    per_station = {st: [e.payload["payload"] for e in sink.ingests(st)] for st in ROUTE}
    assert [p["sn"] for p in per_station["ST-B-PRINT-01"]] == sns
    assert [(p["sn"], p["result"]) for p in per_station["ST-B-SPI-01"]] == [(failed, "FAIL")] + [
        (sn, "PASS") for sn in good
    ]
    for st in ("ST-B-MOUNT-01", "ST-B-AOI-01", "ST-B-ICT-01"):
        assert [p["sn"] for p in per_station[st]] == good
    lots = per_station["ST-B-REFLOW-01"]
    assert [p["snList"] for p in lots] == [good[:3], good[3:]]
    assert [p["carrierCode"] for p in lots] == ["CAR-000001", "CAR-000002"] and "sn" not in lots[0]
    types = {e.station_code: e.payload["eventType"] for e in sink.ingests()}
    assert types == {
        "ST-B-PRINT-01": "AUTO",
        "ST-B-SPI-01": "TEST",
        "ST-B-MOUNT-01": "AUTO",
        "ST-B-REFLOW-01": "BATCH",
        "ST-B-AOI-01": "TEST",
        "ST-B-ICT-01": "TEST",
    }
    # Measurements carry central's spec names, units and a judge against the machine's limits.
    for st, names in SPEC_NAMES.items():
        for p in per_station[st]:
            assert {m["name"] for m in p["measurements"]} == names
            assert all("unit" in m for m in p["measurements"])
    ict = per_station["ST-B-ICT-01"][0]["measurements"]
    assert {(m["name"], m["min"], m["max"], m["judge"]) for m in ict} == {
        ("ICT_VCC_3V3", 3.2, 3.4, "PASS"),
        ("ICT_R1", 9.5, 10.5, "PASS"),
        ("ICT_IDLE_CURRENT", 5.0, 50.0, "PASS"),
    }
    assert all(
        p["testResultId"].startswith(p["stationCode"])
        for st in ("ST-B-SPI-01", "ST-B-ICT-01")
        for p in per_station[st]
    )
    spi_fail = next(e for e in sink.ingests("ST-B-SPI-01") if e.payload["payload"]["result"] == "FAIL")
    assert spi_fail.payload["runNo"] == "RUN-B-0001"
    assert spi_fail.payload["payload"]["measurements"][0]["judge"] == "FAIL"
    (insp,) = [e for e in sink.events if e.kind == "INSPECTION_RESULT"]
    assert sink.events.index(insp) > sink.events.index(spi_fail)
    assert insp.payload["unitSn"] == failed and insp.payload["stepNo"] == 20
    assert insp.payload["inspectionType"] == "SPI" and insp.payload["result"] == "FAIL"
    assert insp.payload["runNo"] == "RUN-B-0001"
    assert insp.payload["defects"] == [{"code": "SPI-INSUFFICIENT", "location": "U3"}]
    assert {e.kind for e in sink.events} == {"INGEST", "INSPECTION_RESULT"}  # no status changed

    # Each unit's events arrive in route order (central applies them in seq order), times are the machines'.
    for sn in good:
        stations = [
            e.station_code
            for e in sink.ingests()
            if sn in (e.payload["payload"].get("sn"), *e.payload["payload"].get("snList", []))
        ]
        assert stations == ROUTE
    by_truth = {truth_key(r): r["occurredAt"] for r in records}
    for e in sink.ingests():
        assert (
            e.occurred_at.isoformat(timespec="milliseconds").replace("+00:00", "Z") == by_truth[record_key(e)]
        )

    # Every event fits the wire contract, ids are unique, and the ground-truth file holds every record.
    ids = [e.event_id for e in sink.events]
    assert len(set(ids)) == len(ids)
    for seq, e in enumerate(sink.events, 1):
        EdgeEvent(
            event_id=e.event_id,
            seq=seq,
            kind=e.kind,
            occurred_at=e.occurred_at,  # type: ignore[arg-type]
            station_code=e.station_code,
            payload=e.payload,
        )
    assert cfg.ground_truth is not None
    lines = [json.loads(x) for x in cfg.ground_truth.read_text("utf-8").splitlines()]
    assert [x for x in lines if x["type"] == "record"] == records
    assert sum(1 for x in lines if x["type"] == "board") == 6


# --- faults ---------------------------------------------------------------------------------------


async def test_faults_show_in_device_states_and_buffered_records_are_caught_up(
    line: tuple[SimLineConfig, SimLine],
) -> None:
    cfg, sim = line
    sink = Sink()
    agent = Agent(edge_config(cfg, sim), sink)
    before = len(sim.records())
    try:
        await agent.connected()
        await sim.stop_device("ST-B-PRINT-01")
        await sim.stop_device("ST-B-ICT-01")
        sim.freeze("ST-B-MOUNT-01")
        await eventually(
            lambda: (
                agent.states()["ST-B-PRINT-01"] == "DISCONNECTED"
                and agent.states()["ST-B-ICT-01"] == "DISCONNECTED"
            )
        )
        status = {d.id: d for d in agent.acq.device_states()}
        assert status["ST-B-PRINT-01"].last_error and status["ST-B-ICT-01"].last_error
        assert agent.states()["ST-B-MOUNT-01"] == "CONNECTED"  # a frozen register looks healthy…

        sim.more(4)
        await asyncio.wait_for(sim.run(), 60)
        records = sim.records()[before:]
        # …but nothing arrives from it, nor from the stopped machines, while the others report.
        assert not sink.ingests("ST-B-PRINT-01") and not sink.ingests("ST-B-MOUNT-01")
        assert not sink.ingests("ST-B-ICT-01") and sink.ingests("ST-B-SPI-01")

        await sim.start_device("ST-B-PRINT-01")
        await sim.start_device("ST-B-ICT-01")
        sim.freeze("ST-B-MOUNT-01", False)
        await agent.connected()
        # The machines kept their records: the agent reads back one event per missed record, no GAP.
        await eventually(lambda: matches_truth(sink, records))
        assert not any(w.startswith("GAP") for w in agent.acq.warnings())

        # Dropped connections are re-established and the next records still arrive.
        assert sim.drop_connections("ST-B-REFLOW-01") >= 1 and sim.drop_connections("ST-B-AOI-01") >= 1
        await sim.alarm("ST-B-SPI-01")
        await sim.alarm("ST-B-PRINT-01")
        await eventually(lambda: len([e for e in sink.events if e.kind == "EQUIPMENT_STATUS"]) == 2)
        downs = {e.station_code: e.payload for e in sink.events if e.kind == "EQUIPMENT_STATUS"}
        assert downs == {"ST-B-SPI-01": {"status": "down"}, "ST-B-PRINT-01": {"status": "down"}}
        await sim.alarm("ST-B-SPI-01", False)
        await sim.alarm("ST-B-PRINT-01", False)
        sim.more(3)
        await asyncio.wait_for(sim.run(), 60)
        await eventually(lambda: matches_truth(sink, sim.records()[before:]))
        await agent.connected()
        ups = [e.payload["status"] for e in sink.events if e.kind == "EQUIPMENT_STATUS"]
        assert sorted(ups) == ["down", "down", "normal", "normal"]
    finally:
        await agent.stop()
    faults = [x["fault"] for x in sim.truth if x["type"] == "fault"]
    assert {"stop_device", "start_device", "freeze", "thaw", "drop_connections", "alarm"} <= set(faults)
    assert set(agent.states().values()) == {"STOPPED"}


async def test_a_full_outbox_holds_events_and_loses_none(line: tuple[SimLineConfig, SimLine]) -> None:
    cfg, sim = line
    sink = Sink()
    agent = Agent(edge_config(cfg, sim), sink)
    before = len(sim.records())
    try:
        await agent.connected()
        sink.full = True
        sim.more(3)
        await asyncio.wait_for(sim.run(), 60)
        await eventually(lambda: agent.acq.held() > 0)
        assert sink.events == [] and sink.refused > 1  # offered again and again, never dropped
        sink.full = False
        records = sim.records()[before:]
        await eventually(lambda: matches_truth(sink, records))
        assert agent.acq.held() == 0
        ids = [e.event_id for e in sink.events]
        assert len(ids) == len(set(ids))
    finally:
        await agent.stop()


async def test_a_restarted_agent_resumes_from_its_saved_state(
    line: tuple[SimLineConfig, SimLine], tmp_path: Path
) -> None:
    cfg, sim = line
    state = tmp_path / "acquisition.json"
    first = Sink()
    agent = Agent(edge_config(cfg, sim), first, state_path=state)
    before = len(sim.records())
    try:
        await agent.connected()
        sim.more(2)
        await asyncio.wait_for(sim.run(), 60)
        await eventually(lambda: matches_truth(first, sim.records()[before:]))
    finally:
        await agent.stop()
    saved = json.loads(state.read_text("utf-8"))["last"]
    assert saved["ST-B-PRINT-01/print-record"] == sim.machine("ST-B-PRINT-01").counter

    # The agent is away while two more boards go through.
    middle = len(sim.records())
    sim.more(2)
    await asyncio.wait_for(sim.run(), 60)
    missed = sim.records()[middle:]

    second = Sink()
    agent = Agent(edge_config(cfg, sim), second, state_path=state)
    try:
        await agent.connected()
        await eventually(lambda: matches_truth(second, missed))
        await asyncio.sleep(0.5)
        assert matches_truth(second, missed)  # nothing it had already stored is sent again
    finally:
        await agent.stop()
