"""The set-based lane of the MQTT ingest (services/ingest_many.py) writes exactly what applying the same
events one by one writes, in one statement per table; any refusal in a batch falls back so each event gets
its own answer and the failed attempt leaves nothing behind."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import event, select

from central.config import Settings
from central.db.engine import Database
from central.db.models import (
    AuditEvent,
    DataValue,
    Defect,
    EdgeEventReceipt,
    IngestEvent,
    MesEvent,
    Run,
    Track,
    Unit,
)
from central.mqtt.apply import Applier
from shared.events import EventBatch
from tests.client import Api
from tests.flows import seed
from tests.integration.test_mqtt_consumer import auto_run

EDGE = "edge-line-b"
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)


def ev(sn: str, i: int, *, result: str = "PASS", extra: bool = False) -> dict[str, Any]:
    measurements = [{"name": "TEMP-AUTO", "value": 50 + i, "unit": "C", "judge": "PASS"}]
    if extra:
        measurements.append({"name": "NOT-COLLECTED", "value": 1, "unit": "x"})
    return {
        "eventId": f"e-{sn}",
        "seq": i + 1,
        "kind": "INGEST",
        "occurredAt": (T0 + timedelta(seconds=i)).isoformat(),
        "stationCode": "ST-AUTO-01",
        "payload": {
            "eventType": "AUTO",
            "payload": {
                "stationCode": "ST-AUTO-01",
                "sn": sn,
                "result": result,
                "measurements": measurements,
            },
        },
    }


def batch(events: list[dict[str, Any]]) -> EventBatch:
    return EventBatch.model_validate(
        {
            "schemaVersion": 1,
            "edgeId": EDGE,
            "batchId": uuid.uuid4().hex,
            "sentAt": datetime.now(UTC).isoformat(),
            "events": events,
        }
    )


@contextmanager
def inserts(database: Database) -> Iterator[Counter[str]]:
    """INSERT statements sent to the database, by table (an executemany counts once)."""
    seen: Counter[str] = Counter()

    def count(_c: Any, _cur: Any, statement: str, *_: Any) -> None:
        words = statement.split()
        if words[:2] == ["INSERT", "INTO"]:
            seen[words[2]] += 1

    event.listen(database.engine.sync_engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(database.engine.sync_engine, "before_cursor_execute", count)


def _strip(d: dict[str, Any] | None, *keys: str) -> dict[str, Any] | None:
    return None if d is None else {k: v for k, v in d.items() if k not in keys}


async def written(database: Database, run_no: str) -> dict[str, Any]:
    """Everything the events of one run wrote, per unit in SN order, with ids, SNs and run numbers left out
    (they differ between the two runs by construction)."""
    async with database.reader() as s:
        run = await s.scalar(select(Run).where(Run.run_no == run_no))
        assert run is not None
        units = (await s.scalars(select(Unit).where(Unit.run_id == run.id).order_by(Unit.sn))).all()
        out: dict[str, Any] = {"run": (run.status, run.started_at), "units": []}
        for u in units:
            tracks = (await s.scalars(select(Track).where(Track.unit_id == u.id))).all()
            values = (
                await s.scalars(select(DataValue).where(DataValue.track_id.in_([t.id for t in tracks])))
            ).all()
            ing = (await s.scalars(select(IngestEvent).where(IngestEvent.unit_id == u.id))).all()
            defects = (await s.scalars(select(Defect).where(Defect.unit_id == u.id))).all()
            mes = (
                await s.scalars(
                    select(MesEvent)
                    .where(MesEvent.entity_id.in_([str(t.id) for t in tracks]))
                    .order_by(MesEvent.id)
                )
            ).all()
            audits = (
                await s.scalars(
                    select(AuditEvent)
                    .where(AuditEvent.entity_id.in_([str(i.id) for i in ing]))
                    .where(AuditEvent.entity_type == "INTEGRATION")
                )
            ).all()
            out["units"].append(
                {
                    "unit": (u.status, u.current_step_no),
                    "tracks": [
                        (t.step_no, t.station_id, t.source, t.in_at, t.out_at, t.result) for t in tracks
                    ],
                    "values": [
                        (
                            v.spec_id,
                            v.value_number,
                            v.judge,
                            v.alarmed,
                            v.source,
                            v.collected_at,
                            v.collected_by,
                        )
                        for v in values
                    ],
                    "ingest": [
                        (
                            i.event_type,
                            i.occurred_at,
                            i.result,
                            i.station_id,
                            i.line_id,
                            _strip(i.normalized, "sn"),
                            _strip(i.meta, "trackId"),
                            i.payload["measurements"],
                        )
                        for i in ing
                    ],
                    "defects": [(d.code, d.qty, d.status, d.recorded_by) for d in defects],
                    "mes": [
                        (
                            m.event_type,
                            m.status,
                            m.occurred_at,
                            _strip(m.payload, "trackId", "runNo", "sn", "ingestEventId"),
                        )
                        for m in mes
                    ],
                    "audit": [
                        (
                            a.action,
                            a.status,
                            a.actor_type,
                            a.station_id,
                            [x for x in a.diff or [] if x["path"] not in ("/runNo", "/sn", "/trackId")],
                        )
                        for a in audits
                    ],
                }
            )
        run_audit = (
            await s.scalars(
                select(AuditEvent.action).where(
                    AuditEvent.entity_type == "RUN", AuditEvent.entity_id == str(run.id)
                )
            )
        ).all()
        out["runAudit"] = sorted(run_audit)
    return out


async def test_a_batch_at_once_writes_what_one_by_one_writes(
    api: Api, database: Database, settings: Settings
) -> None:
    await seed(database)
    applier = Applier(database, settings)
    for n, shape in ((3, "all pass: the run completes"), (4, "a FAIL and an unmatched reading")):
        fast_run, slow_run = await auto_run(api, database, n), await auto_run(api, database, n)

        def events(sns: list[str], n: int = n) -> list[dict[str, Any]]:
            out = [ev(sn, i) for i, sn in enumerate(sorted(sns))]
            if n == 4:
                out[1] = ev(sorted(sns)[1], 1, result="FAIL")
                out[2] = ev(sorted(sns)[2], 2, extra=True)
            return out

        with inserts(database) as fast_inserts:
            ack = await applier.apply(batch(events(fast_run["sns"])))
        assert [r.status for r in ack.results] == ["ACCEPTED"] * n, shape
        with inserts(database) as slow_inserts:
            for one in events(slow_run["sns"]):
                ack = await applier.apply(batch([one]))  # a batch of one goes one by one
                assert [r.status for r in ack.results] == ["ACCEPTED"], shape
        # One statement per table for the whole batch, against one per event.
        assert fast_inserts["tracks"] == 1 and slow_inserts["tracks"] == n, (fast_inserts, slow_inserts)
        assert fast_inserts["ingest_events"] == 1 and fast_inserts["edge_event_receipts"] == 1
        fast, slow = await written(database, fast_run["runNo"]), await written(database, slow_run["runNo"])
        assert fast == slow, shape
        assert fast["run"][0] == ("COMPLETED" if n == 3 else "IN_PROGRESS"), shape
        assert sum(len(u["defects"]) for u in fast["units"]) == (0 if n == 3 else 1)


async def test_a_refusal_in_a_batch_gives_each_event_its_own_answer(
    api: Api, database: Database, settings: Settings
) -> None:
    await seed(database)
    applier = Applier(database, settings)
    run = await auto_run(api, database, 3)
    sns = sorted(run["sns"])
    events = [ev(sns[0], 0), ev("NO-SUCH-UNIT", 1), ev(sns[1], 2), ev(sns[1], 3)]
    events[3]["eventId"] = "e-again"
    ack = await applier.apply(batch(events))
    assert [(r.status, r.code) for r in ack.results] == [
        ("ACCEPTED", None),
        ("REJECTED", "UNIT_RUN_NOT_FOUND"),
        ("ACCEPTED", None),
        ("REJECTED", "UNIT_ALREADY_DONE"),
    ]
    async with database.reader() as s:
        tracks = (await s.scalars(select(Track.unit_id))).all()
        receipts = (await s.scalars(select(EdgeEventReceipt.event_id))).all()
        claims = (await s.scalars(select(IngestEvent.dedupe_key))).all()
    assert len(tracks) == 2 and sorted(receipts) == sorted(["e-" + sns[0], "e-" + sns[1]])
    assert sorted(claims) == sorted(receipts)  # the refused fast attempt left no claim behind
    # Known events in a later batch are answered DUPLICATE, the new one is applied at once.
    ack = await applier.apply(batch([ev(sns[0], 0), ev(sns[2], 4)]))
    assert [r.status for r in ack.results] == ["DUPLICATE", "ACCEPTED"]


async def test_a_mixed_batch_goes_set_based_around_what_cannot(
    api: Api, database: Database, settings: Settings
) -> None:
    """A real line's batch mixes equipment events with BATCH events, refusals and malformed ones: the runs of
    equipment events between them still go set-based, a refused attempt is split so only the half holding the
    refusal goes one by one, and every event gets the answer (and the rows) it gets alone."""
    await seed(database)
    applier = Applier(database, settings)
    fast_run, slow_run = await auto_run(api, database, 12), await auto_run(api, database, 12)

    def events(sns: list[str]) -> list[dict[str, Any]]:
        good = [ev(sn, i) for i, sn in enumerate(sorted(sns))]
        malformed = {**ev("MALFORMED", 90), "eventId": f"e-bad-{sns[0]}"}
        del malformed["payload"]["eventType"]  # not an ingest body: cannot go set-based
        unknown = {**ev("NO-SUCH-UNIT", 91), "eventId": f"e-none-{sns[0]}"}
        # 3 good | malformed | 8 good, unknown unit, 1 good (10 > SPLIT_ABOVE: split 5 + 5)
        out = [*good[:3], malformed, *good[3:11], unknown, good[11]]
        for seq, e in enumerate(out, 1):
            e["seq"] = seq
        return out

    expected = [("ACCEPTED", None)] * 3 + [("REJECTED", "VALIDATION_FAILED")]
    expected += [("ACCEPTED", None)] * 8 + [("REJECTED", "UNIT_RUN_NOT_FOUND"), ("ACCEPTED", None)]
    with inserts(database) as fast_inserts:
        ack = await applier.apply(batch(events(fast_run["sns"])))
    assert [(r.status, r.code) for r in ack.results] == expected
    with inserts(database) as slow_inserts:
        answers = [(await applier.apply(batch([one]))).results[0] for one in events(slow_run["sns"])]
    assert [(r.status, r.code) for r in answers] == expected
    # Tracks: 3 at once, then the first half of the split at once, the half with the refusal one by one (4).
    assert slow_inserts["tracks"] == 12 and fast_inserts["tracks"] == 1 + 1 + 4, (fast_inserts, slow_inserts)
    assert await written(database, fast_run["runNo"]) == await written(database, slow_run["runNo"])
    # The whole batch resent: what had an effect is a DUPLICATE, the refused ones are refused again.
    again = await applier.apply(batch(events(fast_run["sns"])))
    assert [(r.status, r.code) for r in again.results] == [
        ("DUPLICATE", None) if status == "ACCEPTED" else (status, code) for status, code in expected
    ]
