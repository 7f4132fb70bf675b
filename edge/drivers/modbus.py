"""Modbus TCP driver (edge.md "Drivers"): one client and one lock per physical endpoint, coalesced reads.

The agent owns reconnection (pymodbus's own is switched off): a failed request closes the link, and the next
connect is tried only after an exponential, jittered, capped delay (shared.backoff). Devices behind one
gateway (same host:port, different unit ids) share the link; the lock keeps their requests from interleaving.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from edge.device_config import ModbusDevice, ModbusSignal
from edge.drivers import DeviceError, LinkHealth, Reading, utcnow
from edge.drivers.decode import decode, scaled

log = logging.getLogger("edge.modbus")

MAX_REGISTERS = 120  # per request (Modbus allows 125)
MAX_BITS = 2000
MAX_GAP = 16  # unused registers read to save a round trip


@dataclass(frozen=True)
class _Span:
    table: str
    start: int
    count: int
    signals: tuple[tuple[ModbusSignal, int], ...]  # (signal, absolute address)


def plan_reads(signals: Sequence[tuple[ModbusSignal, int]]) -> list[_Span]:
    """Group (signal, address) pairs into as few requests as the protocol's limits allow."""
    spans: list[_Span] = []
    for table in ("coil", "discrete_input", "holding", "input"):
        items = sorted(((s, a) for s, a in signals if s.table == table), key=lambda x: x[1])
        limit = MAX_BITS if table in ("coil", "discrete_input") else MAX_REGISTERS
        cur: list[tuple[ModbusSignal, int]] = []
        start = end = 0
        for sig, addr in items:
            stop = addr + sig.width
            if cur and addr - end <= MAX_GAP and max(end, stop) - start <= limit:
                cur.append((sig, addr))
                end = max(end, stop)
                continue
            if cur:
                spans.append(_Span(table, start, end - start, tuple(cur)))
            cur, start, end = [(sig, addr)], addr, stop
        if cur:
            spans.append(_Span(table, start, end - start, tuple(cur)))
    return spans


class ModbusLink:
    """One TCP connection to one endpoint, shared by every device behind it."""

    def __init__(self, device: ModbusDevice) -> None:
        pymodbus_log = logging.getLogger("pymodbus")
        if pymodbus_log.level == logging.NOTSET:
            # pymodbus warns on every failed retry; the link logs once on loss and once on recovery instead.
            pymodbus_log.setLevel(logging.CRITICAL)
        self.endpoint = f"{device.host}:{device.port}"
        self.client = AsyncModbusTcpClient(
            device.host,
            port=device.port,
            timeout=device.timeout,
            retries=device.retries,
            reconnect_delay=0,  # we reconnect, with backoff and jitter
            name=f"modbus {self.endpoint}",
        )
        self.lock = asyncio.Lock()
        self.health = LinkHealth(f"modbus {self.endpoint}", log, device.reconnect_min, device.reconnect_max)
        self.requests = 0

    async def _ensure_connected(self) -> None:
        if self.client.connected:
            return
        if not self.health.may_attempt():
            raise DeviceError(self.health.last_error or "waiting to reconnect")
        if not await self.client.connect():
            self.health.failed(f"cannot connect to {self.endpoint}")
            raise DeviceError(self.health.last_error or "cannot connect")
        # Recovered only once a request is answered: a port that accepts and drops is still down.

    async def read(self, unit_id: int, span: _Span) -> list[int] | list[bool]:
        """One request under the link's lock; any failure closes the link so the next poll reconnects."""
        async with self.lock:
            await self._ensure_connected()
            c = self.client
            self.requests += 1
            try:
                if span.table == "coil":
                    rsp = await c.read_coils(span.start, count=span.count, device_id=unit_id)
                elif span.table == "discrete_input":
                    rsp = await c.read_discrete_inputs(span.start, count=span.count, device_id=unit_id)
                elif span.table == "holding":
                    rsp = await c.read_holding_registers(span.start, count=span.count, device_id=unit_id)
                else:
                    rsp = await c.read_input_registers(span.start, count=span.count, device_id=unit_id)
            except (TimeoutError, ModbusException, OSError) as exc:
                c.close()
                self.health.failed(f"{type(exc).__name__}: {exc}")
                raise DeviceError(self.health.last_error or "request failed") from exc
            if self.health.state != "CONNECTED":
                self.health.connected()
            if rsp.isError():
                # The device answered, so the link is fine: the request itself is wrong (address, unit id).
                raise DeviceError(
                    f"unit {unit_id} refused {span.table} {span.start}+{span.count}: "
                    f"exception code {getattr(rsp, 'exception_code', '?')}"
                )
            self.health.ok()
            if span.table in ("coil", "discrete_input"):
                return list(rsp.bits[: span.count])
            return list(rsp.registers)

    def close(self) -> None:
        self.client.close()
        self.health.stopped()


# A signal's value out of its span's data at its index: made once per signal, used on every poll.
_Decoder = Callable[[Sequence[Any], int], Any]


def _decoder(sig: ModbusSignal) -> _Decoder:
    if sig.table in ("coil", "discrete_input"):
        return lambda data, i: bool(data[i])
    if sig.scale is None and sig.byte_order == "big" and sig.type in ("uint16", "int16"):
        # One big-endian register, the most common value: what decode() gives, without its byte shuffling.
        if sig.type == "uint16":
            return lambda data, i: int(data[i])
        return lambda data, i: int(data[i]) - 0x10000 if int(data[i]) & 0x8000 else int(data[i])
    width, type_, scale = sig.width, sig.type, sig.scale
    orders = {"byte_order": sig.byte_order, "word_order": sig.word_order}

    def generic(data: Sequence[Any], i: int) -> Any:
        return scaled(decode([int(r) for r in data[i : i + width]], type_, **orders), scale)

    return generic


# (span, [(signal name, index in the span's data, decoder)]): one read of a set of signals, planned once.
_Plan = list[tuple[_Span, list[tuple[str, int, _Decoder]]]]
MAX_PLANS = 32  # sets of signals a device reads at offset 0 (its poll, a rule's record): a handful


class ModbusDriver:
    """Reads a device's signals by name through its endpoint's link."""

    protocol = "modbus"

    def __init__(self, device: ModbusDevice, link: ModbusLink) -> None:
        self.device = device
        self.link = link
        self.last_error: str | None = None
        self._signals = {s.name: s for s in device.signals}
        # A poll reads the same signals every time: their requests and decoders are worked out once.
        self._plans: dict[tuple[str, ...], _Plan] = {}

    @property
    def device_id(self) -> str:
        return self.device.id

    def _plan(self, names: Sequence[str], offset: int) -> _Plan:
        key = tuple(names)
        plan = self._plans.get(key) if offset == 0 else None
        if plan is not None:
            return plan
        wanted: list[tuple[ModbusSignal, int]] = []
        for n in names:
            sig = self._signals.get(n)
            if sig is None:
                raise DeviceError(f"device {self.device.id!r} has no signal {n!r}")
            wanted.append((sig, sig.address + offset))
        plan = [
            (span, [(sig.name, addr - span.start, _decoder(sig)) for sig, addr in span.signals])
            for span in plan_reads(wanted)
        ]
        if offset == 0 and len(self._plans) < MAX_PLANS:
            self._plans[key] = plan
        return plan

    async def read(self, names: Sequence[str], slot: int | None = None, stride: int = 0) -> Reading:
        """Current values of `names`; with a slot, record signals are read `slot·stride` registers further."""
        plan = self._plan(names, (slot or 0) * stride)
        values: dict[str, Any] = {}
        try:
            for span, fields in plan:
                data = await self.link.read(self.device.unit_id, span)
                for name, i, value_of in fields:
                    values[name] = value_of(data, i)
        except DeviceError as exc:
            self.last_error = str(exc)
            raise
        self.last_error = None
        return Reading(values=values, at=utcnow())

    @property
    def state(self) -> str:
        h = self.link.health
        if h.state == "CONNECTED" and self.last_error:
            return "ERROR"
        return h.state

    @property
    def error(self) -> str | None:
        return self.last_error or self.link.health.last_error

    async def close(self) -> None:
        self.link.close()
