"""First-start bootstrap: preset roles always exist; an admin from MES_BOOTSTRAP_ADMIN_* if no users."""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from central.config import Settings
from central.db.models import Role, User, UserRoleAssignment
from central.domain.permissions import PRESET_ROLES
from central.services.security import hash_secret

log = logging.getLogger(__name__)


async def ensure_preset_roles(s: AsyncSession) -> dict[str, Role]:
    """Creates missing preset roles and resets their permissions to the spec (they are system-locked)."""
    existing = {r.code: r for r in (await s.scalars(select(Role))).all()}
    for code, (name, scope, perms) in PRESET_ROLES.items():
        role = existing.get(code)
        if role is None:
            role = Role(code=code, name=name, data_scope=scope.value, permissions=list(perms), is_system=True)
            s.add(role)
            existing[code] = role
        else:
            role.permissions, role.data_scope, role.is_system = list(perms), scope.value, True
    await s.flush()
    return existing


# Any constant: serialises the bootstrap of central processes starting together on an empty PostgreSQL
# database, which would otherwise both insert the preset roles and one would fail on the unique code.
_PG_BOOTSTRAP_LOCK = 0x4D45_5302


async def ensure_admin(sm: async_sessionmaker[AsyncSession], settings: Settings) -> None:
    async with sm() as s, s.begin():
        if s.get_bind().dialect.name == "postgresql":  # SQLite writers already queue (BEGIN IMMEDIATE)
            await s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_BOOTSTRAP_LOCK})
        roles = await ensure_preset_roles(s)
        if not settings.bootstrap_admin_email or settings.bootstrap_admin_password is None:
            return
        if await s.scalar(select(func.count()).select_from(User)):
            return
        pw = settings.bootstrap_admin_password.get_secret_value()
        user = User(
            email=settings.bootstrap_admin_email.lower(),
            name="Admin",
            password_hash=await asyncio.to_thread(hash_secret, pw),
        )
        s.add(user)
        await s.flush()
        s.add(UserRoleAssignment(user_id=user.id, role_id=roles["admin"].id))
        log.info("bootstrap admin %s created", user.email)
