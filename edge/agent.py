"""The edge agent: owns the outbox, the forwarder and the device acquisition, and stops them in order."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Protocol

from edge.config import EdgeConfig
from edge.forwarder import Forwarder
from edge.outbox import NewEvent, Outbox
from shared.events import DeviceStatus, EdgeStatus

if TYPE_CHECKING:
    from edge.metrics import MetricsServer

log = logging.getLogger(__name__)

OUTBOX_FULL = "OUTBOX_FULL"
# The most recent device warnings (GAP, …) carried in the status message; older ones are in the log.
MAX_WARNINGS = 20


def agent_version() -> str:
    try:
        return version("smt-mes")
    except PackageNotFoundError:
        return "0+unknown"


class DeviceSide(Protocol):
    """What the agent needs of edge.acquisition.Acquisition."""

    async def run(self, stop: asyncio.Event) -> None: ...

    def device_states(self) -> list[DeviceStatus]: ...

    def warnings(self) -> Sequence[str]: ...


Sink = Callable[[list[NewEvent]], Awaitable[bool]]


def _acquisition(cfg: EdgeConfig, sink: Sink) -> DeviceSide:
    # Imported only when devices are configured: an agent without devices needs no driver library.
    from edge.acquisition import Acquisition

    # The devices' last trigger values live beside the outbox, so a restart catches up instead of re-reading.
    return Acquisition(
        cfg,
        sink,
        state_path=cfg.outbox.path.parent / f"{cfg.edge_id}.acquisition.json",
        reorder_window=cfg.acquisition.reorder_window,
    )


class Agent:
    """`await Agent(cfg).run(stop)` runs until stop is set (or a part fails, which is re-raised)."""

    def __init__(self, cfg: EdgeConfig) -> None:
        self.cfg = cfg
        self.version = agent_version()
        self.started_at = datetime.now(UTC)
        self.outbox: Outbox | None = None
        self.forwarder: Forwarder | None = None
        self.devices: DeviceSide | None = None
        self.metrics: MetricsServer | None = None  # the `[metrics]` listener, when configured
        # Set once the outbox is open and every part runs (tests and the CLI wait on it).
        self.started = asyncio.Event()

    async def status(self) -> EdgeStatus:
        """The health figures of the status message (state ONLINE: only sent while connected)."""
        assert self.outbox is not None
        stats = await self.outbox.stats()
        alarms = [OUTBOX_FULL] if stats.full else []
        devices: list[DeviceStatus] = []
        if self.devices is not None:
            devices = self.devices.device_states()
            alarms += list(self.devices.warnings())[-MAX_WARNINGS:]
        return EdgeStatus(
            state="ONLINE",
            version=self.version,
            started_at=self.started_at,
            backlog=stats.backlog,
            oldest_pending_at=stats.oldest_pending_at,
            dead_letters=stats.dead_letters,
            devices=devices,
            alarms=alarms,
        )

    async def run(self, stop: asyncio.Event) -> None:
        cfg = self.cfg
        self.outbox = await Outbox.open(
            cfg.outbox.path,
            edge_id=cfg.edge_id,
            max_events=cfg.outbox.max_events,
            max_bytes=cfg.outbox.max_bytes,
        )
        # The parts stop on their own stop event, so a failing part can stop the others the same way.
        inner = asyncio.Event()
        relay = asyncio.create_task(_relay(stop, inner), name="edge-stop")
        tasks: list[asyncio.Task[None]] = []
        metrics = None
        try:
            self.forwarder = Forwarder(cfg, self.outbox, self.status)
            if cfg.metrics is not None:
                # Imported only when configured: an agent without the listener loads no HTTP server.
                from edge.metrics import MetricsServer

                metrics = self.metrics = MetricsServer(cfg.metrics, self.status, self.forwarder)
                try:
                    await metrics.start()
                except OSError as exc:
                    # Monitoring must not stop the line's acquisition: run on without the listener.
                    log.error("metrics listener %s not started: %s", cfg.metrics.listen, exc)
                    metrics = self.metrics = None
            tasks.append(asyncio.create_task(self.forwarder.run(inner), name="edge-forwarder"))
            if cfg.devices:
                self.devices = _acquisition(cfg, self.outbox.append)
                tasks.append(asyncio.create_task(self.devices.run(inner), name="edge-acquisition"))
            log.info(
                "edge agent %s %s started: line %s, %d devices, outbox %s, broker %s",
                cfg.edge_id,
                self.version,
                cfg.line_code or "-",
                len(cfg.devices),
                cfg.outbox.path,
                cfg.mqtt.endpoint,
            )
            self.started.set()
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            early = None if inner.is_set() else next(iter(done))
            if early is not None:
                log.error("%s ended unexpectedly: stopping the agent", early.get_name())
                inner.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            if early is not None and not early.cancelled() and early.exception() is None:
                raise RuntimeError(f"{early.get_name()} ended before the agent was asked to stop")
        finally:
            inner.set()
            relay.cancel()
            for t in tasks:
                if not t.done():
                    t.cancel()
            await asyncio.gather(*tasks, relay, return_exceptions=True)
            if metrics is not None:
                await metrics.stop()
            await self.outbox.close()
            log.info("edge agent %s stopped", cfg.edge_id)
        for t in tasks:
            exc = None if t.cancelled() else t.exception()
            if exc is not None:
                raise exc


async def _relay(outer: asyncio.Event, inner: asyncio.Event) -> None:
    await outer.wait()
    inner.set()
