"""Idempotency-Key records (api.md): claim the key, replay the stored response, 409 on misuse."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from central.db.models import IdempotencyRecord
from central.domain.clock import utcnow
from central.domain.errors import Conflict


@dataclass(frozen=True)
class StoredResponse:
    status: int
    body: bytes


async def begin(
    sm: async_sessionmaker[AsyncSession],
    caller: str,
    key: str,
    method: str,
    path: str,
    body_hash: str,
    ttl_seconds: int,
) -> StoredResponse | None:
    """Claims the key (→ None, go ahead) or returns the stored response; raises 409 on misuse."""
    now = utcnow()
    async with sm() as s, s.begin():
        await s.execute(
            delete(IdempotencyRecord).where(
                IdempotencyRecord.caller == caller,
                IdempotencyRecord.key == key,
                IdempotencyRecord.expires_at <= now,
            )
        )
        row = await s.scalar(
            select(IdempotencyRecord).where(IdempotencyRecord.caller == caller, IdempotencyRecord.key == key)
        )
        if row is None:
            s.add(
                IdempotencyRecord(
                    caller=caller,
                    key=key,
                    method=method,
                    path=path[:500],
                    body_hash=body_hash,
                    state="IN_PROGRESS",
                    created_at=now,
                    expires_at=now + timedelta(seconds=ttl_seconds),
                )
            )
            try:
                await s.flush()
            except IntegrityError:
                raise Conflict(
                    "IDEMPOTENCY_IN_PROGRESS", "A request with this key is still running"
                ) from None
            return None
    if row.body_hash != body_hash:
        raise Conflict("IDEMPOTENCY_KEY_REUSED", "Idempotency-Key was used with a different request")
    if row.state != "DONE" or row.status_code is None or row.response_body is None:
        raise Conflict("IDEMPOTENCY_IN_PROGRESS", "A request with this key is still running")
    return StoredResponse(status=row.status_code, body=row.response_body.encode())


async def finish(
    sm: async_sessionmaker[AsyncSession], caller: str, key: str, status: int, body: bytes
) -> None:
    async with sm() as s, s.begin():
        await s.execute(
            update(IdempotencyRecord)
            .where(IdempotencyRecord.caller == caller, IdempotencyRecord.key == key)
            .values(state="DONE", status_code=status, response_body=body.decode())
        )


async def abandon(sm: async_sessionmaker[AsyncSession], caller: str, key: str) -> None:
    async with sm() as s, s.begin():
        await s.execute(
            delete(IdempotencyRecord).where(
                IdempotencyRecord.caller == caller,
                IdempotencyRecord.key == key,
                IdempotencyRecord.state == "IN_PROGRESS",
            )
        )
