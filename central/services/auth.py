"""Authentication: sign-in with rate limit, sessions, API keys, and resolving the caller's Actor."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import itertools
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, event, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from central.db.models import (
    ApiKey,
    AuthSession,
    Role,
    SignInAttempt,
    User,
    UserLineBinding,
    UserRoleAssignment,
    UserStationBinding,
)
from central.domain.clock import utcnow
from central.domain.errors import MesError, NotFound, Unauthorized
from central.services import security
from central.services.actor import Actor, merge_scopes
from central.services.uow import UnitOfWork


class TooManyAttempts(MesError):
    status = 429


@dataclass(frozen=True)
class SignedIn:
    token: str
    expires_at: datetime
    user: dict[str, Any]


async def user_summary(session: AsyncSession, user: User) -> dict[str, Any]:
    roles = await session.scalars(
        select(Role.code)
        .join(UserRoleAssignment, UserRoleAssignment.role_id == Role.id)
        .where(UserRoleAssignment.user_id == user.id)
        .order_by(Role.code)
    )
    return {"id": user.id, "email": user.email, "name": user.name, "roles": list(roles)}


async def sign_in(
    uow: UnitOfWork, email: str, password: str, *, ttl_seconds: int, max_failures: int, window_seconds: int
) -> SignedIn:
    s, now = uow.session, utcnow()
    email = email.strip().lower()
    ip = uow.ctx.ip or "?"
    since = now - timedelta(seconds=window_seconds)
    by_email = await s.scalar(
        select(func.count()).where(SignInAttempt.email == email, SignInAttempt.attempted_at >= since)
    )
    by_ip = await s.scalar(
        select(func.count()).where(SignInAttempt.ip == ip, SignInAttempt.attempted_at >= since)
    )
    # Per address the limit is wider: a shop floor shares a few NAT addresses between many people.
    if (by_email or 0) >= max_failures or (by_ip or 0) >= max_failures * 10:
        raise TooManyAttempts("TOO_MANY_ATTEMPTS", "Too many failed sign-in attempts; try again later")
    user = await s.scalar(select(User).where(func.lower(User.email) == email))
    stored = user.password_hash if user is not None and user.is_active else None
    # scrypt is CPU-bound: keep the event loop free for other requests while it runs.
    valid = await asyncio.to_thread(security.verify_secret, password, stored)
    if not valid or user is None:
        s.add(SignInAttempt(email=email, ip=ip, attempted_at=now))
        await s.commit()  # keep the failure counted although the call is refused (FAIL audit follows)
        raise Unauthorized("INVALID_EMAIL_OR_PASSWORD", "Invalid email or password")
    await s.execute(delete(SignInAttempt).where(SignInAttempt.email == email))
    token = security.new_token()
    expires = now + timedelta(seconds=ttl_seconds)
    s.add(
        AuthSession(
            token_hash=security.token_digest(token),
            user_id=user.id,
            created_at=now,
            expires_at=expires,
            ip=uow.ctx.ip,
            user_agent=(uow.ctx.user_agent or "")[:500],
        )
    )
    uow.actor = Actor(user_id=user.id, name=user.name, email=user.email)  # the audit row names who signed in
    uow.audit(user.id, user.email, entity_type="USER", action="SIGN_IN")
    return SignedIn(token=token, expires_at=expires, user=await user_summary(s, user))


async def sign_out(uow: UnitOfWork) -> None:
    if uow.actor.session_id is not None:
        await uow.session.execute(delete(AuthSession).where(AuthSession.id == uow.actor.session_id))
    uow.audit(uow.actor.user_id, uow.actor.email, entity_type="USER", action="SIGN_OUT")


async def get_session(uow: UnitOfWork) -> dict[str, Any] | None:
    a = uow.actor
    if a.user_id is None:
        return None
    user = await uow.session.get(User, a.user_id)
    if user is None:
        return None
    sess = await uow.session.get(AuthSession, a.session_id) if a.session_id else None
    return {
        "session": {"id": sess.id, "expiresAt": sess.expires_at, "createdAt": sess.created_at}
        if sess
        else {"apiKeyId": a.api_key_id},
        "user": await user_summary(uow.session, user),
    }


# A user's grants (roles, permissions, line/station bindings) change rarely and are read on every request, so
# each process keeps them for GRANTS_TTL seconds. A change this process writes drops them at once (the flush
# hook below); one written by another process applies within the TTL. The credential itself — session or API
# key, expiry, revocation, the user being active — is checked against the database on every request, so
# sign-out, revocation and disabling a user take effect at once in every process.
GRANTS_TTL = 5.0
_GRANT_TABLES = (User, Role, UserRoleAssignment, UserLineBinding, UserStationBinding)
_generation = itertools.count()
_current = next(_generation)


def grants_changed() -> None:
    global _current
    _current = next(_generation)


@event.listens_for(Session, "after_flush")
def _after_flush(session: Session, _ctx: Any) -> None:
    # Still the pre-flush view here: what this flush wrote.
    written = itertools.chain(session.new, session.dirty, session.deleted)
    if any(isinstance(o, _GRANT_TABLES) for o in written):
        grants_changed()


@dataclass(frozen=True)
class _Grants:
    actor: Actor
    generation: int
    loaded_at: float


class AuthService:
    """Resolves credentials to an Actor; caches verified API keys so scrypt runs once per key, and users'
    grants for GRANTS_TTL seconds."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self._sessionmaker = sessionmaker
        self._verified_keys: dict[str, str] = {}  # prefix → sha256 of the key already checked with scrypt
        self._grants: dict[int, _Grants] = {}

    async def _actor(self, s: AsyncSession, user_id: int, **credential: int) -> Actor | None:
        hit = self._grants.get(user_id)
        if hit is None or hit.generation != _current or time.monotonic() - hit.loaded_at > GRANTS_TTL:
            generation = _current
            actor = await load_actor(s, user_id)
            if actor is None:
                return None
            hit = self._grants[user_id] = _Grants(actor, generation, time.monotonic())
        kind = "USER" if "api_key_id" not in credential else "API_KEY"
        return dataclasses.replace(hit.actor, actor_type=kind, **credential)

    async def resolve(self, *, cookie: str | None, bearer: str | None) -> Actor | None:
        async with self._sessionmaker() as s:
            if bearer and bearer.startswith("mes_"):
                return await self._from_api_key(s, bearer)
            token = bearer or cookie
            if not token:
                return None
            row = (
                await s.execute(
                    select(AuthSession.id, AuthSession.user_id, AuthSession.expires_at)
                    .join(User, User.id == AuthSession.user_id)
                    .where(AuthSession.token_hash == security.token_digest(token), User.is_active.is_(True))
                )
            ).first()
            if row is None or row.expires_at <= utcnow():
                return None
            return await self._actor(s, row.user_id, session_id=row.id)

    async def _from_api_key(self, s: AsyncSession, key: str) -> Actor | None:
        prefix = security.api_key_prefix(key)
        if prefix is None:
            return None
        row = await s.scalar(
            select(ApiKey)
            .join(User, User.id == ApiKey.user_id)
            .where(ApiKey.prefix == prefix, User.is_active.is_(True))
        )
        now = utcnow()
        if row is None or row.revoked_at is not None or (row.expires_at and row.expires_at <= now):
            return None
        digest = hashlib.sha256(key.encode()).hexdigest()
        if self._verified_keys.get(prefix) != digest:
            if not await asyncio.to_thread(security.verify_secret, key, row.key_hash):
                return None
            self._verified_keys[prefix] = digest
        return await self._actor(s, row.user_id, api_key_id=row.id)


async def load_actor(
    s: AsyncSession, user_id: int, *, session_id: int | None = None, api_key_id: int | None = None
) -> Actor | None:
    user = await s.get(User, user_id)
    if user is None or not user.is_active:
        return None
    roles = (
        await s.execute(
            select(Role.code, Role.data_scope, Role.permissions)
            .join(UserRoleAssignment, UserRoleAssignment.role_id == Role.id)
            .where(UserRoleAssignment.user_id == user_id)
            .order_by(Role.code)
        )
    ).all()
    lines = await s.scalars(select(UserLineBinding.line_id).where(UserLineBinding.user_id == user_id))
    stations = await s.scalars(
        select(UserStationBinding.station_id).where(UserStationBinding.user_id == user_id)
    )
    return Actor(
        user_id=user.id,
        name=user.name,
        email=user.email,
        role_codes=tuple(r.code for r in roles),
        scopes=merge_scopes([(r.data_scope, list(r.permissions or [])) for r in roles]),
        line_ids=frozenset(lines),
        station_ids=frozenset(stations),
        session_id=session_id,
        api_key_id=api_key_id,
        actor_type="USER" if api_key_id is None else "API_KEY",
    )


async def permissions_me(uow: UnitOfWork) -> dict[str, Any]:
    a = uow.actor
    roles = (
        await uow.session.scalars(
            select(Role)
            .join(UserRoleAssignment, UserRoleAssignment.role_id == Role.id)
            .where(UserRoleAssignment.user_id == a.user_id)
            .order_by(Role.code)
        )
    ).all()
    return {
        "id": a.user_id,
        "roles": [
            {
                "code": r.code,
                "name": r.name,
                "permissions": list(r.permissions or []),
                "dataScope": r.data_scope,
            }
            for r in roles
        ],
        "permissions": sorted(a.permissions),
        "lineIds": sorted(a.line_ids),
        "stationIds": sorted(a.station_ids),
    }


# --- API keys -------------------------------------------------------------------------------------------


async def create_api_key(
    uow: UnitOfWork, *, name: str, user_id: int, expires_at: datetime | None = None
) -> tuple[ApiKey, str]:
    if await uow.session.get(User, user_id) is None:
        raise NotFound("USER_NOT_FOUND", f"user {user_id} not found")
    prefix, key = security.new_api_key()
    row = ApiKey(
        name=name,
        prefix=prefix,
        key_hash=await asyncio.to_thread(security.hash_secret, key),
        user_id=user_id,
        expires_at=expires_at,
    )
    uow.session.add(row)
    await uow.session.flush()
    uow.audit(
        row.id,
        name,
        entity_type="API_KEY",
        action="API_KEY_CREATE",
        after={"name": name, "userId": user_id, "prefix": prefix},
    )
    return row, key


async def list_api_keys(uow: UnitOfWork) -> list[ApiKey]:
    return list((await uow.session.scalars(select(ApiKey).order_by(ApiKey.id))).all())


async def revoke_api_key(uow: UnitOfWork, key_id: int) -> ApiKey:
    row = await uow.session.get(ApiKey, key_id)
    if row is None:
        raise NotFound("API_KEY_NOT_FOUND", f"API key {key_id} not found")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        uow.audit(
            row.id,
            row.name,
            entity_type="API_KEY",
            action="API_KEY_REVOKE",
            before={"revoked": False},
            after={"revoked": True},
        )
    return row


async def purge_expired_sessions(uow: UnitOfWork) -> int:
    res = await uow.session.execute(delete(AuthSession).where(AuthSession.expires_at <= utcnow()))
    return res.rowcount or 0


async def touch_api_key(uow: UnitOfWork, key_id: int) -> None:
    await uow.session.execute(update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=utcnow()))
