"""Batches (live-first drain, size limits) and ack settlement (order-safe refusals), pure."""

from __future__ import annotations

import orjson

from edge import batches
from edge.batches import Envelope
from edge.outbox import StoredEvent
from shared.events import Ack, EventBatch

ENV = Envelope("edge-line-b", "LINE-B")


def stored(seq: int, kind: str = "INGEST", payload: str = '{"sn":"SN"}') -> StoredEvent:
    return StoredEvent(seq, f"ev-{seq}", kind, "2026-03-01T08:00:00.000Z", "ST-1", payload, 100, "x", 0)


def pick(head: list[StoredEvent], live: list[StoredEvent], **kw: object) -> batches.Selection:
    opts: dict = {"live_mark": 0, "max_events": 500, "max_bytes": 256 * 1024, "head_exhausted": False} | kw
    return batches.select(ENV, head, live, **opts)


def test_everything_pending_fits_in_one_batch_in_seq_order_on_the_wire_contract() -> None:
    head = [stored(s) for s in (3, 5, 9)]
    sel = pick(head, [], head_exhausted=True, live_mark=2)
    assert sel.batch is not None and sel.too_large == []
    wire = EventBatch.model_validate_json(sel.batch.payload)
    assert (
        wire.edge_id == "edge-line-b" and wire.line_code == "LINE-B" and wire.batch_id == sel.batch.batch_id
    )
    assert [e.seq for e in wire.events] == [3, 5, 9] and wire.events[0].payload == {"sn": "SN"}
    assert sel.batch.prefix == 3
    assert sel.live_mark == 9  # the outbox is drained into this batch: whatever comes next is live


def test_batches_respect_the_event_and_byte_limits() -> None:
    head = [stored(s) for s in range(1, 11)]
    assert len(pick(head, [], max_events=4).batch.events) == 4  # type: ignore[union-attr]
    fat = [stored(s, payload=orjson.dumps({"blob": "x" * 3000}).decode()) for s in range(1, 11)]
    sel = pick(fat, [], max_bytes=10_000)
    assert sel.batch is not None and len(sel.batch.payload) <= 10_000 and len(sel.batch.events) == 3


def test_live_events_go_first_and_take_at_most_half_a_batch() -> None:
    head = [stored(s) for s in range(1, 11)]  # a full head: more backlog behind it
    live = [stored(s) for s in range(100, 110)]
    sel = pick(head, live, max_events=10, live_mark=50)
    assert sel.batch is not None
    seqs = [e.seq for e in sel.batch.events]
    assert seqs == [1, 2, 3, 4, 5, 100, 101, 102, 103, 104]
    assert sel.batch.prefix == 5  # only the head part is the contiguous start of the outbox
    assert sel.live_mark == 104


def test_an_event_too_large_for_any_batch_is_set_apart_when_it_is_the_oldest() -> None:
    huge = stored(1, payload=orjson.dumps({"blob": "x" * 20_000}).decode())
    sel = pick([huge, stored(2)], [], max_bytes=8_000)
    assert sel.batch is None and sel.too_large == [huge]
    sel = pick([stored(0), huge, stored(2)], [], max_bytes=8_000)
    assert sel.batch is not None and [e.seq for e in sel.batch.events] == [0]  # the head stays contiguous


def ack(batch_id: str, *results: tuple[int, str, str | None]) -> Ack:
    return Ack.model_validate(
        {
            "batchId": batch_id,
            "results": [{"eventId": f"ev-{s}", "status": st, "code": c} for s, st, c in results],
        }
    )


def test_settle_deletes_only_accepted_and_duplicate_and_dead_letters_a_final_rejection() -> None:
    b = pick([stored(s) for s in (1, 2, 3, 4)], [], head_exhausted=True).batch
    assert b is not None
    plan = batches.settle(
        b, ack(b.batch_id, (1, "ACCEPTED", None), (2, "DUPLICATE", None), (3, "REJECTED", "UNIT_NOT_FOUND"))
    )
    assert plan.delivered == [1, 2]
    assert plan.dead == [(3, "UNIT_NOT_FOUND", None)]
    assert [e.seq for e in plan.keep] == [4] and plan.retry  # no result for 4: sent again
    again = batches.reissue(ENV, b, plan.keep, plan.keep_prefix)
    assert again.batch_id == b.batch_id and again.event_ids == ["ev-4"]
    assert EventBatch.model_validate_json(again.payload).batch_id == b.batch_id


def test_a_rejection_behind_an_unsettled_elder_is_not_final() -> None:
    b = pick([stored(s) for s in (1, 2, 3)], [], head_exhausted=True).batch
    assert b is not None
    plan = batches.settle(
        b, ack(b.batch_id, (1, "RETRY", None), (2, "REJECTED", "UNIT_NOT_FOUND"), (3, "ACCEPTED", None))
    )
    assert plan.dead == [] and plan.delivered == [3]
    assert [e.seq for e in plan.keep] == [1, 2] and plan.keep_prefix == 2 and plan.retry


def test_a_live_event_refused_ahead_of_the_backlog_goes_back_to_the_queue() -> None:
    head = [stored(s) for s in range(1, 5)]
    b = pick(head, [stored(50)], max_events=4).batch
    assert b is not None and [e.seq for e in b.events] == [1, 2, 3, 50]
    plan = batches.settle(
        b,
        ack(
            b.batch_id,
            (1, "ACCEPTED", None),
            (2, "ACCEPTED", None),
            (3, "ACCEPTED", None),
            (50, "REJECTED", "X"),
        ),
    )
    assert plan.dead == [] and [e.seq for e in plan.released] == [50] and plan.keep == [] and not plan.retry
    assert plan.errors and "sent again in order" in plan.errors[0][1]
