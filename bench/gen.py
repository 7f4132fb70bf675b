"""`python -m bench.gen --db URL --tracks 10000000 [--units-per-run 500] [--fresh]`: a large, realistic
production history for P5/P6, written fast by bulk inserts that bypass the ORM.

The history is LINE-B building P-2001 on PCBA-AUTO-V1 (demo-plant.md §4) as the edge agent reports it: per
unit five AUTO/TEST ingest events (print, SPI, mount, AOI, ICT) and, per carrier of ten units, one BATCH
reflow event. Each event leaves the rows the ingest services write (central/services/ingest_unit.py,
ingest_batch.py, central/mqtt/apply.py): the ingest event, the track(s), the data values, the edge receipt,
the audit row; reflow also a carrier track and carrier loads. A unit in 50 fails ICT and is scrapped (defect
CLOSED, disposition SCRAP). Every run is a released work order, an authorized run with its FORMAL readiness
check, COMPLETED, except the last one, still IN_PROGRESS with its last carrier half way. The ids come from the
seeded plant, so trace and ingest read these rows as their own. MES outbox rows (mes_events) are left out:
the outbox worker deletes them after 30 days, so an old history holds none.

Every constraint stays in place. SQLite checks the foreign keys as rows go in (`foreign_keys=ON`); on
PostgreSQL the foreign-key triggers are skipped during the load (they cost three quarters of it) and
`--verify` proves afterwards, one anti-join per foreign key, that no row points nowhere. One transaction per
chunk of runs; a partial database continues where it stopped (its plan is in the `.gen.json` beside it),
`--fresh` starts over.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

VAR = Path(__file__).resolve().parents[1] / "var" / "bench"
EDGE_ID = "edge-line-b"
SOURCE = f"edge:{EDGE_ID}"
CARRIER_SIZE = 10
CARRIERS = 20  # the reflow oven's pool of carriers, used round robin
TAKT_S = 20.0  # one unit leaves the line every 20 s: a year of one line holds ≈1.6 M units
STEP_S = 60.0
FAIL_EVERY = 50  # every 50th unit fails ICT
EVENTS_PER_EDGE_BATCH = 50
PLANNER, QUALITY = "张计划", "王质量"
# stepNo, station, event type, [(spec, nominal, spread, unit)]
STEPS: list[tuple[int, str, str, list[tuple[str, float, float, str]]]] = [
    (10, "ST-B-PRINT-01", "AUTO", []),
    (
        20,
        "ST-B-SPI-01",
        "TEST",
        [("PASTE_HEIGHT", 140, 20, "um"), ("PASTE_AREA", 100, 15, "%"), ("PASTE_VOLUME", 100, 15, "%")],
    ),
    (30, "ST-B-MOUNT-01", "AUTO", [("PLACEMENT_COUNT", 312, 0, "pcs")]),
    (40, "ST-B-REFLOW-01", "BATCH", [("PEAK_TEMP", 243, 3, "C")]),
    (50, "ST-B-AOI-01", "TEST", []),
    (
        60,
        "ST-B-ICT-01",
        "TEST",
        [("ICT_VCC_3V3", 3.3, 0.05, "V"), ("ICT_R1", 10.0, 0.3, "kOhm"), ("ICT_IDLE_CURRENT", 20, 10, "mA")],
    ),
]
REFLOW = 3  # index of the BATCH step in STEPS

# Column order of every table written (ids explicit, so rows can point at rows of the same chunk).
COLUMNS: dict[str, tuple[str, ...]] = {
    "carriers": ("id", "carrier_no", "type", "status", "meta", "created_at", "updated_at"),
    "work_orders": (
        "id", "wo_no", "product_code", "planned_qty", "routing_id", "status", "source_system", "meta",
        "created_at", "updated_at",
    ),
    "runs": (
        "id", "run_no", "wo_id", "line_id", "route_version_id", "plan_qty", "status", "started_at",
        "ended_at",
        "authorization_type", "mrb_fai_waiver", "authorized_by", "authorized_at", "meta", "created_at",
        "updated_at",
    ),
    "readiness_checks": (
        "id", "run_id", "type", "status", "checked_at", "checked_by", "meta", "created_at", "updated_at",
    ),
    "units": ("id", "sn", "wo_id", "run_id", "status", "current_step_no", "meta", "created_at", "updated_at"),
    "ingest_events": (
        "id", "source_system", "dedupe_key", "event_type", "occurred_at", "received_at", "run_id", "unit_id",
        "station_id", "line_id", "carrier_id", "sn", "sn_list", "result", "test_result_id", "payload",
        "normalized", "meta", "created_at", "updated_at",
    ),
    "carrier_tracks": (
        "id", "carrier_id", "run_id", "step_no", "station_id", "source", "in_at", "out_at", "result", "meta",
        "created_at", "updated_at",
    ),
    "tracks": (
        "id", "unit_id", "step_no", "station_id", "source", "in_at", "out_at", "result", "meta", "created_at",
        "updated_at",
    ),
    "carrier_loads": (
        "id", "carrier_id", "unit_id", "loaded_at", "unloaded_at", "meta", "created_at", "updated_at",
    ),
    "data_values": (
        "id", "spec_id", "track_id", "carrier_track_id", "value_number", "value_json", "judge", "alarmed",
        "source", "collected_at", "created_at", "updated_at",
    ),
    "defects": (
        "id", "unit_id", "track_id", "code", "qty", "status", "recorded_by", "meta", "created_at",
        "updated_at",
    ),
    "dispositions": (
        "id", "defect_id", "type", "reason", "decided_by", "decided_at", "meta", "created_at", "updated_at",
    ),
    "edge_event_receipts": (
        "id", "edge_id", "event_id", "seq", "kind", "batch_id", "occurred_at", "applied_at", "result",
    ),
    "audit_events": (
        "id", "occurred_at", "entity_type", "entity_id", "entity_display", "action", "actor_id", "actor_name",
        "actor_role", "actor_type", "status", "diff", "payload", "trace_id", "station_id",
    ),
}  # fmt: skip
TABLES = tuple(COLUMNS)  # insert order: parents first


@dataclass
class Plan:
    """What a database holds when generation completes; kept beside it so a partial run can continue."""

    tracks: int
    units_per_run: int
    t0_us: int  # the first unit's start, µs since the epoch (UTC)
    revision: str
    runs_done: int = 0
    complete: bool = False
    rows: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    dropped_indexes: list[str] = field(default_factory=list)  # PostgreSQL: CREATE INDEX … to run at the end

    @property
    def units(self) -> int:
        return -(-self.tracks // len(STEPS))

    @property
    def runs(self) -> int:
        return -(-self.units // self.units_per_run)


@dataclass
class PlantIds:
    line_id: int
    routing_id: int
    route_version_id: int
    stations: dict[str, int]
    specs: dict[str, int]
    edge_user_id: int


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    from central.db.migrate import alembic_config

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def plan_path(db_url: str) -> Path:
    url = make_url(db_url)
    if url.get_backend_name() == "sqlite":
        return Path(f"{url.database}.gen.json")
    return VAR / f"pg-{url.database}.gen.json"


def read_plan(db_url: str) -> Plan | None:
    p = plan_path(db_url)
    return Plan(**json.loads(p.read_text())) if p.exists() else None


def write_plan(db_url: str, plan: Plan) -> None:
    p = plan_path(db_url)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(asdict(plan), indent=1))


# ---- the rows ---------------------------------------------------------------------------------------------


def _uuid(rng: random.Random) -> str:
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{h[16:20]}-{h[20:]}"


def _num(v: float) -> str:
    return repr(float(v))


class History:
    """Builds the rows of a range of runs. `ts` turns µs since the epoch into the backend's datetime value;
    JSON is written as the services' json.dumps would (these strings are the hot path: no json.dumps)."""

    def __init__(self, plan: Plan, ids: PlantIds, next_ids: dict[str, int], ts: Callable[[int], Any]):
        self.plan, self.ids, self.next, self.ts = plan, ids, next_ids, ts
        self.seq = next_ids.pop("_seq", 1)
        self.carrier_ids: list[int] = []
        self.end_us = plan.t0_us + int((plan.units + 100) * TAKT_S * 1e6)

    def _id(self, table: str) -> int:
        i = self.next[table]
        self.next[table] = i + 1
        return i

    def runs(self, first: int, last: int) -> dict[str, list[tuple[Any, ...]]]:
        rows: dict[str, list[tuple[Any, ...]]] = {t: [] for t in TABLES}
        for r in range(first, last):
            self._run(r, rows)
        return rows

    def _run(self, r: int, rows: dict[str, list[tuple[Any, ...]]]) -> None:
        plan, ids, ts = self.plan, self.ids, self.ts
        rng = random.Random(r)
        g0 = r * plan.units_per_run
        n = min(plan.units_per_run, plan.units - g0)
        final = r == plan.runs - 1
        u0 = plan.t0_us + int(g0 * TAKT_S * 1e6)
        start = u0
        end = u0 + int(((n - 1) * TAKT_S + 6 * STEP_S + CARRIER_SIZE * TAKT_S) * 1e6)
        wo_id, run_id, rc_id = self._id("work_orders"), self._id("runs"), self._id("readiness_checks")
        wo_no, run_no = f"WO-GEN-{r + 1:06d}", f"RUN-GEN-{r + 1:06d}"
        status = "IN_PROGRESS" if final else "COMPLETED"
        released = ts(start - 86_400_000_000)
        dispatch = (
            f'{{"dispatch": {{"lineId": {ids.line_id}, "lineCode": "LINE-B", "stationGroupId": null, '
            f'"stationGroupCode": null, "dispatchedAt": "{_iso(start - 86_400_000_000)}"}}}}'
        )
        rows["work_orders"].append(
            (wo_id, wo_no, "P-2001", float(n), ids.routing_id, status, "MES", dispatch, released,
             ts(end) if not final else ts(start))
        )  # fmt: skip
        authorized = ts(start - 600_000_000)
        rows["runs"].append(
            (run_id, run_no, wo_id, ids.line_id, ids.route_version_id, n, status, ts(start),
             None if final else ts(end), "NORMAL", False, PLANNER, authorized, "{}", released,
             ts(start) if final else ts(end))
        )  # fmt: skip
        checked = ts(start - 900_000_000)
        rows["readiness_checks"].append(
            (rc_id, run_id, "FORMAL", "PASSED", checked, QUALITY, "{}", checked, checked)
        )
        for c0 in range(0, n, CARRIER_SIZE):
            half_way = final and c0 + CARRIER_SIZE >= n
            self._carrier(rng, r, run_id, run_no, wo_id, g0, c0, min(CARRIER_SIZE, n - c0), half_way, rows)

    def _carrier(
        self,
        rng: random.Random,
        r: int,
        run_id: int,
        run_no: str,
        wo_id: int,
        g0: int,
        c0: int,
        size: int,
        half_way: bool,
        rows: dict[str, list[tuple[Any, ...]]],
    ) -> None:
        """`size` units of one run that share a carrier through reflow; `half_way`: they are not there yet."""
        plan, ts = self.plan, self.ts
        units: list[tuple[int, str, int]] = []  # (unit id, sn, start µs)
        for i in range(c0, c0 + size):
            g = g0 + i
            units.append(
                (self._id("units"), f"GEN{r + 1:06d}-{i + 1:04d}", plan.t0_us + int(g * TAKT_S * 1e6))
            )
        last_start = units[-1][2]
        reflow_at = last_start + int(3 * STEP_S * 1e6)
        # Steps before reflow, per unit.
        for uid, sn, u0 in units:
            for k in range(REFLOW):
                self._unit_event(rng, run_id, run_no, uid, sn, k, u0 + int(k * STEP_S * 1e6), False, rows)
        if half_way:
            for uid, sn, u0 in units:
                rows["units"].append(
                    (uid, sn, wo_id, run_id, "QUEUED", STEPS[REFLOW][0], "{}", ts(u0), ts(u0))
                )
            return
        self._reflow(rng, run_id, run_no, units, reflow_at, rows)
        for j, (uid, sn, u0) in enumerate(units):
            failed = (g0 + c0 + j) % FAIL_EVERY == FAIL_EVERY - 1
            at = reflow_at + int((STEP_S + 2 * j) * 1e6)
            self._unit_event(rng, run_id, run_no, uid, sn, REFLOW + 1, at, False, rows)
            done = at + int(STEP_S * 1e6)
            track_id, ev_id = self._unit_event(rng, run_id, run_no, uid, sn, REFLOW + 2, done, failed, rows)
            if failed:
                self._scrap(uid, sn, track_id, ev_id, done, rows)
            rows["units"].append(
                (
                    uid,
                    sn,
                    wo_id,
                    run_id,
                    "SCRAPPED" if failed else "DONE",
                    STEPS[-1][0],
                    "{}",
                    ts(u0),
                    ts(done),
                )
            )

    def _measurements(self, rng: random.Random, k: int) -> list[tuple[str, str, str]]:
        """[(spec name, value JSON, unit)] of step k; all within limits."""
        return [
            (name, _num(round(nominal + rng.uniform(-spread, spread), 3)) if spread else _num(nominal), unit)
            for name, nominal, spread, unit in STEPS[k][3]
        ]

    def _unit_event(
        self,
        rng: random.Random,
        run_id: int,
        run_no: str,
        uid: int,
        sn: str,
        k: int,
        at_us: int,
        failed: bool,
        rows: dict[str, list[tuple[Any, ...]]],
    ) -> tuple[int, int]:
        """One AUTO/TEST event: ingest event, track, data values, receipt, audit. → (track id, event id)."""
        ts, ids = self.ts, self.ids
        step_no, station, etype, _ = STEPS[k]
        st_id = ids.stations[station]
        ev_id, tr_id = self._id("ingest_events"), self._id("tracks")
        event_id = _uuid(rng)
        result = "FAIL" if failed else "PASS"
        at, received = ts(at_us), ts(at_us + 40_000)
        ms = self._measurements(rng, k)
        test_id = f'"{station[5:-3]}-{sn}"' if etype == "TEST" else None
        items = ", ".join(
            f'{{"name": "{m}", "value": {v}, "unit": "{u}", "judge": "PASS"}}' for m, v, u in ms
        )
        norm_items = ", ".join(
            f'{{"name": "{m}", "specName": "{m}", "value": {v}, "unit": "{u}", "judge": "PASS"}}'
            for m, v, u in ms
        )
        tid = f', "testResultId": {test_id}' if test_id else ""
        payload = (
            f'{{"stationCode": "{station}", "sn": "{sn}", "result": "{result}"{tid}, '
            f'"measurements": [{items}]}}'
        )
        normalized = (
            f'{{"occurredAt": null, "stationCode": "{station}", "lineCode": null, "sn": "{sn}", '
            f'"snList": null, '
            f'"carrierCode": null, "testResultId": {test_id or "null"}, "result": "{result}", '
            f'"measurements": [{norm_items}], "batchPolicy": "ALL_OR_NOTHING"}}'
        )
        names = ", ".join(f'"{m}"' for m in sorted(m for m, _, _ in ms))
        meta = (
            f'{{"trackSource": "{etype}", "trackId": {tr_id}, "measurementSummary": {{"count": {len(ms)}, '
            f'"matched": {len(ms)}, "unmatched": [], "specNames": [{names}]}}}}'
        )
        rows["ingest_events"].append(
            (ev_id, SOURCE, event_id, etype, at, received, run_id, uid, st_id, ids.line_id, None, sn, None,
             result, test_id and test_id[1:-1], payload, normalized, meta, received, received)
        )  # fmt: skip
        rows["tracks"].append(
            (
                tr_id,
                uid,
                step_no,
                st_id,
                etype,
                at,
                at,
                result,
                f'{{"ingestEventId": {ev_id}}}',
                received,
                received,
            )
        )
        for m, v, _ in ms:
            rows["data_values"].append(
                (self._id("data_values"), ids.specs[m], tr_id, None, float(v), "null", "PASS", False, etype,
                 at,
                 received, received)
            )  # fmt: skip
        # The audit diff of uow.audit(before, after), ordered by path as it writes it.
        track = f'{{"op": "add", "path": "/trackId", "before": null, "after": {tr_id}}}'
        if k == len(STEPS) - 1:
            unit = "OUT_FAILED" if failed else "DONE"
            moves = (
                f'{track}, {{"op": "replace", "path": "/unitStatus", "before": "QUEUED", "after": "{unit}"}}'
            )
        else:
            step = f'{{"op": "replace", "path": "/stepNo", "before": {step_no}, "after": {STEPS[k + 1][0]}}}'
            moves = f"{step}, {track}"
        diff = (
            f'[{{"op": "add", "path": "/eventType", "before": null, "after": "{etype}"}}, '
            f'{{"op": "add", "path": "/result", "before": null, "after": "{result}"}}, '
            f'{{"op": "add", "path": "/runNo", "before": null, "after": "{run_no}"}}, '
            f'{{"op": "add", "path": "/sn", "before": null, "after": "{sn}"}}, {moves}]'
        )
        self._receipt_and_audit(ev_id, event_id, at_us, diff, st_id, rows)
        return tr_id, ev_id

    def _reflow(
        self,
        rng: random.Random,
        run_id: int,
        run_no: str,
        units: list[tuple[int, str, int]],
        at_us: int,
        rows: dict[str, list[tuple[Any, ...]]],
    ) -> None:
        """One BATCH event: a carrier of units through the oven (ingest_batch.apply)."""
        ts, ids = self.ts, self.ids
        step_no, station, _, _ = STEPS[REFLOW]
        st_id = ids.stations[station]
        ev_id, ct_id = self._id("ingest_events"), self._id("carrier_tracks")
        slot = self.seq // EVENTS_PER_EDGE_BATCH  # any spread over the pool will do
        carrier_id = self.carrier_ids[(ev_id + slot) % len(self.carrier_ids)]
        carrier_no = f"CAR-B-{self.carrier_ids.index(carrier_id) + 1:02d}"
        event_id = _uuid(rng)
        at, received = ts(at_us), ts(at_us + 60_000)
        ms = self._measurements(rng, REFLOW)
        sns = ", ".join(f'"{sn}"' for _, sn, _ in units)
        m, v, u = ms[0]
        payload = (
            f'{{"stationCode": "{station}", "carrierCode": "{carrier_no}", "snList": [{sns}], '
            f'"result": "PASS", '
            f'"measurements": [{{"name": "{m}", "value": {v}, "unit": "{u}", "judge": "PASS"}}]}}'
        )
        normalized = (
            f'{{"occurredAt": null, "stationCode": "{station}", "lineCode": null, "sn": null, '
            f'"snList": [{sns}], '
            f'"carrierCode": "{carrier_no}", "testResultId": null, "result": "PASS", '
            f'"measurements": [{{"name": '
            f'"{m}", "specName": "{m}", "value": {v}, "unit": "{u}", "judge": "PASS"}}], '
            f'"batchPolicy": "ALL_OR_NOTHING"}}'
        )
        track_ids = [self._id("tracks") for _ in units]
        unit_tracks = ", ".join(f'"{sn}": "{t}"' for (_, sn, _), t in zip(units, track_ids, strict=True))
        meta = (
            f'{{"trackSource": "BATCH", "links": {{"carrierId": "{carrier_id}", "carrierTrackId": "{ct_id}", '
            f'"unitTracks": {{{unit_tracks}}}, "carrierDataValueCount": 1}}, "batch": {{"policy": '
            f'"ALL_OR_NOTHING", "carrierNo": "{carrier_no}", "stepNo": {step_no}, '
            f'"stationCode": "{station}", '
            f'"unitCount": {len(units)}, "unitStatus": "QUEUED"}}, "measurementSummary": {{"count": 1, '
            f'"matched": 1, "unmatched": [], "specNames": ["{m}"]}}}}'
        )
        rows["ingest_events"].append(
            (ev_id, SOURCE, event_id, "BATCH", at, received, run_id, None, st_id, ids.line_id, carrier_id,
             None,
             f"[{sns}]", "PASS", None, payload, normalized, meta, received, received)
        )  # fmt: skip
        rows["carrier_tracks"].append(
            (ct_id, carrier_id, run_id, step_no, st_id, "BATCH", at, at, "PASS",
             f'{{"ingestEventId": {ev_id}}}', received, received)
        )  # fmt: skip
        rows["data_values"].append(
            (self._id("data_values"), ids.specs[m], None, ct_id, float(v), "null", "PASS", False, "BATCH", at,
             received, received)
        )  # fmt: skip
        # The carrier's next batch (a pool round later) ends these loads; the latest ones are still open.
        unloaded_us = at_us + int(CARRIERS * CARRIER_SIZE * TAKT_S * 1e6)
        unloaded = (
            ts(unloaded_us)
            if unloaded_us < self.end_us - int(CARRIERS * CARRIER_SIZE * TAKT_S * 1e6)
            else None
        )
        track_meta = f'{{"ingestEventId": {ev_id}, "carrierTrackId": {ct_id}, "carrierNo": "{carrier_no}"}}'
        for (uid, _, _), t in zip(units, track_ids, strict=True):
            rows["tracks"].append(
                (t, uid, step_no, st_id, "BATCH", at, at, "PASS", track_meta, received, received)
            )
            rows["carrier_loads"].append(
                (
                    self._id("carrier_loads"),
                    carrier_id,
                    uid,
                    at,
                    unloaded,
                    "{}",
                    received,
                    unloaded or received,
                )
            )
        diff = (
            f'[{{"op": "add", "path": "/carrierNo", "before": null, "after": "{carrier_no}"}}, '
            f'{{"op": "add", "path": "/carrierTrackId", "before": null, "after": {ct_id}}}, '
            f'{{"op": "add", "path": "/eventType", "before": null, "after": "BATCH"}}, '
            f'{{"op": "add", "path": "/result", "before": null, "after": "PASS"}}, '
            f'{{"op": "add", "path": "/runNo", "before": null, "after": "{run_no}"}}, '
            f'{{"op": "add", "path": "/snList", "before": null, "after": [{sns}]}}, '
            f'{{"op": "add", "path": "/unitStatus", "before": null, "after": "QUEUED"}}]'
        )
        self._receipt_and_audit(ev_id, event_id, at_us, diff, st_id, rows)

    def _receipt_and_audit(
        self,
        ev_id: int,
        event_id: str,
        at_us: int,
        diff: str,
        st_id: int,
        rows: dict[str, list[tuple[Any, ...]]],
    ) -> None:
        seq = self.seq
        self.seq += 1
        batch_id = f"{EDGE_ID}-b{seq // EVENTS_PER_EDGE_BATCH:09d}"
        applied = self.ts(at_us + 90_000)
        rows["edge_event_receipts"].append(
            (self._id("edge_event_receipts"), EDGE_ID, event_id, seq, "INGEST", batch_id, self.ts(at_us),
             applied,
             f'{{"event_id": {ev_id}, "duplicate": false, "status": "RECEIVED"}}')
        )  # fmt: skip
        rows["audit_events"].append(
            (self._id("audit_events"), applied, "INTEGRATION", str(ev_id), f"{SOURCE}:{event_id}",
             "INGEST_EVENT_CREATE", self.ids.edge_user_id, SOURCE, "edge-agent", "SYSTEM", "SUCCESS", diff,
             "null", batch_id, st_id)
        )  # fmt: skip

    def _scrap(
        self, uid: int, sn: str, track_id: int, ev_id: int, at_us: int, rows: dict[str, list[tuple[Any, ...]]]
    ) -> None:
        """The ICT FAIL defect (ingest_unit.apply) and the quality engineer's SCRAP an hour later."""
        d_id = self._id("defects")
        at, decided = self.ts(at_us), self.ts(at_us + 3_600_000_000)
        rows["defects"].append(
            (d_id, uid, track_id, "STATION_FAIL", 1, "CLOSED", f"ingest:{SOURCE}",
             f'{{"ingestEventId": {ev_id}, "testResultId": "ICT-{sn}"}}', at, decided)
        )  # fmt: skip
        rows["dispositions"].append(
            (self._id("dispositions"), d_id, "SCRAP", "ICT fail", QUALITY, decided, "{}", decided, decided)
        )


def _iso(us: int) -> str:
    return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)).isoformat(timespec="milliseconds")[
        :-6
    ] + "Z"


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_NAIVE = datetime(1970, 1, 1)


def pg_ts(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def sqlite_ts(us: int) -> str:
    # SQLAlchemy's SQLite DATETIME text: naive UTC, always with microseconds.
    return (_EPOCH_NAIVE + timedelta(microseconds=us)).isoformat(" ", "microseconds")


# ---- the databases ----------------------------------------------------------------------------------------


async def prepare(db_url: str, fresh: bool) -> None:
    """Create (or, `fresh`, recreate) the database, migrate it to head and seed the demo plant if empty."""
    from sqlalchemy import func, select

    from central.config import Settings
    from central.db.engine import create_database
    from central.db.migrate import upgrade
    from central.db.models import Line
    from central.services.demo_seed import seed_demo
    from central.services.uow import UnitOfWork

    url = make_url(db_url)
    if url.get_backend_name() == "sqlite":
        path = Path(str(url.database))
        if fresh:
            for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), plan_path(db_url)):
                p.unlink(missing_ok=True)
    else:
        from bench.common import pg_admin

        name = url.database
        if fresh:
            await pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            plan_path(db_url).unlink(missing_ok=True)
        if not await pg_exists(str(name)):
            await pg_admin(f'CREATE DATABASE "{name}"')
    db = create_database(db_url)
    try:
        await upgrade(db.engine)
        async with UnitOfWork(db.writer) as uow:
            if not await uow.session.scalar(select(func.count()).select_from(Line)):
                await seed_demo(uow, Settings(database_url=db_url, allow_demo_seed=True))
    finally:
        await db.dispose()


async def pg_exists(name: str) -> bool:
    import asyncpg

    from bench.common import PG_HOST, PG_PORT, PG_USER

    conn = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database="postgres")
    try:
        return bool(await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name))
    finally:
        await conn.close()


_PLANT_SQL = {
    "line": "SELECT id FROM lines WHERE code = 'LINE-B'",
    "routing": "SELECT id FROM routings WHERE code = 'PCBA-AUTO-V1'",
    "version": "SELECT id FROM executable_route_versions WHERE routing_id = {routing} AND status = 'READY'"
    " ORDER BY version_no DESC LIMIT 1",
    "edge_user": f"SELECT user_id FROM edge_agents WHERE edge_id = '{EDGE_ID}'",
    "stations": "SELECT code, id FROM stations",
    "specs": "SELECT name, id FROM data_collection_specs",
}


class Writer:
    """Bulk insert into one backend: `begin`, `insert` per table, `commit`."""

    ts: Callable[[int], Any]

    async def fetch(self, sql: str) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    async def insert(self, table: str, rows: list[tuple[Any, ...]]) -> None:
        raise NotImplementedError

    async def chunk(self, rows: dict[str, list[tuple[Any, ...]]]) -> None:
        raise NotImplementedError

    async def finish(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def plant(self) -> PlantIds:
        one = lambda rows: int(rows[0][0])  # noqa: E731
        routing = one(await self.fetch(_PLANT_SQL["routing"]))
        return PlantIds(
            line_id=one(await self.fetch(_PLANT_SQL["line"])),
            routing_id=routing,
            route_version_id=one(await self.fetch(_PLANT_SQL["version"].format(routing=routing))),
            stations={c: int(i) for c, i in await self.fetch(_PLANT_SQL["stations"])},
            specs={n: int(i) for n, i in await self.fetch(_PLANT_SQL["specs"])},
            edge_user_id=one(await self.fetch(_PLANT_SQL["edge_user"])),
        )

    async def next_ids(self) -> dict[str, int]:
        out = {t: int((await self.fetch(f"SELECT COALESCE(MAX(id), 0) FROM {t}"))[0][0]) + 1 for t in TABLES}
        out["_seq"] = (
            int(
                (
                    await self.fetch(
                        f"SELECT COALESCE(MAX(seq), 0) FROM edge_event_receipts WHERE edge_id = '{EDGE_ID}'"
                    )
                )[0][0]
            )
            + 1
        )
        return out

    async def carriers(self, next_ids: dict[str, int], at: Any) -> list[int]:
        """The oven's carrier pool, created once (as ingest_batch._carrier does on first use)."""
        have = dict(await self.fetch("SELECT carrier_no, id FROM carriers WHERE carrier_no LIKE 'CAR-B-%'"))
        new = []
        for i in range(1, CARRIERS + 1):
            no = f"CAR-B-{i:02d}"
            if no not in have:
                have[no] = next_ids["carriers"]
                next_ids["carriers"] += 1
                new.append((have[no], no, None, "IDLE", "{}", at, at))
        if new:
            await self.chunk({"carriers": new})
        return [int(have[f"CAR-B-{i:02d}"]) for i in range(1, CARRIERS + 1)]


class SqliteWriter(Writer):
    def __init__(self, path: str):
        self.ts = sqlite_ts
        self.conn = sqlite3.connect(path, isolation_level=None)
        # Durability is pointless while a generator can simply start again: no fsync, big cache.
        for pragma in ("journal_mode=WAL", "synchronous=OFF", "foreign_keys=ON", "cache_size=-1000000"):
            self.conn.execute(f"PRAGMA {pragma}")

    async def fetch(self, sql: str) -> list[tuple[Any, ...]]:
        return self.conn.execute(sql).fetchall()

    async def chunk(self, rows: dict[str, list[tuple[Any, ...]]]) -> None:
        self.conn.execute("BEGIN")
        for table in TABLES:
            if rows.get(table):
                cols = COLUMNS[table]
                sql = f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
                self.conn.executemany(sql, rows[table])
        self.conn.execute("COMMIT")

    async def finish(self) -> None:
        # No ANALYZE: central never runs one, so the planner sees what it would see in production.
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    async def close(self) -> None:
        self.conn.close()


_PG_PLAIN_INDEXES = """
SELECT i.indexname, i.indexdef FROM pg_indexes i
WHERE i.schemaname = 'public' AND i.tablename = ANY($1::text[])
  AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname)
"""


class PgWriter(Writer):
    """COPY into the tables. Their plain (non-constraint) indexes are dropped for the load and built again
    from their own definitions at the end: a sorted build is several times cheaper than 50 M inserts into
    40 B-trees. Primary keys and unique constraints stay, so duplicates are refused as they arrive."""

    def __init__(self) -> None:
        self.ts = pg_ts

    async def open(self, db_url: str) -> PgWriter:
        import asyncpg

        url = make_url(db_url)
        self.conn = await asyncpg.connect(
            host=url.host, port=url.port or 5432, user=url.username, database=url.database
        )
        await self.conn.execute("SET synchronous_commit = off")
        return self

    async def fetch(self, sql: str) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in await self.conn.fetch(sql)]

    async def chunk(self, rows: dict[str, list[tuple[Any, ...]]]) -> None:
        async with self.conn.transaction():
            # Foreign-key triggers off for these rows (module docstring); `verify_foreign_keys` checks them.
            await self.conn.execute("SET LOCAL session_replication_role = replica")
            for table in TABLES:
                if rows.get(table):
                    await self.conn.copy_records_to_table(
                        table, records=rows[table], columns=list(COLUMNS[table])
                    )

    async def drop_indexes(self, plan: Plan) -> None:
        rows = await self.conn.fetch(_PG_PLAIN_INDEXES, list(TABLES))
        plan.dropped_indexes += [r["indexdef"] for r in rows]
        for r in rows:
            await self.conn.execute(f'DROP INDEX "{r["indexname"]}"')

    async def build_indexes(self, plan: Plan) -> None:
        await self.conn.execute("SET maintenance_work_mem = '512MB'")
        for ddl in plan.dropped_indexes:
            await self.conn.execute(ddl)
        plan.dropped_indexes = []

    async def finish(self) -> None:
        for table in TABLES:
            await self.conn.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT MAX(id) FROM {table}))"
            )
        await self.conn.execute("ANALYZE")  # what autovacuum would have done over a year of history

    async def close(self) -> None:
        await self.conn.close()


async def open_writer(db_url: str) -> Writer:
    url = make_url(db_url)
    if url.get_backend_name() == "sqlite":
        return SqliteWriter(str(url.database))
    return await PgWriter().open(db_url)


def _chunks(first: int, last: int, size: int) -> Iterator[tuple[int, int]]:
    for a in range(first, last, size):
        yield a, min(a + size, last)


async def generate(
    db_url: str,
    tracks: int,
    units_per_run: int = 500,
    *,
    fresh: bool = False,
    progress: Callable[[str], None] | None = None,
) -> Plan:
    """Fill `db_url` with a history of about `tracks` tracks (whole units of six steps). Continues a
    partial database generated with the same parameters and schema; starts over otherwise or when `fresh`."""
    revision = head_revision()
    old = read_plan(db_url)
    same = old is not None and (old.tracks, old.units_per_run, old.revision) == (
        tracks,
        units_per_run,
        revision,
    )
    if old is None or not same:
        fresh = True  # without its plan a partial history cannot be continued
    if same and old is not None and old.complete and not fresh:
        return old
    await prepare(db_url, fresh)
    if fresh or old is None:
        units = -(-tracks // len(STEPS))
        now_us = int(time.time() * 1e6)
        # The history ends an hour ago (the last unit, plus its route and a margin).
        t0 = now_us - 3_600_000_000 - int((units * TAKT_S + 6 * STEP_S + 600) * 1e6)
        plan = Plan(tracks=tracks, units_per_run=units_per_run, t0_us=t0, revision=revision)
    else:
        plan = old
    write_plan(db_url, plan)
    writer = await open_writer(db_url)
    try:
        if isinstance(writer, PgWriter) and not plan.dropped_indexes:
            await writer.drop_indexes(plan)
            write_plan(db_url, plan)  # a crash from here on still knows which indexes to build again
        ids = await writer.plant()
        next_ids = await writer.next_ids()
        carrier_ids = await writer.carriers(next_ids, writer.ts(plan.t0_us))
        hist = History(plan, ids, next_ids, writer.ts)
        hist.carrier_ids = carrier_ids
        t0 = time.perf_counter()
        written = 0
        runs_per_chunk = max(1, 20_000 // units_per_run)
        for a, b in _chunks(plan.runs_done, plan.runs, runs_per_chunk):
            rows = hist.runs(a, b)
            await writer.chunk(rows)
            for t, rs in rows.items():
                plan.rows[t] = plan.rows.get(t, 0) + len(rs)
                written += len(rs)
            plan.runs_done = b
            plan.seconds += time.perf_counter() - t0
            t0 = time.perf_counter()
            write_plan(db_url, plan)
            if progress:
                rate = plan.rows.get("tracks", 0) / plan.seconds if plan.seconds else 0
                progress(
                    f"runs {b}/{plan.runs}: {plan.rows.get('tracks', 0):,} tracks, "
                    f"{sum(plan.rows.values()):,} rows, {rate:,.0f} tracks/s"
                )
        t0 = time.perf_counter()
        if isinstance(writer, PgWriter):
            await writer.build_indexes(plan)
            if progress:
                progress(f"indexes built in {time.perf_counter() - t0:.1f} s")
        await writer.finish()
        plan.seconds += time.perf_counter() - t0
        await _count_edge_events(writer, plan)
        plan.complete = True
        write_plan(db_url, plan)
        return plan
    finally:
        await writer.close()


async def _count_edge_events(writer: Writer, plan: Plan) -> None:
    """The edge agent's counters, as the applier keeps them."""
    n = (await writer.fetch(f"SELECT COUNT(*) FROM edge_event_receipts WHERE edge_id = '{EDGE_ID}'"))[0][0]
    if isinstance(writer, SqliteWriter):
        writer.conn.execute(f"UPDATE edge_agents SET events_accepted = {int(n)} WHERE edge_id = '{EDGE_ID}'")
    elif isinstance(writer, PgWriter):
        await writer.conn.execute(
            f"UPDATE edge_agents SET events_accepted = {int(n)} WHERE edge_id = '{EDGE_ID}'"
        )


# ---- the cache the benchmarks use -------------------------------------------------------------------------


def cached_url(backend: str, tracks: int) -> str:
    """Where the benchmarks keep the generated history of `tracks` tracks: PostgreSQL database
    `mes_bench_gen_<tracks>`, or the SQLite file var/bench/gen-<tracks>.db."""
    from bench.common import pg_url

    if backend == "postgresql":
        return pg_url(f"mes_bench_gen_{tracks}")
    return f"sqlite+aiosqlite:///{VAR / f'gen-{tracks}.db'}"


async def is_ready(db_url: str, tracks: int) -> bool:
    """Complete, same size, same schema revision, and (PostgreSQL) still there."""
    plan = read_plan(db_url)
    if plan is None or not plan.complete or plan.tracks != tracks or plan.revision != head_revision():
        return False
    url = make_url(db_url)
    if url.get_backend_name() == "sqlite":
        return Path(str(url.database)).exists()  # noqa: ASYNC240 (one stat)
    return await pg_exists(str(url.database))


async def ensure(db_url: str, tracks: int, progress: Callable[[str], None] | None = None) -> Plan:
    """The generated database, made (again) when missing, partial or of another schema revision."""
    if await is_ready(db_url, tracks):
        plan = read_plan(db_url)
        assert plan is not None
        return plan
    plan = read_plan(db_url)
    stale = plan is not None and (plan.complete or plan.revision != head_revision())
    return await generate(db_url, tracks, fresh=stale, progress=progress)


def sample_sns(plan: Plan, n: int, seed: int = 7) -> list[str]:
    """`n` serial numbers spread uniformly over the whole history (every run, every unit position)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        g = rng.randrange(plan.units)
        r, i = divmod(g, plan.units_per_run)
        out.append(f"GEN{r + 1:06d}-{i + 1:04d}")
    return out


_PG_FKS = """
SELECT c.conrelid::regclass::text, a.attname, c.confrelid::regclass::text
FROM pg_constraint c JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
WHERE c.contype = 'f' AND c.conrelid::regclass::text = ANY($1::text[])
"""


async def verify_foreign_keys(db_url: str) -> int:
    """Rows of the generated tables whose foreign key points at no row (0 = all valid). → that count."""
    writer = await open_writer(db_url)
    try:
        if isinstance(writer, PgWriter):
            fks = [tuple(r) for r in await writer.conn.fetch(_PG_FKS, list(TABLES))]
        else:
            fks = [
                (t, str(r[3]), str(r[2]))
                for t in TABLES
                for r in await writer.fetch(f"PRAGMA foreign_key_list({t})")
            ]
        bad = 0
        for table, col, parent in fks:
            sql = (
                f"SELECT COUNT(*) FROM {table} c WHERE c.{col} IS NOT NULL"
                f" AND NOT EXISTS (SELECT 1 FROM {parent} p WHERE p.id = c.{col})"
            )
            bad += int((await writer.fetch(sql))[0][0])
        return bad
    finally:
        await writer.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--db", required=True, help="SQLAlchemy URL: sqlite+aiosqlite:///path or postgresql+asyncpg://…"
    )
    p.add_argument("--tracks", type=int, default=10_000_000)
    p.add_argument("--units-per-run", type=int, default=500)
    p.add_argument("--fresh", action="store_true", help="drop what is there and start over")
    p.add_argument("--verify", action="store_true", help="check every foreign key afterwards")
    a = p.parse_args()
    t0 = time.perf_counter()
    plan = asyncio.run(generate(a.db, a.tracks, a.units_per_run, fresh=a.fresh, progress=print))
    total = sum(plan.rows.values())
    print(
        f"done in {time.perf_counter() - t0:.1f} s (generation {plan.seconds:.1f} s): "
        f"{plan.rows.get('tracks', 0):,} tracks, {total:,} rows; "
        f"{plan.rows.get('tracks', 0) / plan.seconds:,.0f} tracks/s, {total / plan.seconds:,.0f} rows/s"
    )
    print(", ".join(f"{t} {n:,}" for t, n in plan.rows.items()))
    if a.verify:
        t0 = time.perf_counter()
        bad = asyncio.run(verify_foreign_keys(a.db))
        print(f"foreign keys: {bad} dangling rows ({time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
