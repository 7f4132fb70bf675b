"""A simulated SPI/AOI/ICT machine: an asyncua server publishing its test records (layout.py), with faults."""

from __future__ import annotations

import logging
import socket
from datetime import UTC, datetime
from typing import Any

from asyncua import Server, ua

from edge.sim import layout
from edge.sim.config import SimStation

log = logging.getLogger("edge.sim.tester")

_VT = {"String": ua.VariantType.String, "DateTime": ua.VariantType.DateTime, "Double": ua.VariantType.Double}


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class SimTester:
    """Holds the record model; the OPC UA server is a view of it and can be stopped and started again."""

    def __init__(self, station: SimStation) -> None:
        self.station = station
        self.kind = station.kind
        self.buffer = station.buffer
        self.measures = layout.MEASURES[self.kind]
        self.port = station.port or free_port(station.host)
        self.count = 0
        self.status = layout.STATUS_RUN
        self.last: dict[str, Any] = {}
        self.slots: dict[int, dict[str, Any]] = {}
        self._server: Server | None = None
        self._listening = False
        self._nodes: dict[str, ua.NodeId] = {}
        self._types: dict[str, ua.VariantType] = {}

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://{self.station.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._listening

    def _fields(self) -> dict[str, str]:
        return {**layout.TESTER_FIELDS, **{f"M.{m.name}": "Double" for m in self.measures}}

    async def _build(self) -> Server:
        server = Server()
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_server_name(f"mes-sim {self.station.code}")
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        idx = await server.register_namespace(layout.NAMESPACE_URI)
        root = await server.nodes.objects.add_object(ua.NodeId("Tester", idx), "Tester")

        async def var(parent: Any, node: str, name: str, value: Any, vt: ua.VariantType) -> None:
            nid = ua.NodeId.from_string(node)
            await parent.add_variable(nid, name, ua.Variant(value, vt))
            self._nodes[node] = nid
            self._types[node] = vt

        await var(root, layout.STATUS_NODE, "Status", self.status, ua.VariantType.Int32)
        await var(root, layout.COUNT_NODE, "RecordCount", self.count, ua.VariantType.UInt32)
        limits = await root.add_object(ua.NodeId("Tester.Limits", idx), "Limits")
        for m in self.measures:
            await var(
                limits, layout.limit_node(m.name, "Low"), f"{m.name}.Low", float(m.low), ua.VariantType.Double
            )
            await var(
                limits,
                layout.limit_node(m.name, "High"),
                f"{m.name}.High",
                float(m.high),
                ua.VariantType.Double,
            )
        slots: list[int | None] = [None, *range(self.buffer)]
        for slot in slots:
            where = "Last" if slot is None else f"Records[{slot}]"
            obj = await root.add_object(ua.NodeId(f"Tester.{where}", idx), where)
            record = self.last if slot is None else self.slots.get(slot, {})
            for field, tname in self._fields().items():
                await var(
                    obj, layout.tester_node(field, slot), field, self._value(record, field, tname), _VT[tname]
                )
        return server

    @staticmethod
    def _value(record: dict[str, Any], field: str, tname: str) -> Any:
        if field in record:
            return record[field]
        return {"String": "", "Double": 0.0, "DateTime": datetime(1601, 1, 1, tzinfo=UTC)}[tname]

    async def start(self) -> None:
        """Start serving; the first time builds the address space (seconds), a restart keeps it."""
        if self._listening:
            return
        if self._server is None:
            self._server = await self._build()
        await self._server.start()
        self._listening = True

    async def stop(self) -> None:
        """The machine's server stops (sessions and subscriptions die); the records are kept."""
        if self._server is not None and self._listening:
            await self._server.stop()
        self._listening = False

    async def close(self) -> None:
        await self.stop()
        self._server = None

    def drop_connections(self) -> int:
        """Close every client's socket; the server keeps listening."""
        if self._server is None:
            return 0
        transports = list(self._server.iserver.asyncio_transports)
        for t in transports:
            t.close()
        return len(transports)

    async def _write(self, node: str, value: Any) -> None:
        if self._server is None:
            return
        now = datetime.now(UTC)
        dv = ua.DataValue(ua.Variant(value, self._types[node]), SourceTimestamp=now, ServerTimestamp=now)
        await self._server.write_attribute_value(self._nodes[node], dv)

    async def set_status(self, status: int) -> None:
        self.status = status
        await self._write(layout.STATUS_NODE, status)

    async def write_record(self, values: dict[str, Any]) -> int:
        """Store a record (buffer slot, last record), then count it. `values` uses layout field names."""
        n = self.count + 1
        record = {f: self._value(values, f, t) for f, t in self._fields().items()}
        if self.buffer:
            slot = n % self.buffer
            self.slots[slot] = record
            for f in record:
                await self._write(layout.tester_node(f, slot), record[f])
        self.last = record
        for f in record:
            await self._write(layout.tester_node(f, None), record[f])
        self.count = n
        await self._write(layout.COUNT_NODE, n)
        return n
