"""aiohttp application factory: resources in cleanup_ctx, routes from the endpoint registry."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web

from central.api import keys
from central.api.handlers import ROUTERS
from central.api.middlewares import audit_mw, auth_mw, error_mw, idempotency_mw, request_id_mw
from central.api.registry import Endpoint, Router
from central.api.request import make_handler
from central.config import Settings
from central.db.engine import Database, create_database
from central.db.migrate import upgrade
from central.services import bootstrap
from central.services.auth import AuthService

log = logging.getLogger("central")


def all_endpoints() -> list[Endpoint]:
    return [ep for router in ROUTERS for ep in router.endpoints]


def create_app(
    settings: Settings, *, database: Database | None = None, extra_routers: list[Router] | None = None
) -> web.Application:
    app = web.Application(
        middlewares=[request_id_mw, error_mw, audit_mw, auth_mw, idempotency_mw],
        client_max_size=settings.http_max_body_bytes,
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

    app.cleanup_ctx.append(db_ctx)
    return app
