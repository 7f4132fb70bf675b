"""A TCP proxy the test controls, to cut the network between two real parts (edge ↔ broker, central ↔ DB).

`cut()` behaves like a pulled cable, not like a refusing server: bytes stop flowing both ways, connections
stay open without an error, and new connections are accepted but never answered — the client finds out only by
its own timeouts (MQTT keepalive, TCP/DB timeouts). `restore()` drops every connection that lived through the
cut (their peers' state has moved on, as after a real outage long enough to time out) and forwards again.
`reset()` closes every connection at once (a peer restarting), without a cut.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from tests.brokers import free_port


@dataclass(eq=False)
class _Pipe:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def close(self) -> None:
        for w in (self.client, self.upstream):
            if w is not None:
                transport = w.transport
                with contextlib.suppress(Exception):
                    transport.abort()
        for t in self.tasks:
            t.cancel()


class TcpProxy:
    def __init__(self, target_host: str, target_port: int, listen_port: int | None = None) -> None:
        self.target = (target_host, target_port)
        self.port = listen_port or free_port()
        self._server: asyncio.Server | None = None
        self._pipes: set[_Pipe] = set()
        self._open = asyncio.Event()
        self._open.set()
        self.connections = 0  # accepted since start
        self.cuts = 0

    @property
    def is_cut(self) -> bool:
        return not self._open.is_set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self.reset()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    def cut(self) -> None:
        if self._open.is_set():
            self.cuts += 1
            self._open.clear()

    def restore(self) -> None:
        if not self._open.is_set():
            self.reset()
            self._open.set()

    def reset(self) -> None:
        for pipe in list(self._pipes):
            pipe.close()
        self._pipes.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        pipe = _Pipe(writer)
        self._pipes.add(pipe)
        try:
            await self._open.wait()  # during a cut: accepted, never answered
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except (OSError, asyncio.CancelledError):
            pipe.close()
            self._pipes.discard(pipe)
            return
        if pipe not in self._pipes:  # reset while connecting
            up_writer.transport.abort()
            return
        pipe.upstream = up_writer
        pipe.tasks = [
            asyncio.create_task(self._pump(reader, up_writer, pipe)),
            asyncio.create_task(self._pump(up_reader, writer, pipe)),
        ]

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, pipe: _Pipe) -> None:
        try:
            while True:
                data = await src.read(65536)
                if not data:
                    break
                if not self._open.is_set():
                    continue  # the cable is out: bytes vanish
                dst.write(data)
                await dst.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            pipe.close()
            self._pipes.discard(pipe)
