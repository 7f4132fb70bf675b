"""Idempotency-Key records (api.md): claim the key, replay the stored response, 409 on misuse.

A key's record moves IN_PROGRESS → APPLIED → DONE. IN_PROGRESS is written when the request claims the key,
APPLIED inside the request's own business transaction (UnitOfWork commits it with the effect), DONE with the
stored response once the answer is known. So a process that dies mid-request leaves an honest record: still
IN_PROGRESS means no effect was committed, and once the claim's lease has passed another request may take the
key over; APPLIED means the effect was committed but the answer was lost, and the key is never run again.
Each claim carries a random token: a slow request whose key was taken over cannot commit (its APPLIED update
finds another token), so one key has one effect even then.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from central.db.models import IdempotencyRecord
from central.domain.clock import utcnow
from central.domain.errors import Conflict

IN_PROGRESS, APPLIED, DONE = "IN_PROGRESS", "APPLIED", "DONE"


@dataclass(frozen=True)
class StoredResponse:
    status: int
    body: bytes


@dataclass(frozen=True)
class Claim:
    """This request owns the key: `token` tells it apart from a later request that took the key over."""

    caller: str
    key: str
    token: str


def request_hash(method: str, path: str, body: bytes) -> str:
    """What must match for a replay: the same method, path and body bytes."""
    return hashlib.sha256(method.encode() + b" " + path.encode() + b"\n" + body).hexdigest()


def _still_running() -> Conflict:
    return Conflict("IDEMPOTENCY_IN_PROGRESS", "A request with this key is still running")


def _mine(claim: Claim) -> tuple[object, ...]:
    return (
        IdempotencyRecord.caller == claim.caller,
        IdempotencyRecord.key == claim.key,
        IdempotencyRecord.claim == claim.token,
    )


async def begin(
    sm: async_sessionmaker[AsyncSession],
    caller: str,
    key: str,
    method: str,
    path: str,
    body_hash: str,
    ttl_seconds: int,
    lease_seconds: int,
) -> Claim | StoredResponse:
    """Claims the key (→ Claim, go ahead) or returns the stored response; raises 409 on misuse."""
    now = utcnow()
    claim = Claim(caller, key, secrets.token_hex(16))
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
                    state=IN_PROGRESS,
                    claim=claim.token,
                    created_at=now,
                    expires_at=now + timedelta(seconds=ttl_seconds),
                )
            )
            try:
                await s.flush()
            except IntegrityError:
                raise _still_running() from None
            return claim
        if row.body_hash != body_hash:
            raise Conflict("IDEMPOTENCY_KEY_REUSED", "Idempotency-Key was used with a different request")
        if row.state == DONE and row.status_code is not None and row.response_body is not None:
            return StoredResponse(status=row.status_code, body=row.response_body.encode())
        if row.state == APPLIED:
            raise Conflict(
                "IDEMPOTENCY_IN_PROGRESS",
                "The request with this key was applied, but the server stopped before recording its answer; "
                "read the resource to see the result (the key is not run again)",
                details={"state": APPLIED},
            )
        if row.created_at > now - timedelta(seconds=lease_seconds):
            raise _still_running()
        # The claim's lease has passed and nothing was committed under it (else it would be APPLIED): the
        # request died with its process. Take the key over: compare-and-set, so one taker wins.
        taken = await s.execute(
            update(IdempotencyRecord)
            .where(
                IdempotencyRecord.id == row.id,
                IdempotencyRecord.state == IN_PROGRESS,
                IdempotencyRecord.claim == row.claim,
            )
            .values(claim=claim.token, created_at=now, expires_at=now + timedelta(seconds=ttl_seconds))
            .execution_options(synchronize_session=False)
        )
        if taken.rowcount != 1:  # type: ignore[attr-defined]
            raise _still_running()
        return claim


async def mark_applied(s: AsyncSession, claim: Claim) -> None:
    """Inside the business transaction, just before it commits: the effect and APPLIED commit together.
    Refuses (and so rolls the effect back) when another request took the key over meanwhile."""
    marked = await s.execute(
        update(IdempotencyRecord)
        .where(*_mine(claim), IdempotencyRecord.state.in_((IN_PROGRESS, APPLIED)))
        .values(state=APPLIED)
        .execution_options(synchronize_session=False)
    )
    if marked.rowcount != 1:  # type: ignore[attr-defined]
        raise Conflict(
            "IDEMPOTENCY_IN_PROGRESS",
            "This request outran its Idempotency-Key lease and a retry took the key; nothing was applied",
        )


async def finish(sm: async_sessionmaker[AsyncSession], claim: Claim, status: int, body: bytes) -> None:
    async with sm() as s, s.begin():
        await s.execute(
            update(IdempotencyRecord)
            .where(*_mine(claim))
            .values(state=DONE, status_code=status, response_body=body.decode())
        )


async def abandon(sm: async_sessionmaker[AsyncSession], claim: Claim) -> None:
    """The request ended without an answer to keep (validation, auth, 5xx): the caller may retry the key.
    APPLIED goes too: a request that answers an error committed only side records (e.g. a FAILED log row)."""
    async with sm() as s, s.begin():
        await s.execute(delete(IdempotencyRecord).where(*_mine(claim), IdempotencyRecord.state != DONE))
