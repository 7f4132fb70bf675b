"""The simulated line: boards flow through the stations at a takt; every record is logged as ground truth.

Each takt every station finishes at most one board (the oven: one lot when full, or when nothing more is
coming) and hands it to the next station's queue; stations are served downstream first, so a board moves one
station per takt. A board that FAILs leaves the line at that station. Every record a machine makes is appended
to `truth` (and to the JSON-lines ground-truth file): reliability tests count central's state against it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

from edge.sim import layout
from edge.sim.config import SimLineConfig, SimStation
from edge.sim.plc import SimPlc
from edge.sim.tester import SimTester

log = logging.getLogger("edge.sim")


@dataclass
class _Station:
    config: SimStation
    machine: SimPlc | SimTester
    queue: deque[str] = field(default_factory=deque)
    lot: list[str] = field(default_factory=list)
    fail_next: int = 0
    lots: int = 0


class SimLine:
    def __init__(self, config: SimLineConfig) -> None:
        self.config = config
        self._rng = random.Random(config.seed)
        self._stations: list[_Station] = []
        for st in config.stations:
            machine: SimPlc | SimTester = SimPlc(st) if st.protocol == "modbus" else SimTester(st)
            self._stations.append(_Station(st, machine))
        self._by_code = {s.config.code: s for s in self._stations}
        self.truth: list[dict[str, Any]] = []
        self._log: TextIO | None = None
        self.fed = 0
        self.finished = 0  # boards that left the line (done or failed)
        self.done_boards: list[str] = []
        self.failed_boards: list[str] = []
        self.ticks = 0
        self.all_done = asyncio.Event()
        self._sn_exhausted = False
        self._target = config.boards

    # --- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the ground-truth log and bring every machine online (testers take a few seconds to build)."""
        if self.config.ground_truth is not None:
            self.config.ground_truth.parent.mkdir(parents=True, exist_ok=True)
            self._log = self.config.ground_truth.open("a", encoding="utf-8")
        await asyncio.gather(*(s.machine.start() for s in self._stations))

    async def close(self) -> None:
        # Together: an OPC UA server takes about a second to stop.
        await asyncio.gather(
            *(
                s.machine.close() if isinstance(s.machine, SimTester) else s.machine.stop()
                for s in self._stations
            )
        )
        if self._log is not None:
            self._log.close()
            self._log = None

    def endpoints(self) -> dict[str, str]:
        """Station code → endpoint (host:port for Modbus, opc.tcp://… for OPC UA)."""
        return {s.config.code: s.machine.endpoint for s in self._stations}

    def machine(self, code: str) -> SimPlc | SimTester:
        return self._station(code).machine

    def _station(self, code: str) -> _Station:
        try:
            return self._by_code[code]
        except KeyError:
            raise KeyError(f"no station {code!r} (stations: {', '.join(self._by_code)})") from None

    @property
    def target(self) -> int:
        return self._target

    def more(self, boards: int) -> None:
        """Produce `boards` more boards (SNs continue where they stopped); `run()` then goes on."""
        if self._target == 0:
            raise ValueError("the line already runs until stopped")
        self._target += boards
        self.all_done.clear()

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Tick at the takt until `stop` is set or the configured number of boards has left the line."""
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while not stop.is_set() and not self.all_done.is_set():
            await self.tick()
            next_at += self.config.takt
            delay = next_at - loop.time()
            if delay > 0:
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                except TimeoutError:
                    pass
            else:
                next_at = loop.time()

    # --- faults -----------------------------------------------------------------------------------

    async def stop_device(self, code: str) -> None:
        """The machine stops answering its clients; it keeps producing (and buffering) records."""
        await self._station(code).machine.stop()
        self._record_fault(code, "stop_device")

    async def start_device(self, code: str) -> None:
        await self._station(code).machine.start()
        self._record_fault(code, "start_device")

    def freeze(self, code: str, on: bool = True) -> None:
        """Freeze the PLC's record counter as its clients see it (a stuck register) — or thaw it."""
        m = self._station(code).machine
        if not isinstance(m, SimPlc):
            raise ValueError(f"{code}: only a PLC has registers to freeze")
        m.freeze_counter(on)
        self._record_fault(code, "freeze" if on else "thaw")

    def drop_connections(self, code: str) -> int:
        n = self._station(code).machine.drop_connections()
        self._record_fault(code, "drop_connections", connections=n)
        return n

    def fail_next(self, code: str, count: int = 1) -> None:
        """The next `count` boards (or lots) at this station FAIL."""
        self._station(code).fail_next += count
        self._record_fault(code, "fail_next", count=count)

    async def alarm(self, code: str, on: bool = True) -> None:
        """Set the machine's status word to ALARM (or back to RUN)."""
        m = self._station(code).machine
        status = layout.STATUS_ALARM if on else layout.STATUS_RUN
        if isinstance(m, SimPlc):
            m.set_status(status)
        else:
            await m.set_status(status)
        self._record_fault(code, "alarm" if on else "alarm_cleared")

    def _record_fault(self, code: str, fault: str, **extra: Any) -> None:
        self._emit({"type": "fault", "station": code, "fault": fault, **extra})

    # --- flow -------------------------------------------------------------------------------------

    def _upstream_idle(self, index: int) -> bool:
        """Nothing can still reach station `index`: all boards fed and every station before it empty."""
        if not self._feed_over():
            return False
        return all(not s.queue and not s.lot for s in self._stations[:index])

    def _feed_over(self) -> bool:
        return self._sn_exhausted or (self.target > 0 and self.fed >= self.target)

    async def tick(self) -> None:
        """One takt: every station (downstream first) finishes what it can, then a new board enters."""
        self.ticks += 1
        last = len(self._stations) - 1
        for i in range(last, -1, -1):
            st = self._stations[i]
            if st.config.kind == "reflow":
                await self._oven(i, st)
                continue
            if not st.queue:
                continue
            sn = st.queue.popleft()
            result = self._judge(st)
            await self._unit_record(st, sn, result)
            self._pass_on(i, [sn], result)
        if not self._feed_over():
            sn = self.config.sn.sn(self.fed)
            if sn is None:
                self._sn_exhausted = True
            else:
                self.fed += 1
                self._stations[0].queue.append(sn)
        if self._feed_over() and self.finished >= self.fed and self.fed > 0:
            self.all_done.set()

    async def _oven(self, i: int, st: _Station) -> None:
        if st.queue:
            st.lot.append(st.queue.popleft())
        full = len(st.lot) >= st.config.lot_size
        if st.lot and (full or (self._upstream_idle(i) and not st.queue)):
            lot, st.lot = st.lot, []
            result = self._judge(st)
            await self._lot_record(st, lot, result)
            self._pass_on(i, lot, result)

    def _judge(self, st: _Station) -> str:
        if st.fail_next > 0:
            st.fail_next -= 1
            return "FAIL"
        if st.config.fail_rate and self._rng.random() < st.config.fail_rate:
            return "FAIL"
        return "PASS"

    def _pass_on(self, i: int, sns: list[str], result: str) -> None:
        if result == "FAIL":
            # A failed board is pulled off the line for repair; it does not reach the next station.
            self.finished += len(sns)
            self.failed_boards += sns
            for sn in sns:
                self._emit(
                    {"type": "board", "sn": sn, "status": "FAILED", "station": self._stations[i].config.code}
                )
            return
        if i + 1 < len(self._stations):
            self._stations[i + 1].queue.extend(sns)
            return
        self.finished += len(sns)
        self.done_boards += sns
        for sn in sns:
            self._emit({"type": "board", "sn": sn, "status": "DONE"})

    def _measure(self, kind: str, result: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for j, m in enumerate(layout.MEASURES[kind]):
            v = self._rng.gauss(m.nominal, m.sigma) if m.sigma else m.nominal
            v = min(max(v, m.low), m.high)
            if result == "FAIL" and j == 0 and kind in ("spi", "ict", "reflow"):
                v = m.high + (m.high - m.low) * 0.1  # the failing measurement, outside its limits
            out[m.name] = round(v, m.decimals)
        return out

    async def _unit_record(self, st: _Station, sn: str, result: str) -> None:
        kind = st.config.kind
        now = datetime.now(UTC)
        meas = self._measure(kind, result)
        m = st.machine
        if isinstance(m, SimPlc):
            n = m.write_record(
                {
                    "sn": sn,
                    "result": layout.RESULT_PASS if result == "PASS" else layout.RESULT_FAIL,
                    "placements": int(meas.get("PLACEMENT_COUNT", 0)),
                    "time": int(now.timestamp() * 1000),
                }
            )
            record_id = None
        else:
            record_id = f"{st.config.code}-{m.count + 1:08d}"
            fields: dict[str, Any] = {
                "SN": sn,
                "Result": result,
                "RecordId": record_id,
                "RunNo": self.config.run_no or "",
                "Time": now,
                "Defects": layout.DEFECTS[kind] if result == "FAIL" else "",
                **{f"M.{k}": float(v) for k, v in meas.items()},
            }
            n = await m.write_record(fields)
        events = ["INGEST"]
        if kind in ("spi", "aoi") and result == "FAIL":
            events.append("INSPECTION_RESULT")
        self._emit(
            {
                "type": "record",
                "station": st.config.code,
                "kind": kind,
                "eventType": layout.INGEST_TYPE[kind],
                "counter": n,
                "sn": sn,
                "result": result,
                "recordId": record_id,
                "occurredAt": _iso(now),
                "measurements": meas,
                "events": events,
            }
        )

    async def _lot_record(self, st: _Station, lot: list[str], result: str) -> None:
        now = datetime.now(UTC)
        st.lots += 1
        carrier = f"CAR-{st.lots:06d}"
        meas = self._measure("reflow", result)
        m = st.machine
        assert isinstance(m, SimPlc)
        values: dict[str, Any] = {
            "carrier": carrier,
            "result": layout.RESULT_PASS if result == "PASS" else layout.RESULT_FAIL,
            "sn_count": len(lot),
            "peak_temp": round(meas["PEAK_TEMP"] / layout.PEAK_TEMP_SCALE),
            "time": int(now.timestamp() * 1000),
            **{f"sn_{k}": sn for k, sn in enumerate(lot)},
        }
        n = m.write_record(values)
        self._emit(
            {
                "type": "record",
                "station": st.config.code,
                "kind": "reflow",
                "eventType": "BATCH",
                "counter": n,
                "carrier": carrier,
                "snList": list(lot),
                "result": result,
                "occurredAt": _iso(now),
                "measurements": meas,
                "events": ["INGEST"],
            }
        )

    def _emit(self, entry: dict[str, Any]) -> None:
        entry = {"t": _iso(datetime.now(UTC)), **entry}
        self.truth.append(entry)
        if self._log is not None:
            self._log.write(json.dumps(entry, separators=(",", ":")) + "\n")
            self._log.flush()

    def summary(self) -> dict[str, Any]:
        """Boards fed, done and failed, and records per station; also appended to the ground truth."""
        per_station: dict[str, int] = {}
        for r in self.records():
            per_station[r["station"]] = per_station.get(r["station"], 0) + 1
        entry = {
            "type": "summary",
            "fed": self.fed,
            "done": len(self.done_boards),
            "failed": len(self.failed_boards),
            "records": per_station,
        }
        self._emit(entry)
        return entry

    def records(self, station: str | None = None) -> list[dict[str, Any]]:
        return [
            e for e in self.truth if e["type"] == "record" and (station is None or e["station"] == station)
        ]


def _iso(t: datetime) -> str:
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")
