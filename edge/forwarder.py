"""Forwards the outbox to central over MQTT (edge.md "MQTT protocol v1" and its delivery rules).

One batch in flight. An event leaves the outbox only on an ACCEPTED or DUPLICATE ack; a final REJECTED moves
it to the dead letters; RETRY (or no ack within `ack_timeout`, or a lost connection) sends the same batch
again, same batchId and eventIds. Batches are published only while connected, straight from the outbox.
The retained status message says ONLINE with the health figures, periodically and on change; the MQTT will
says OFFLINE.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from pydantic import ValidationError

from edge import batches
from edge.batches import Batch, Envelope
from edge.config import EdgeConfig
from edge.mqtt_link import MqttLink, Will
from edge.outbox import Outbox, OutboxError, now_text
from shared import topics
from shared.backoff import Backoff
from shared.events import EVENT_KINDS, Ack, EdgeStatus

log = logging.getLogger(__name__)

# Cross-process appends (`mes-edge dead-letters retry`) do not wake us: look again this often when idle.
IDLE_POLL = 1.0
# How often the status is recomputed (published only on change or every status_interval).
STATUS_TICK = 1.0
LIVE_KINDS = tuple(k for k in EVENT_KINDS if k not in batches.ORDERED_KINDS)

StatusSource = Callable[[], Awaitable[EdgeStatus]]


async def wait_any(stop: asyncio.Event, *events: asyncio.Event, within: float | None = None) -> None:
    """Returns when stop or any of the events is set, or after `within` seconds."""
    waiters = [asyncio.ensure_future(e.wait()) for e in (stop, *events)]
    try:
        await asyncio.wait(waiters, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


class Forwarder:
    def __init__(self, cfg: EdgeConfig, outbox: Outbox, status: StatusSource) -> None:
        self._cfg = cfg
        self._fwd = cfg.forwarder
        self._outbox = outbox
        self._status = status
        prefix = cfg.mqtt.topic_prefix
        self.events_topic = topics.events(cfg.edge_id, prefix)
        self.acks_topic = topics.acks(cfg.edge_id, prefix)
        self.status_topic = topics.status(cfg.edge_id, prefix)
        self._env = Envelope(cfg.edge_id, cfg.line_code)
        self.link = MqttLink(
            cfg.mqtt,
            client_id=cfg.client_id,
            subscriptions=[self.acks_topic],
            will=self._will,
            on_ready=self._on_ready,
            on_message=self._on_message,
            reconnect_min=self._fwd.reconnect_min,
            reconnect_max=self._fwd.reconnect_max,
        )
        self._retry = Backoff(base=self._fwd.retry_min, cap=self._fwd.retry_max)
        self._ready = asyncio.Event()
        self._status_dirty = asyncio.Event()
        self._batch: Batch | None = None
        self._waiter: asyncio.Future[Ack | None] | None = None
        self._live_mark = 0
        self._remark = True
        self._announce = True
        self._last_status: EdgeStatus | None = None
        # Figures for `mes-edge status`.
        self.batches_sent = 0
        self.resends = 0
        self.acks = 0
        self.last_ack_at: str | None = None
        # Running totals for the metrics listener (edge/metrics.py).
        self.events_published = 0
        self.events_acked: dict[str, int] = {}

    # ---- lifecycle --------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Drains the outbox until stop is set; then says OFFLINE (retained) and disconnects cleanly."""
        self.link.start()
        tasks = [
            asyncio.create_task(self._drain(stop), name="edge-drain"),
            asyncio.create_task(self._status_loop(stop), name="edge-status"),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            last = await self._offline_status()
            await self.link.stop((self.status_topic, last.model_dump_json(by_alias=True).encode()))
            try:
                await self._write_health(last, running=False)
            except (OutboxError, sqlite3.Error) as exc:
                log.warning("could not record the final health: %s", exc)
        for t in tasks:
            if not t.cancelled() and t.exception() is not None:
                raise t.exception()  # type: ignore[misc]

    # ---- link callbacks (on the loop) ---------------------------------------------------------------------

    def _on_ready(self, up: bool) -> None:
        if up:
            self._ready.set()
            self._remark = True
            self._announce = True
            self._status_dirty.set()
        else:
            self._ready.clear()
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_result(None)

    def _on_message(self, topic: str, payload: bytes) -> None:
        if topic != self.acks_topic:
            return
        try:
            ack = Ack.model_validate_json(payload)
        except ValidationError as exc:
            log.warning("ignored a malformed ack (%d bytes): %s", len(payload), exc.errors()[0]["msg"])
            return
        batch, waiter = self._batch, self._waiter
        if batch is None or ack.batch_id != batch.batch_id or waiter is None or waiter.done():
            log.debug("ignored an ack for batch %s, not the one in flight", ack.batch_id)
            return
        waiter.set_result(ack)

    # ---- draining ---------------------------------------------------------------------------------------

    async def _drain(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if not self.link.ready:
                await wait_any(stop, self._ready)
                continue
            if self._remark:
                # Whatever was stored before this connection is backlog; what comes after it is live.
                self._live_mark = await self._outbox.max_seq()
                self._remark = False
            if self._batch is None:
                self._outbox.appended.clear()
                self._batch = await self._next_batch()
                if self._batch is None:
                    await wait_any(stop, self._outbox.appended, within=IDLE_POLL)
                    continue
            await self._send(stop)

    async def _next_batch(self) -> Batch | None:
        n = self._fwd.batch_max_events
        while True:
            head = await self._outbox.head(n)
            exhausted = len(head) < n
            live = []
            if head and not exhausted:
                live = await self._outbox.newer(max(self._live_mark, head[-1].seq), LIVE_KINDS, n // 2 or 1)
            sel = batches.select(
                self._env,
                head,
                live,
                live_mark=self._live_mark,
                max_events=n,
                max_bytes=self._fwd.batch_max_bytes,
                head_exhausted=exhausted,
            )
            self._live_mark = sel.live_mark
            if not sel.too_large:
                return sel.batch
            ev = sel.too_large[0]
            why = f"event {ev.event_id} does not fit in a batch of {self._fwd.batch_max_bytes} bytes"
            log.error("dead-lettered: %s", why)
            await self._outbox.settle(dead=[(ev.seq, batches.TOO_LARGE, why)])
            self._status_dirty.set()

    async def _send(self, stop: asyncio.Event) -> None:
        batch = self._batch
        assert batch is not None
        waiter: asyncio.Future[Ack | None] = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        if self.link.publish(self.events_topic, batch.payload) is None:
            # The connection just went: give its callback a moment, then send this same batch on the next one.
            self._waiter = None
            await wait_any(stop, within=0.05)
            return
        self.batches_sent += 1
        self.events_published += len(batch.events)
        stopper = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait(
                {waiter, stopper}, timeout=self._fwd.ack_timeout, return_when="FIRST_COMPLETED"
            )
        finally:
            stopper.cancel()
            self._waiter = None
        if waiter.done() and waiter.result() is not None:
            await self._settle(batch, waiter.result(), stop)  # type: ignore[arg-type]
            return
        if stop.is_set():
            return
        self.resends += 1
        if waiter.done():
            log.info(
                "connection lost with batch %s in flight: it is sent again after reconnecting", batch.batch_id
            )
            return
        waiter.cancel()
        log.warning(
            "no ack for batch %s (%d events) within %.1f s: sending it again",
            batch.batch_id,
            len(batch.events),
            self._fwd.ack_timeout,
        )
        note = f"no ack within {self._fwd.ack_timeout:g} s"
        await self._outbox.settle(attempts=[(ev.seq, note) for ev in batch.events])

    async def _settle(self, batch: Batch, ack: Ack, stop: asyncio.Event) -> None:
        plan = batches.settle(batch, ack)
        await self._outbox.settle(plan.delivered, plan.dead, plan.errors)
        self.acks += 1
        self.last_ack_at = now_text()
        for r in ack.results:
            self.events_acked[r.status] = self.events_acked.get(r.status, 0) + 1
        for seq, code, message in plan.dead:
            log.warning(
                "event seq %d REJECTED by central (%s: %s): moved to the dead letters", seq, code, message
            )
        if plan.dead:
            self._status_dirty.set()
        if not plan.keep:
            self._batch = None
            self._retry.reset()
            return
        self._batch = batches.reissue(self._env, batch, plan.keep, plan.keep_prefix)
        if plan.retry:
            delay = self._retry.next_delay()
            log.info(
                "central asked to retry %d events of batch %s in %.1f s",
                len(plan.keep),
                batch.batch_id,
                delay,
            )
            await wait_any(stop, within=delay)

    # ---- status -----------------------------------------------------------------------------------------

    def _will(self) -> Will:
        last = self._last_status or EdgeStatus(state="OFFLINE")
        will = last.model_copy(update={"state": "OFFLINE", "devices": []})
        return Will(self.status_topic, will.model_dump_json(by_alias=True).encode())

    async def _offline_status(self) -> EdgeStatus:
        try:
            status = await self._status()
        except Exception as exc:  # the outbox may be the reason we stop: fall back to the last figures
            log.warning("could not compute the final status: %s", exc)
            status = self._last_status or EdgeStatus(state="OFFLINE")
        return status.model_copy(update={"state": "OFFLINE", "devices": []})

    async def _status_loop(self, stop: asyncio.Event) -> None:
        last_sig: Any = None
        last_pub = 0.0
        while not stop.is_set():
            self._status_dirty.clear()
            self._outbox.fill_changed.clear()
            status = await self._status()
            self._last_status = status
            await self._write_health(status, running=True)
            sig = _signature(status)
            due = time.monotonic() - last_pub >= self._fwd.status_interval
            if self.link.ready and (self._announce or sig != last_sig or due):
                payload = status.model_dump_json(by_alias=True).encode()
                if self.link.publish(self.status_topic, payload, retain=True) is not None:
                    last_sig, last_pub, self._announce = sig, time.monotonic(), False
            await wait_any(stop, self._status_dirty, self._outbox.fill_changed, within=STATUS_TICK)

    def info(self) -> dict[str, Any]:
        batch = self._batch
        return {
            "broker": self._cfg.mqtt.endpoint,
            "connected": self.link.ready,
            "lastError": self.link.last_error,
            "connects": self.link.connects,
            "inflightBatch": batch.batch_id if batch else None,
            "inflightEvents": len(batch.events) if batch else 0,
            "batchesSent": self.batches_sent,
            "resends": self.resends,
            "acks": self.acks,
            "lastAckAt": self.last_ack_at,
        }

    async def _write_health(self, status: EdgeStatus, *, running: bool) -> None:
        """What `mes-edge status` shows: the status message plus the link's state, with a heartbeat time."""
        health = {
            "agent": "RUNNING" if running else "STOPPED",
            "pid": os.getpid(),
            "updatedAt": now_text(),
            "status": status.wire(),
            "mqtt": self.info(),
        }
        await self._outbox.put_meta("health", orjson.dumps(health).decode())


def _signature(status: EdgeStatus) -> tuple[Any, ...]:
    """What counts as a change worth an immediate status message (the backlog figure alone is not)."""
    devices = tuple((d.id, d.state, d.last_error) for d in status.devices)
    return (status.state, devices, tuple(status.alarms), status.dead_letters, status.backlog == 0)
