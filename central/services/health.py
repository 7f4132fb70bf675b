"""Dependency checks for GET /api/health."""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy import text

from central.db.engine import Database

log = logging.getLogger(__name__)


async def database_ok(db: Database, limit_s: float = 2.0) -> bool:
    try:
        async with asyncio.timeout(limit_s), db.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        return True
    except Exception as exc:  # any failure means "down": health must answer, never raise
        log.warning("health: database check failed: %s", type(exc).__name__)
        return False
