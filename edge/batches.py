"""Batches on the wire (EventBatch of shared/events.py): which pending events go next, and what an ack means.

Pure: no I/O, so the rules of live-first draining and of settling an ack are tested as plain functions.

Live-first drain. The forwarder keeps a *live mark*: the highest seq stored when it last (re)connected or last
found the outbox drained. Events above the mark are live; the rest is backlog. A batch takes live events first
(oldest live first, at most half a batch while a backlog remains, so the backlog still drains at full speed),
then fills up with the oldest backlog events; the mark moves past every live event sent. With one batch in
flight, a live event waits for at most the batch in flight plus its own round trip. State events (equipment,
stencil, solder paste status) are never taken out of order: only their seq order gives the latest state.

Order-safe refusals. A live event overtaking the backlog may be refused only because an older event (its
unit's track-in, say) has not been applied yet. So a REJECTED is final (dead letter) only when every older
pending event was in the same batch, before it, and settled; otherwise the event stays queued and is sent
again in order, where a second REJECTED is final.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import orjson

from edge.outbox import StoredEvent, now_text
from shared.events import SCHEMA_VERSION, Ack

# Kinds whose order across events decides the resulting state: they only ever leave in seq order.
ORDERED_KINDS = frozenset({"EQUIPMENT_STATUS", "STENCIL_STATUS", "SOLDER_PASTE_STATUS"})
TOO_LARGE = "EVENT_TOO_LARGE"


def encode_event(ev: StoredEvent) -> bytes:
    body: dict[str, object] = {
        "eventId": ev.event_id,
        "seq": ev.seq,
        "kind": ev.kind,
        "occurredAt": ev.occurred_at,
        "payload": orjson.Fragment(ev.payload),
    }
    if ev.station_code is not None:
        body["stationCode"] = ev.station_code
    return orjson.dumps(body)


@dataclass(frozen=True)
class Batch:
    """One EventBatch: events in seq order; the first `prefix` of them are the outbox's head, contiguous."""

    batch_id: str
    events: tuple[StoredEvent, ...]
    prefix: int
    payload: bytes

    @property
    def event_ids(self) -> list[str]:
        return [e.event_id for e in self.events]


@dataclass
class Envelope:
    edge_id: str
    line_code: str | None

    def header(self, batch_id: str) -> dict[str, object]:
        head: dict[str, object] = {"schemaVersion": SCHEMA_VERSION, "edgeId": self.edge_id}
        if self.line_code is not None:
            head["lineCode"] = self.line_code
        head["batchId"] = batch_id
        head["sentAt"] = now_text()
        return head

    def encode(self, batch_id: str, encoded: Sequence[bytes]) -> bytes:
        return orjson.dumps({**self.header(batch_id), "events": [orjson.Fragment(e) for e in encoded]})

    def overhead(self) -> int:
        """Bytes of a batch around its events (the longest batchId and sentAt), plus slack for the commas."""
        return len(orjson.dumps({**self.header(str(uuid.uuid4())), "events": []}))


@dataclass
class Selection:
    batch: Batch | None
    too_large: list[StoredEvent] = field(default_factory=list)
    live_mark: int = 0


def select(
    env: Envelope,
    head: Sequence[StoredEvent],
    live: Sequence[StoredEvent],
    *,
    live_mark: int,
    max_events: int,
    max_bytes: int,
    head_exhausted: bool,
) -> Selection:
    """Builds the next batch from the oldest pending events (`head`, in seq order) and the live candidates
    (`live`: pending, above the mark and above every head event, non-ordered kinds, in seq order).

    `head_exhausted` says `head` holds every pending event. An event too large to travel even alone is
    returned apart once it is the oldest, so the caller can dead-letter it (it would block the queue forever).
    """
    budget = max_bytes - env.overhead()
    if head and len(encode_event(head[0])) + 1 > budget:
        return Selection(None, [head[0]], live_mark)
    # The oldest event always travels, and live events get at most half a batch: the backlog keeps draining.
    taken_head: list[tuple[StoredEvent, bytes]] = []
    used = 0
    if head:
        data = encode_event(head[0])
        taken_head.append((head[0], data))
        used = len(data) + 1
    taken_live: list[tuple[StoredEvent, bytes]] = []
    live_bytes = 0
    for ev in live:
        if len(taken_live) >= max(1, max_events // 2) or len(taken_head) + len(taken_live) >= max_events:
            break
        data = encode_event(ev)
        if live_bytes + len(data) + 1 > budget // 2 or used + len(data) + 1 > budget:
            break
        taken_live.append((ev, data))
        used += len(data) + 1
        live_bytes += len(data) + 1
    for ev in head[1:]:
        if len(taken_head) + len(taken_live) >= max_events:
            break
        data = encode_event(ev)
        if used + len(data) + 1 > budget:
            break  # the head stays contiguous: an oversized event waits to be first, then is set apart
        taken_head.append((ev, data))
        used += len(data) + 1
    mark = live_mark
    if taken_live:
        mark = max(mark, taken_live[-1][0].seq)
    if head_exhausted and head and len(taken_head) == len(head):
        mark = max(mark, head[-1].seq)
    chosen = taken_head + taken_live
    if not chosen:
        return Selection(None, [], mark)
    batch_id = str(uuid.uuid4())
    events = tuple(ev for ev, _ in chosen)
    payload = env.encode(batch_id, [data for _, data in chosen])
    return Selection(Batch(batch_id, events, len(taken_head), payload), [], mark)


def reissue(env: Envelope, batch: Batch, keep: Sequence[StoredEvent], prefix: int) -> Batch:
    """The same batch (same batchId) reduced to the events still unsettled."""
    payload = env.encode(batch.batch_id, [encode_event(ev) for ev in keep])
    return replace(batch, events=tuple(keep), prefix=prefix, payload=payload)


@dataclass
class Settlement:
    delivered: list[int] = field(default_factory=list)
    dead: list[tuple[int, str, str | None]] = field(default_factory=list)
    # Stay in the batch in flight (RETRY, no result, or a refusal that may be caused by an unsettled elder).
    keep: list[StoredEvent] = field(default_factory=list)
    keep_prefix: int = 0
    # Leave the batch and go back to the queue (a live event refused before its elders were applied).
    released: list[StoredEvent] = field(default_factory=list)
    errors: list[tuple[int, str]] = field(default_factory=list)
    retry: bool = False


def settle(batch: Batch, ack: Ack) -> Settlement:
    """What one ack does to the batch in flight (edge.md delivery rules 1-3, order-safe refusals)."""
    results = {r.event_id: r for r in ack.results}
    out = Settlement()
    elders_settled = True
    for i, ev in enumerate(batch.events):
        r = results.get(ev.event_id)
        in_prefix = i < batch.prefix
        if r is not None and r.status in ("ACCEPTED", "DUPLICATE"):
            out.delivered.append(ev.seq)
            continue
        if r is not None and r.status == "REJECTED":
            code = r.code or "REJECTED"
            if in_prefix and elders_settled:
                out.dead.append((ev.seq, code, r.message))
                continue
            why = f"REJECTED {code} while older events were unsettled: will be sent again in order"
            out.errors.append((ev.seq, why))
            elders_settled = False
            if in_prefix:
                out.keep.append(ev)
                out.keep_prefix += 1
            else:
                out.released.append(ev)
            continue
        # RETRY, or central said nothing about this event: keep it in the batch and send it again.
        elders_settled = False
        out.retry = True
        note = f"RETRY {r.code or ''}: {r.message or ''}".strip(" :") if r is not None else "no result in ack"
        out.errors.append((ev.seq, note))
        out.keep.append(ev)
        if in_prefix:
            out.keep_prefix += 1
    return out
