"""OPC UA driver (edge.md "Drivers" and "Library notes"): subscriptions with a polled fallback.

The driver owns reconnection: after a failed session it throws the client away and builds a fresh one
(asyncua's auto-reconnect has been reported to hang), then reads the watched values and only then
re-creates the subscriptions. Reading first keeps updates in time order: the subscription's first
notification (the current value, not an event) can only be as new as or newer than the read, and a change
made during the outage shows up as a difference from the last value the rules saw, so it is neither missed
nor reported twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from asyncua import Client, ua
from asyncua.crypto import security_policies

from edge.device_config import OpcuaDevice, OpcuaSignal
from edge.drivers import DeviceError, LinkHealth, Reading, utcnow
from edge.drivers.decode import scaled

log = logging.getLogger("edge.opcua")

# What a broken session can raise from asyncua (its own errors, the socket's, and timeouts).
_IO_ERRORS: tuple[type[BaseException], ...] = (ua.UaError, OSError, asyncio.TimeoutError, ConnectionError)


@dataclass(frozen=True)
class EventWatch:
    """A node_event rule's subscription: events of `event_type` emitted by `node`."""

    rule: str
    node: str
    event_type: str | None = None


@dataclass
class EventNotice:
    """One OPC UA event: which rule's watch it matched, its id, its time and its fields by browse name."""

    rules: list[str]
    event_id: str
    at: datetime
    fields: dict[str, Any] = field(default_factory=dict)


_LOST = "lost"


def _aware(t: datetime | None) -> datetime | None:
    if t is None:
        return None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def _coerce(sig: OpcuaSignal, value: Any) -> Any:
    if value is None or sig.type is None:
        return scaled(value, sig.scale)
    try:
        if sig.type == "string":
            return str(value)
        if sig.type == "bool":
            return bool(value)
        if sig.type.startswith("float"):
            return scaled(float(value), sig.scale)
        return scaled(int(value), sig.scale)
    except (TypeError, ValueError) as exc:
        raise DeviceError(f"signal {sig.name!r}: {value!r} is not a {sig.type}") from exc


class _Handler:
    """asyncua calls these on its own task; they only enqueue, tagged with the session generation."""

    def __init__(self, driver: OpcuaDriver, gen: int) -> None:
        self._driver = driver
        self._gen = gen

    async def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
        name = self._driver._names_by_node.get(node.nodeid.to_string())
        if name is None:
            return
        dv = data.monitored_item.Value
        ts = _aware(dv.SourceTimestamp or dv.ServerTimestamp)
        self._driver._queue.put_nowait((self._gen, "data", (name, val, ts)))

    async def event_notification(self, event: Any) -> None:
        self._driver._queue.put_nowait((self._gen, "event", event))

    async def status_change_notification(self, status: Any) -> None:
        self._driver._queue.put_nowait((self._gen, _LOST, f"subscription status {status.Status}"))


class OpcuaDriver:
    """Watches trigger signals of one OPC UA server and reads record signals on demand."""

    protocol = "opcua"

    def __init__(self, device: OpcuaDevice) -> None:
        self.device = device
        self.health = LinkHealth(
            f"opcua {device.id} {device.endpoint}", log, device.reconnect_min, device.reconnect_max
        )
        self._client: Client | None = None
        self._gen = 0
        self._queue: asyncio.Queue[tuple[int, str, Any]] = asyncio.Queue()
        self._watch: list[str] = []
        self._events: list[EventWatch] = []
        self._names_by_node: dict[str, str] = {}
        self.polling = not device.subscribe
        self.subscriptions = 0  # subscriptions created over the driver's life (re-created after reconnects)
        self.last_error: str | None = None

    @property
    def device_id(self) -> str:
        return self.device.id

    def watch(self, signals: Sequence[str], events: Sequence[EventWatch] = ()) -> None:
        """What to follow: trigger signals (data change) and node events. Call before the first update."""
        self._watch = list(dict.fromkeys(signals))
        self._events = list(events)

    # --- connection -------------------------------------------------------------------------------

    async def _new_client(self) -> Client:
        d = self.device
        client = Client(d.endpoint, timeout=d.timeout, watchdog_intervall=d.watchdog_interval)
        sec = d.security
        if sec.policy != "None":
            if sec.application_uri:
                client.application_uri = sec.application_uri
            assert sec.certificate is not None and sec.private_key is not None
            await client.set_security(
                getattr(security_policies, f"SecurityPolicy{sec.policy}"),
                certificate=str(sec.certificate),
                private_key=str(sec.private_key),
                private_key_password=sec.private_key_password.get_secret_value()
                if sec.private_key_password
                else None,
                server_certificate=str(sec.server_certificate) if sec.server_certificate else None,
                mode=getattr(ua.MessageSecurityMode, sec.mode),
            )
        if d.username:
            client.set_user(d.username)
            client.set_password(d.password.get_secret_value() if d.password else "")
        if d.user_certificate and d.user_private_key:
            await client.load_client_certificate(str(d.user_certificate))
            await client.load_private_key(d.user_private_key)
        return client

    async def _connect(self) -> None:
        """One attempt: fresh client, session, re-read of the watched values, then subscriptions."""
        self._gen += 1
        gen = self._gen
        client = await self._new_client()

        async def lost(exc: Exception) -> None:
            self._queue.put_nowait((gen, _LOST, f"{type(exc).__name__}: {exc}"))

        client.connection_lost_callback = lost
        await asyncio.wait_for(client.connect(), self.device.timeout * 2)
        self._client = client
        try:
            if self._watch:
                (first,) = await self._read(client, self._watch, [None])
                self._queue.put_nowait((gen, "reading", first))
            if not self.polling:
                await self._subscribe(client, gen)
        except BaseException:
            await self._discard()
            raise

    async def _subscribe(self, client: Client, gen: int) -> None:
        try:
            sub = await client.create_subscription(
                self.device.publishing_interval * 1000, _Handler(self, gen)
            )
            if self._watch:
                nodes = [client.get_node(self._node_of(n, None)) for n in self._watch]
                self._names_by_node = {
                    node.nodeid.to_string(): n for node, n in zip(nodes, self._watch, strict=True)
                }
                results = await sub.subscribe_data_change(nodes, sampling_interval=0)
                bad = [r for r in results if isinstance(r, ua.StatusCode)]
                if bad:
                    raise ua.UaStatusCodeError(bad[0].value)
            for w in self._events:
                await sub.subscribe_events(w.node, w.event_type or ua.ObjectIds.BaseEventType)
        except (ua.UaError, NotImplementedError) as exc:
            # A server without (working) subscriptions: poll instead, and say so once.
            log.warning(
                "%s: subscriptions unavailable (%s); polling every %.2f s",
                self.device.id,
                exc,
                self.device.poll_interval,
            )
            self.polling = True
            if self._events:
                log.warning(
                    "%s: node_event rules need subscriptions; their events are not received", self.device.id
                )
            return
        self.subscriptions += 1

    async def _discard(self) -> None:
        """Drop the current client without waiting on a dead peer (a fresh one is built on reconnect)."""
        client, self._client = self._client, None
        self._names_by_node = {}
        if client is None:
            return
        client.connection_lost_callback = None
        with contextlib.suppress(*_IO_ERRORS, RuntimeError):
            await asyncio.wait_for(client.disconnect(), 2)
        with contextlib.suppress(Exception):
            client.disconnect_socket()

    async def _ensure(self) -> None:
        """Connect (with backoff between attempts) until connected; cancellable."""
        while self._client is None:
            delay = self.health.next_attempt - time.monotonic()
            if delay > 0:
                await asyncio.sleep(min(delay, self.device.reconnect_max))
                continue
            try:
                await self._connect()
            except (*_IO_ERRORS, RuntimeError) as exc:
                self.health.failed(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
                continue
            self.health.connected()

    async def _lost(self, why: str) -> None:
        await self._discard()
        self.health.failed(why)

    # --- reading ----------------------------------------------------------------------------------

    def _node_of(self, name: str, slot: int | None) -> str:
        sig = self.device.signal(name)
        if sig is None:
            raise DeviceError(f"device {self.device.id!r} has no signal {name!r}")
        return sig.node.replace("{slot}", str(slot if slot is not None else 0))

    async def _read(self, client: Client, names: Sequence[str], slots: Sequence[int | None]) -> list[Reading]:
        nodes = [client.get_node(self._node_of(n, slot)) for slot in slots for n in names]
        dvs = await client.read_attributes(nodes, ua.AttributeIds.Value)
        at = utcnow()
        out: list[Reading] = []
        for i in range(len(slots)):
            values: dict[str, Any] = {}
            times: dict[str, datetime | None] = {}
            for name, dv in zip(names, dvs[i * len(names) : (i + 1) * len(names)], strict=True):
                if not dv.StatusCode.is_good():
                    raise DeviceError(f"signal {name!r}: {dv.StatusCode.name}")
                sig = self.device.signal(name)
                assert sig is not None
                values[name] = _coerce(sig, dv.Value.Value if dv.Value is not None else None)
                times[name] = _aware(dv.SourceTimestamp or dv.ServerTimestamp)
            out.append(Reading(values=values, at=at, times=times))
        return out

    async def read(self, names: Sequence[str], slot: int | None = None, stride: int = 0) -> Reading:
        """Current values of `names` in one request; `{slot}` in node ids becomes `slot`."""
        (reading,) = await self.read_slots(names, [slot])
        return reading

    async def read_slots(self, names: Sequence[str], slots: Sequence[int | None]) -> list[Reading]:
        """The same signals of several buffer slots in one request: catching up on k records costs one round
        trip instead of k (a tester that answers slowly would otherwise fall behind its own takt)."""
        client = self._client
        if client is None:
            raise DeviceError(self.health.last_error or "not connected")
        try:
            readings = await self._read(client, names, slots)
        except _IO_ERRORS as exc:
            await self._lost(f"{type(exc).__name__}: {exc}")
            raise DeviceError(self.health.last_error or "read failed") from exc
        except DeviceError as exc:
            self.last_error = str(exc)
            raise
        self.last_error = None
        self.health.ok()
        return readings

    async def next_update(self) -> Reading | EventNotice:
        """The next change of a watched signal (or an event); reconnects as needed. Cancellable."""
        while True:
            await self._ensure()
            timeout = self.device.poll_interval if self.polling else None
            try:
                gen, kind, item = await asyncio.wait_for(self._queue.get(), timeout)
            except TimeoutError:
                try:
                    return await self.read(self._watch)
                except DeviceError:
                    continue
            if gen != self._gen:
                continue  # from a session already replaced: the re-read after reconnect supersedes it
            if kind == _LOST:
                await self._lost(str(item))
                continue
            self.health.ok()
            if kind == "reading":
                return item
            if kind == "data":
                name, val, ts = item
                sig = self.device.signal(name)
                assert sig is not None
                try:
                    value = _coerce(sig, val)
                except DeviceError as exc:
                    self.last_error = str(exc)
                    continue
                return Reading(values={name: value}, at=utcnow(), times={name: ts})
            notice = self._notice(item)
            if notice.rules:
                return notice

    def _notice(self, event: Any) -> EventNotice:
        fields: dict[str, Any] = {}
        for k, v in event.get_event_props_as_fields_dict().items():
            fields[k] = v.Value if isinstance(v, ua.Variant) else v
        raw_id = fields.get("EventId")
        event_id = raw_id.hex() if isinstance(raw_id, (bytes, bytearray)) else str(raw_id or "")
        etype = fields.get("EventType")
        etype_s = etype.to_string() if isinstance(etype, ua.NodeId) else str(etype or "")
        rules = [w.rule for w in self._events if not w.event_type or _same_node(w.event_type, etype_s)]
        t = fields.get("Time")
        at = _aware(t) if isinstance(t, datetime) else utcnow()
        return EventNotice(rules=rules, event_id=event_id, at=at or utcnow(), fields=fields)

    # --- status -----------------------------------------------------------------------------------

    @property
    def state(self) -> str:
        if self.health.state == "CONNECTED" and self.last_error:
            return "ERROR"
        return self.health.state

    @property
    def error(self) -> str | None:
        return self.last_error or self.health.last_error

    async def close(self) -> None:
        await self._discard()
        self.health.stopped()


def _same_node(a: str, b: str) -> bool:
    try:
        return ua.NodeId.from_string(a) == ua.NodeId.from_string(b)
    except (ValueError, ua.UaError):
        return a == b
