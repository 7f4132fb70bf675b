"""aiohttp application factory: resources in cleanup_ctx, routes from the endpoint registry."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from central.api import keys
from central.api.handlers import ROUTERS
from central.api.metrics import metrics_mw
from central.api.middlewares import audit_mw, auth_mw, error_mw, idempotency_mw, request_id_mw
from central.api.registry import Endpoint, Router
from central.api.request import make_handler
from central.config import Settings
from central.db.engine import Database, create_database
from central.db.migrate import upgrade
from central.integration.outbound_worker import run_outbound_worker
from central.integration.scheduler import run_scheduler
from central.mqtt.broker import EmbeddedBroker
from central.mqtt.consumer import MqttConsumer
from central.services import bootstrap
from central.services.auth import AuthService

log = logging.getLogger("central")


def all_endpoints() -> list[Endpoint]:
    return [ep for router in ROUTERS for ep in router.endpoints]


def create_app(
    settings: Settings, *, database: Database | None = None, extra_routers: list[Router] | None = None
) -> web.Application:
    app = web.Application(
        middlewares=[metrics_mw, request_id_mw, error_mw, audit_mw, auth_mw, idempotency_mw],
        client_max_size=settings.http_max_body_bytes,
        # A query of the documented maximum (filters ≤ 200 characters, up to 12 bytes each once %-encoded)
        # must reach validation: a longer request line gets aiohttp's plain-text 400, not the envelope.
        handler_args={"max_line_size": 64 * 1024},
    )
    app[keys.SETTINGS] = settings
    app[keys.STATE] = {"mqtt": "disabled"}
    endpoints = all_endpoints() + [ep for r in extra_routers or [] for ep in r.endpoints]
    app[keys.ENDPOINTS] = endpoints
    for ep in endpoints:
        app.router.add_route(ep.method, "/api" + ep.path, make_handler(ep))

    async def db_ctx(app: web.Application) -> AsyncIterator[None]:
        db = database or create_database(
            settings.database_url, pool_size=settings.database_pool_size, echo=settings.database_echo
        )
        if settings.migrate_on_start:
            await upgrade(db.engine)
        app[keys.DB] = db
        app[keys.AUTH] = AuthService(db.reader)
        await bootstrap.ensure_admin(db.writer, settings)
        yield
        if database is None:
            await db.dispose()

    async def mqtt_ctx(app: web.Application) -> AsyncIterator[None]:
        app[keys.MQTT] = None
        if settings.mqtt_url == "disabled":
            yield
            return
        broker = None
        url = settings.mqtt_url
        if url == "embedded":
            broker = EmbeddedBroker(settings.mqtt_embedded_port)
            await broker.start()
            url = broker.url
        app[keys.STATE]["mqttUrl"] = url
        consumer = MqttConsumer(settings, app[keys.DB], app[keys.STATE], url)
        await consumer.start()
        app[keys.MQTT] = consumer
        yield
        await consumer.stop()
        if broker is not None:
            await broker.stop()

    async def workers_ctx(app: web.Application) -> AsyncIterator[None]:
        """Background loops; each returns at once when its feature is off (the defaults)."""
        stop = asyncio.Event()
        tasks = []
        if settings.run_workers:
            db = app[keys.DB]
            tasks.append(asyncio.create_task(run_outbound_worker(db, settings, stop), name="outbound-worker"))
            tasks.append(asyncio.create_task(run_scheduler(db, settings, stop), name="sync-scheduler"))
        yield
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)

    app.cleanup_ctx.append(db_ctx)
    app.cleanup_ctx.append(mqtt_ctx)
    app.cleanup_ctx.append(workers_ctx)
    return app
