"""R2 (quality-bars.md): concurrent writers of one thing → exactly one effect each time.

1. REST, real HTTP, on SQLite and PostgreSQL: 50 concurrent track-ins of one unit, then 50 concurrent
   track-outs of it, for several rounds (one fresh unit per round). Each burst must give exactly one 200 and
   49 documented refusals (UNIT_ALREADY_IN_STATION, TRACK_NOT_FOUND), never a 5xx; the database holds one
   track, one TRACK_IN and one TRACK_OUT outbox event and audit row, and the unit moved exactly one step.
2. Two `mes-central serve` processes on one PostgreSQL database and one Mosquitto, both subscribed to the
   edges' events through one MQTT v5 shared subscription (MES_MQTT_SHARED_GROUP), fed by the simulated LINE-B
   and a real edge agent:
   - REST: a session signed in on one process works on the other, a sign-out on one ends it on both, and the
     50-request bursts of part 1 split between the two processes still have exactly one effect;
   - storms: one batch the test publishes 10 times at once reaches both processes, which apply it
     concurrently: one ACCEPTED, nine DUPLICATE, one track;
   - the load is spread: both processes apply the edge's batches (each logs one line per batch with its pid);
   - one process is frozen (SIGSTOP) so batches routed to it stay unanswered, then `kill -9`ed: the edge sends
     what was never acknowledged again and Mosquitto delivers it to the survivor;
   - in the end central holds the simulator's ground truth exactly once: 0 lost, 0 duplicated.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import aiohttp
import orjson
import paho.mqtt.client as mqtt
from aiohttp.test_utils import TestClient
from sqlalchemy import func, select

from central.db.engine import Database, create_database
from central.db.models import AuditEvent, MesEvent, Track, Unit
from central.demo_line import prepare_line_b_run
from shared import topics
from tests.brokers import Broker
from tests.client import Api, Resp
from tests.e2e.edge_system import (
    EDGE_ID,
    ROUTE,
    Central,
    Line,
    Rest,
    assert_central_matches_truth,
    eventually,
    records_of,
    start_line,
    truth_by_unit,
)
from tests.flows import OP, Q, authorized_run, seed
from tests.reliability import figures
from tests.reliability.conftest import Recorder

PRINT = "ST-PRINT-01"
BURST = 50


# ---- 1. concurrent track-in / track-out of one unit over REST ---------------------------------------------


def _code(r: Resp) -> str:
    body = r.body
    return str(body["error"]["code"]) if isinstance(body, dict) and body.get("ok") is False else "?"


def _tally(results: list[Resp]) -> Counter[str]:
    return Counter("200" if r.status == 200 else f"{r.status} {_code(r)}" for r in results)


def _count_5xx(figs: Counter[str]) -> int:
    return sum(n for k, n in figs.items() if k.split()[1].startswith("5"))


async def _effects(database: Database, sn: str) -> dict[str, Any]:
    async with database.reader() as s:
        unit = await s.scalar(select(Unit).where(Unit.sn == sn))
        assert unit is not None
        tracks = (await s.scalars(select(Track).where(Track.unit_id == unit.id))).all()
        track_ids = [str(t.id) for t in tracks]
        events = Counter(
            (
                await s.scalars(
                    select(MesEvent.event_type).where(
                        MesEvent.entity_type == "TRACK", MesEvent.entity_id.in_(track_ids)
                    )
                )
            ).all()
        )
        audits = Counter(
            (
                await s.scalars(
                    select(AuditEvent.action).where(
                        AuditEvent.entity_type == "TRACK",
                        AuditEvent.entity_id.in_(track_ids),
                        AuditEvent.status == "SUCCESS",
                    )
                )
            ).all()
        )
    return {"unit": unit, "tracks": tracks, "events": events, "audits": audits}


async def _tracks_of(database: Database, sns: list[str]) -> int:
    async with database.reader() as s:
        n = await s.scalar(
            select(func.count(Track.id)).join(Unit, Unit.id == Track.unit_id).where(Unit.sn.in_(sns))
        )
    return int(n or 0)


async def _one_round(
    apis: list[Api], database: Database, flow: dict[str, Any], sn: str, figs: Counter[str]
) -> None:
    """50 concurrent track-ins of one unit, then 50 concurrent track-outs, spread over `apis` in turn."""
    before = await _effects(database, sn)
    assert before["unit"].status == "QUEUED" and not before["tracks"], (sn, before["unit"].status)
    step = before["unit"].current_step_no

    ins = await asyncio.gather(
        *(
            apis[i % len(apis)].post(
                f"/stations/{PRINT}/track-in",
                OP,
                json={"sn": sn, "woNo": flow["woNo"], "runNo": flow["runNo"]},
            )
            for i in range(BURST)
        )
    )
    tally = _tally(ins)
    figs.update(f"in {k}" for k in tally.elements())
    assert tally == {"200": 1, "400 UNIT_ALREADY_IN_STATION": BURST - 1}, (sn, tally)
    mid = await _effects(database, sn)
    assert mid["unit"].status == "IN_STATION" and len(mid["tracks"]) == 1, (sn, mid)
    assert mid["events"] == {"TRACK_IN": 1} and mid["audits"] == {"TRACK_IN": 1}, (sn, mid)

    outs = await asyncio.gather(
        *(
            apis[i % len(apis)].post(
                f"/stations/{PRINT}/track-out", OP, json={"sn": sn, "runNo": flow["runNo"], "result": "PASS"}
            )
            for i in range(BURST)
        )
    )
    tally = _tally(outs)
    figs.update(f"out {k}" for k in tally.elements())
    assert tally == {"200": 1, "400 TRACK_NOT_FOUND": BURST - 1}, (sn, tally)
    (won,) = [r for r in outs if r.status == 200]
    after = await _effects(database, sn)
    (track,) = after["tracks"]
    assert track.out_at is not None and track.result == "PASS" and track.step_no == step
    # Exactly one step forward: to the route's next step, as the one winning answer said.
    assert after["unit"].current_step_no == won.data["nextStepNo"] > step, (sn, after["unit"].current_step_no)
    assert after["unit"].status == "QUEUED"
    assert after["events"] == after["audits"] == {"TRACK_IN": 1, "TRACK_OUT": 1}, (sn, after)


async def test_50_concurrent_track_ins_and_track_outs_of_one_unit_have_one_effect(
    api: Api, database: Database, backend: str, record_figures: Recorder
) -> None:
    await seed(database)
    rounds = figures.size(3, 20)
    flow = await authorized_run(api, database, qty=rounds)
    await api.login(OP)  # one sign-in, not 50 racing ones
    figs: Counter[str] = Counter()
    started = time.monotonic()
    try:
        for i, sn in enumerate(flow["sns"]):
            await _one_round([api], database, flow, sn, figs)
            assert await _tracks_of(database, flow["sns"]) == i + 1  # no stray track on another unit
    finally:  # what was measured, also when a round failed
        record_figures(
            "R2",
            "50 concurrent track-ins and track-outs of one unit: exactly one effect",
            **{
                "rounds": rounds,
                "requests per burst": BURST,
                "track-ins accepted": figs["in 200"],
                "track-in refusals (UNIT_ALREADY_IN_STATION)": figs["in 400 UNIT_ALREADY_IN_STATION"],
                "track-outs accepted": figs["out 200"],
                "track-out refusals (TRACK_NOT_FOUND)": figs["out 400 TRACK_NOT_FOUND"],
                "responses 5xx": _count_5xx(figs),
                "seconds": round(time.monotonic() - started, 2),
            },
        )


# ---- 2. two central processes, one PostgreSQL, one shared MQTT subscription --------------------------------

# Slower than the E-scenarios' 0.3 s: under CPU load the edge can read the OPC UA SPI record of a board after
# the Modbus MOUNT record made 0.3 s later, and central then refuses the MOUNT (STATION_MISMATCH, final). That
# acquisition-order limit of the edge is not what R2 measures.
TAKT = 0.5
GROUP = "mes-central"
FIRST_STATION = "ST-B-PRINT-01"
STORM_COPIES = 10
_APPLIED = re.compile(r"batch (\S+) of edge (\S+): (.*) \(pid (\d+)\)")


class _Http:
    """What `tests.client.Api` uses of a test client, over a real server in another process."""

    def __init__(self, origin: str) -> None:
        self.session = aiohttp.ClientSession(base_url=origin, cookie_jar=aiohttp.CookieJar(unsafe=True))

    def request(self, method: str, path: str, **kw: Any) -> Any:
        return self.session.request(method, path, **kw)

    def post(self, path: str, **kw: Any) -> Any:
        return self.session.post(path, **kw)


def _api(central: Central) -> Api:
    return Api(cast(TestClient, _Http(f"http://127.0.0.1:{central.port}")))


def _applied(central: Central) -> list[tuple[str, str, int]]:
    """(batchId, outcome, pid) of every batch this process answered, from its log."""
    if not central.log_path.exists():
        return []
    text = central.log_path.read_text(errors="replace")
    return [(m[1], m[3], int(m[4])) for m in _APPLIED.finditer(text) if m[2] == EDGE_ID]


def _batch_ids(central: Central) -> set[str]:
    return {batch for batch, _outcome, _pid in _applied(central)}


def _accepted(lines: list[tuple[str, str, int]]) -> int:
    return sum(int(m[1]) for _b, outcome, _p in lines for m in re.finditer(r"(\d+) ACCEPTED", outcome))


async def _split_bursts(apis: list[Api], database: Database, rounds: int) -> Counter[str]:
    """50 track-ins, then 50 track-outs of one unit, alternating between the two processes."""
    flow = await authorized_run(apis[0], database, qty=rounds)
    await apis[0].login(OP)
    figs: Counter[str] = Counter()
    for sn in flow["sns"]:
        await _one_round(apis, database, flow, sn, figs)
    return figs


async def _sessions_cross_processes(a: Api, b: Api) -> None:
    """Signed in on one process, the session works on the other; signed out there, it is gone here too."""
    token = await a.login(Q)
    got = await b.get("/auth/get-session", token)
    assert got.status == 200 and got.data["user"]["email"] == Q, got.body
    assert (await b.post("/auth/sign-out", token)).status == 200
    gone = await a.get("/auth/get-session", token)
    assert gone.status == 401, gone.body


def _central_vs_truth(
    traces: dict[str, dict[str, Any]], sim_records: list[dict[str, Any]]
) -> tuple[int, int]:
    """(lost, duplicated) machine records: one track per (unit, step) is expected, per the simulator."""
    lost = dup = 0
    for sn, per_station in truth_by_unit(sim_records).items():
        steps = Counter(t["stepNo"] for t in traces[sn]["tracks"])
        for station in per_station:
            n = steps.get(ROUTE[station][0], 0)
            lost += n == 0
            dup += max(0, n - 1)
    return lost, dup


async def test_two_central_processes_share_one_subscription_and_survive_a_kill(
    shared_pg: str, mosquitto: Broker, tmp_path: Path, record_figures: Recorder
) -> None:
    boards = figures.size(16, 200)
    centrals: list[Central] = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        c = Central(tmp_path / name, shared_pg, mosquitto.url)
        c.name = f"central {name}"
        c.env["MES_MQTT_SHARED_GROUP"] = GROUP
        centrals.append(c)
    a, b = centrals
    (tmp_path / "line").mkdir()
    database = create_database(shared_pg, pool_size=2)
    apis = [_api(a), _api(b)]
    line: Line | None = None
    rest = Rest(a.base_url)
    figs: dict[str, Any] = {"boards": boards}
    tap: _Tap | None = None
    try:
        await a.prepare()
        await asyncio.gather(a.start(), b.start())
        pids = {c.name: c.proc.pid for c in centrals if c.proc is not None}
        assert len(set(pids.values())) == 2

        # REST: one database, two processes, no state of their own.
        apis[1].tokens = apis[0].tokens  # tokens minted by A, used on B as well
        await _sessions_cross_processes(*apis)

        # MQTT: the simulated LINE-B and a real edge agent; both processes consume one shared subscription.
        storms = figures.size(2, 10)
        run_no, all_sns = await prepare_line_b_run(a.base_url, boards + storms)
        # The simulator makes `boards` boards; the others only get the crafted batches of the storms.
        sns, extra_sns = all_sns[:boards], all_sns[boards:]
        tap = _Tap(mosquitto)
        # The agent takes seconds to start and read every device once: the REST bursts run meanwhile.
        starting = asyncio.create_task(
            start_line(tmp_path / "line", mosquitto.url, run_no=run_no, sns=sns, takt=TAKT)
        )
        try:
            rest_figs = await _split_bursts(apis, database, figures.size(1, 10))
            figs["split REST bursts: 200"] = rest_figs["in 200"] + rest_figs["out 200"]
            figs["split REST bursts: refused"] = sum(n for k, n in rest_figs.items() if " 400 " in k)
            figs["split REST bursts: 5xx"] = _count_5xx(rest_figs)
        finally:
            line = await starting
        line.start_production()

        async def both_busy() -> bool:
            return len(_applied(a)) >= 3 and len(_applied(b)) >= 3

        await eventually(both_busy, within=30, what="batches applied by both central processes")
        storm_ids = await _storms(tap, centrals, rest, extra_sns, figs)
        before_kill = {c.name: len([x for x in _applied(c) if x[0] not in storm_ids]) for c in centrals}
        figs.update({f"edge batches answered by {n} before the kill": k for n, k in before_kill.items()})

        # Freeze B first: the batches Mosquitto routes to it stay in its hands unanswered, so the kill -9
        # below lands on a process holding work (a plain kill at a random instant mostly finds it idle).
        assert b.proc is not None
        b.proc.send_signal(signal.SIGSTOP)
        frozen_at = time.monotonic()
        no_acks = len(_stranded(line))

        async def stranded() -> list[str]:
            return _stranded(line)[no_acks:]

        first = (await eventually(stranded, within=20, what="a batch stranded in the frozen process"))[0]

        async def resent_applied() -> bool:
            return first in _batch_ids(a)

        await eventually(resent_applied, within=20, what=f"the survivor applied the stranded batch {first}")
        figs["seconds from the freeze to its stranded batch applied by the survivor"] = round(
            time.monotonic() - frozen_at, 2
        )
        made_at_kill = len(line.sim.records())
        applied_at_kill = len(_applied(a))
        await b.kill()
        killed_at = time.monotonic()

        async def flowing_again() -> bool:
            return len(_applied(a)) > applied_at_kill

        await eventually(flowing_again, within=20, what="a batch applied by the survivor after the kill")
        figs["seconds from kill -9 to the survivor's next applied batch"] = round(
            time.monotonic() - killed_at, 2
        )

        await line.finished(within=boards * TAKT + 60)
        assert len(line.sim.records()) > made_at_kill, "the line stopped producing before the kill"

        async def all_done() -> bool:
            return bool((await rest.unit_stats(run_no))["done"] == boards)

        await eventually(all_done, within=60, what=f"all {boards} units of {run_no} DONE")

        async def drained() -> bool:
            edge = await rest.edge()
            return bool(edge["state"] == "ONLINE" and edge["backlog"] == 0)

        await eventually(drained, within=30, what="edge-line-b ONLINE with backlog 0 at central")
        stats = await line.agent.outbox_stats()
        truth = records_of(line.sim, sns)
        traces = {sn: await rest.trace(sn) for sn in sns}
        lost, dup = _central_vs_truth(traces, truth)
        edge = await rest.edge()
        per_process = {c.name: [x for x in _applied(c) if x[0] not in storm_ids] for c in centrals}
        stranded_ids = set(_stranded(line)[no_acks:])
        figs["machine records (ground truth)"] = len(truth)
        figs.update({f"edge batches answered by {n}": len(v) for n, v in per_process.items()})
        figs.update({f"events accepted by {n}": _accepted(v) for n, v in per_process.items()})
        figs["events accepted at central"] = edge["eventsAccepted"]
        figs["events duplicate (answered DUPLICATE)"] = edge["eventsDuplicate"]
        figs["batches stranded in the frozen/killed process"] = len(stranded_ids)
        figs.update(lost=lost, duplicated=dup)
        assert lost == 0 and dup == 0, (lost, dup)
        await assert_central_matches_truth(rest, line.sim, sns)
        # Central's counter also holds the one accepted copy of each storm.
        assert edge["eventsAccepted"] == len(truth) + storms and edge["eventsRejected"] == 0, edge
        assert stats["backlog"] == 0 and stats["dead_letters"] == 0, stats
        # Each log line names the process that wrote it (what tells them apart in a shared journal).
        assert all({pid for _b, _o, pid in _applied(c)} == {pids[c.name]} for c in centrals), pids
        # Whatever the dead process swallowed, the edge sent again and the survivor applied.
        assert stranded_ids <= _batch_ids(a), stranded_ids - _batch_ids(a)
        # The load was spread: both processes applied events before one of them died.
        assert all(_accepted(v[: before_kill[n]]) > 0 for n, v in per_process.items()), per_process
    except BaseException:
        for d in (*centrals, *([line.agent] if line else [])):
            print(d.tail())
        raise
    finally:
        if tap is not None:
            tap.close()
        record_figures(
            "R2", "Two central processes on one PostgreSQL sharing one MQTT subscription, one killed", **figs
        )
        if line is not None:
            await line.close()
        await rest.close()
        for api in apis:
            await cast(_Http, api.client).session.close()
        await database.dispose()
        for c in centrals:
            if c.proc is not None and c.proc.returncode is None:
                c.proc.send_signal(signal.SIGCONT)
            await c.end()


class _Tap:
    """A plain MQTT client next to the two processes: sees the edge's batches, publishes copies of its own."""

    def __init__(self, broker: Broker) -> None:
        self.seen: list[bytes] = []
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"r2-tap-{uuid.uuid4().hex[:6]}"
        )
        self.client.on_message = lambda _c, _u, msg: self.seen.append(bytes(msg.payload))
        self.client.connect(broker.host, broker.port)
        self.client.subscribe(topics.events(EDGE_ID), qos=1)
        self.client.loop_start()

    def print_event(self) -> dict[str, Any] | None:
        """An INGEST of the first station as the real edge sent it (the template of the crafted events)."""
        for raw in list(self.seen):
            for ev in orjson.loads(raw)["events"]:
                if ev["kind"] == "INGEST" and ev.get("stationCode") == FIRST_STATION:
                    return dict(ev)
        return None

    async def publish_copies(self, batch: dict[str, Any], copies: int) -> None:
        payload = orjson.dumps(batch)
        infos = [self.client.publish(topics.events(EDGE_ID), payload, qos=1) for _ in range(copies)]
        await asyncio.to_thread(lambda: [i.wait_for_publish(10) for i in infos])

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _crafted_batch(template: dict[str, Any], sn: str) -> dict[str, Any]:
    """A batch the edge never sent: one first-station record of `sn`, with ids of its own."""
    inner = {**template["payload"]["payload"], "sn": sn}
    event = {
        **template,
        "eventId": f"r2-{uuid.uuid4().hex}",
        "payload": {**template["payload"], "payload": inner},
    }
    return {
        "schemaVersion": 1,
        "edgeId": EDGE_ID,
        "lineCode": "LINE-B",
        "batchId": f"r2-storm-{uuid.uuid4().hex[:12]}",
        "sentAt": datetime.now(UTC).isoformat(),
        "events": [event],
    }


async def _storms(
    tap: _Tap, centrals: list[Central], rest: Rest, extra_sns: list[str], figs: dict[str, Any]
) -> set[str]:
    """One batch delivered STORM_COPIES times to both processes at once: one effect, the rest DUPLICATE."""

    async def template() -> dict[str, Any] | None:
        return tap.print_event()

    tpl = await eventually(template, within=20, what=f"an INGEST of {FIRST_STATION} seen on the broker")
    ids: set[str] = set()
    outcomes: Counter[str] = Counter()
    for sn in extra_sns:
        batch = _crafted_batch(tpl, sn)
        ids.add(batch["batchId"])
        await tap.publish_copies(batch, STORM_COPIES)

        async def answered(bid: str = batch["batchId"]) -> list[tuple[str, str, int]] | None:
            got = [x for c in centrals for x in _applied(c) if x[0] == bid]
            return got if len(got) == STORM_COPIES else None

        got = await eventually(
            answered, within=30, what=f"{STORM_COPIES} copies of {batch['batchId']} answered"
        )
        outcomes.update(outcome for _b, outcome, _p in got)
        figs["storm copies answered"] = sum(outcomes.values())
        figs.update({f"storm copies answered: {k}": n for k, n in outcomes.items()})
        assert sorted(o for _b, o, _p in got) == ["1 ACCEPTED"] + ["1 DUPLICATE"] * (STORM_COPIES - 1), got
        assert len({pid for _b, _o, pid in got}) == 2, f"all copies went to one process: {got}"
        trace = await rest.trace(sn)
        tracks = [(t["stepNo"], t["stationCode"]) for t in trace["tracks"]]
        assert tracks == [(ROUTE[FIRST_STATION][0], FIRST_STATION)], (sn, tracks)
        assert len(trace["ingestEvents"]) == 1, (sn, trace["ingestEvents"])
    return ids


def _stranded(line: Line) -> list[str]:
    """Batches the edge got no ack for within its ack timeout (it logs each before sending it again)."""
    log = line.agent.log_path
    text = log.read_text(errors="replace") if log.exists() else ""
    return re.findall(r"no ack for batch (\S+)", text)
