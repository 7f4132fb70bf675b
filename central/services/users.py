"""User and role administration (api.md Authorization): bindings, scope rules, locked system roles."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from central.db.models import (
    Line,
    Role,
    Station,
    User,
    UserLineBinding,
    UserRoleAssignment,
    UserStationBinding,
)
from central.domain.errors import Conflict, NotFound, Rejected
from central.domain.permissions import PERMISSIONS, RESERVED_ROLE_CODES, DataScope
from central.schemas.auth import RoleCreate, RoleUpdate, UserCreate, UserUpdate
from central.schemas.base import ListQuery
from central.services.listing import paginate
from central.services.security import hash_secret
from central.services.uow import UnitOfWork


def _check_permissions(perms: list[str]) -> list[str]:
    bad = sorted(set(perms) - PERMISSIONS)
    if bad:
        raise Rejected("INVALID_PERMISSION", f"Unknown permission(s): {', '.join(bad)}", details=bad)
    return sorted(set(perms))


def role_view(r: Role) -> dict[str, Any]:
    return {
        "code": r.code,
        "name": r.name,
        "permissions": list(r.permissions or []),
        "dataScope": r.data_scope,
    }


async def list_roles(uow: UnitOfWork) -> list[Role]:
    return list((await uow.session.scalars(select(Role).order_by(Role.code))).all())


async def create_role(uow: UnitOfWork, body: RoleCreate) -> Role:
    if body.code in RESERVED_ROLE_CODES:
        raise Rejected("ROLE_CODE_RESERVED", f"Role code {body.code} is reserved for a system role")
    if await uow.session.scalar(select(Role.id).where(Role.code == body.code)):
        raise Conflict("ROLE_EXISTS", f"Role {body.code} already exists")
    role = Role(
        code=body.code,
        name=body.name,
        description=body.description,
        permissions=_check_permissions(body.permissions),
        data_scope=body.data_scope,
        is_system=False,
    )
    uow.session.add(role)
    await uow.session.flush()
    uow.audit(role.id, role.code, entity_type="ROLE", action="ROLE_CREATE", after=role_view(role))
    return role


async def _editable_role(uow: UnitOfWork, role_id: int) -> Role:
    role = await uow.session.get(Role, role_id)
    if role is None:
        raise NotFound("ROLE_NOT_FOUND", f"Role {role_id} not found")
    if role.is_system:
        raise Rejected("ROLE_SYSTEM_LOCKED", f"System role {role.code} cannot be changed")
    return role


async def update_role(uow: UnitOfWork, role_id: int, body: RoleUpdate) -> Role:
    role = await _editable_role(uow, role_id)
    before = role_view(role)
    if body.name is not None:
        role.name = body.name
    if body.description is not None:
        role.description = body.description
    if body.permissions is not None:
        role.permissions = _check_permissions(body.permissions)
    if body.data_scope is not None:
        role.data_scope = body.data_scope
    uow.audit(
        role.id, role.code, entity_type="ROLE", action="ROLE_UPDATE", before=before, after=role_view(role)
    )
    return role


async def delete_role(uow: UnitOfWork, role_id: int) -> dict[str, Any]:
    role = await _editable_role(uow, role_id)
    in_use = await uow.session.scalar(
        select(UserRoleAssignment.id).where(UserRoleAssignment.role_id == role.id).limit(1)
    )
    if in_use:
        raise Conflict("ROLE_IN_USE", f"Role {role.code} is assigned to users")
    await uow.session.delete(role)
    uow.audit(role_id, role.code, entity_type="ROLE", action="ROLE_DELETE", before=role_view(role))
    return {"id": role_id, "deleted": True}


async def user_out(uow: UnitOfWork, user: User) -> dict[str, Any]:
    s = uow.session
    roles = await s.scalars(
        select(Role.code)
        .join(UserRoleAssignment, UserRoleAssignment.role_id == Role.id)
        .where(UserRoleAssignment.user_id == user.id)
        .order_by(Role.code)
    )
    lines = await s.scalars(select(UserLineBinding.line_id).where(UserLineBinding.user_id == user.id))
    stations = await s.scalars(
        select(UserStationBinding.station_id).where(UserStationBinding.user_id == user.id)
    )
    return {
        "id": user.id,
        "email": user.email,
        "name": user.name,
        "is_active": user.is_active,
        "employee_no": user.employee_no,
        "roles": list(roles),
        "line_ids": sorted(lines),
        "station_ids": sorted(stations),
        "created_at": user.created_at,
    }


async def list_users(uow: UnitOfWork, q: ListQuery) -> dict[str, Any]:
    page = await paginate(
        uow.session,
        select(User),
        q,
        sort_fields={"createdAt": User.created_at, "email": User.email, "name": User.name},
        search=[User.email, User.name],
    )
    page["items"] = [await user_out(uow, u) for u in page["items"]]
    return page


async def _set_bindings(
    uow: UnitOfWork, user: User, roles: list[str], line_ids: list[int], station_ids: list[int]
) -> None:
    s = uow.session
    found = (await s.scalars(select(Role).where(Role.code.in_(roles)))).all() if roles else []
    missing = sorted(set(roles) - {r.code for r in found})
    if missing:
        raise NotFound("ROLE_NOT_FOUND", f"Unknown role(s): {', '.join(missing)}", details=missing)
    if line_ids and len((await s.scalars(select(Line.id).where(Line.id.in_(line_ids)))).all()) != len(
        set(line_ids)
    ):
        raise NotFound("LINE_NOT_FOUND", "A bound line does not exist")
    if station_ids and len(
        (await s.scalars(select(Station.id).where(Station.id.in_(station_ids)))).all()
    ) != len(set(station_ids)):
        raise NotFound("STATION_NOT_FOUND", "A bound station does not exist")
    scopes = {DataScope(r.data_scope) for r in found}
    if DataScope.ASSIGNED_LINES in scopes and not line_ids:
        raise Rejected("LINE_BINDING_REQUIRED", "A line-scoped role needs at least one bound line")
    if DataScope.ASSIGNED_STATIONS in scopes and not station_ids:
        raise Rejected("STATION_BINDING_REQUIRED", "A station-scoped role needs at least one bound station")
    for model in (UserRoleAssignment, UserLineBinding, UserStationBinding):
        await s.execute(delete(model).where(model.user_id == user.id))
    s.add_all([UserRoleAssignment(user_id=user.id, role_id=r.id) for r in found])
    s.add_all([UserLineBinding(user_id=user.id, line_id=i) for i in sorted(set(line_ids))])
    s.add_all([UserStationBinding(user_id=user.id, station_id=i) for i in sorted(set(station_ids))])
    await s.flush()


async def create_user(uow: UnitOfWork, body: UserCreate) -> dict[str, Any]:
    s = uow.session
    email = body.email.lower()
    if await s.scalar(select(User.id).where(User.email == email)):
        raise Conflict("USER_EMAIL_EXISTS", f"A user with email {email} already exists")
    user = User(
        email=email,
        name=body.name,
        employee_no=body.employee_no,
        password_hash=await asyncio.to_thread(hash_secret, body.password.get_secret_value()),
    )
    s.add(user)
    try:
        await s.flush()
    except IntegrityError:
        raise Conflict("USER_EXISTS", "A user with this email or employee number already exists") from None
    await _set_bindings(uow, user, body.roles, body.line_ids, body.station_ids)
    out = await user_out(uow, user)
    uow.audit(
        user.id,
        user.email,
        entity_type="USER",
        action="USER_CREATE",
        after={k: v for k, v in out.items() if k != "created_at"},
    )
    return out


async def update_user(uow: UnitOfWork, user_id: int, body: UserUpdate) -> dict[str, Any]:
    s = uow.session
    user = await s.get(User, user_id)
    if user is None:
        raise NotFound("USER_NOT_FOUND", f"User {user_id} not found")
    before = {k: v for k, v in (await user_out(uow, user)).items() if k != "created_at"}
    if body.name is not None:
        user.name = body.name
    if body.is_active is not None:
        user.is_active = body.is_active
    if body.employee_no is not None:
        user.employee_no = body.employee_no or None
    if body.password is not None:
        user.password_hash = await asyncio.to_thread(hash_secret, body.password.get_secret_value())
    if body.roles is not None or body.line_ids is not None or body.station_ids is not None:
        await _set_bindings(
            uow,
            user,
            body.roles if body.roles is not None else before["roles"],
            body.line_ids if body.line_ids is not None else before["line_ids"],
            body.station_ids if body.station_ids is not None else before["station_ids"],
        )
    out = await user_out(uow, user)
    after = {k: v for k, v in out.items() if k != "created_at"}
    if body.password is not None:
        before["password"], after["password"] = "***", "*** (changed)"
    uow.audit(user.id, user.email, entity_type="USER", action="USER_UPDATE", before=before, after=after)
    return out


async def create_api_key_for(uow: UnitOfWork, body: Any) -> tuple[Any, str]:
    """An API key for an existing user, or for a new machine user holding `role` (e.g. an edge agent)."""
    from central.services.auth import create_api_key

    if body.user_id is not None:
        return await create_api_key(uow, name=body.name, user_id=body.user_id, expires_at=body.expires_at)
    if not body.role:
        raise Rejected("API_KEY_OWNER_REQUIRED", "Give userId or role for the key")
    user_id = await machine_user(uow, body.name, body.role)
    return await create_api_key(uow, name=body.name, user_id=user_id, expires_at=body.expires_at)


async def machine_user(uow: UnitOfWork, name: str, role_code: str) -> int:
    """A password-less user that only API keys sign in as; one per key name."""
    s = uow.session
    role = await s.scalar(select(Role).where(Role.code == role_code))
    if role is None:
        raise NotFound("ROLE_NOT_FOUND", f"Role {role_code} not found")
    if role.data_scope != DataScope.ALL:
        raise Rejected("API_KEY_ROLE_SCOPED", "API keys need a role with data scope ALL")
    email = f"{name.lower().replace(' ', '-')}@api-keys.local"
    user = await s.scalar(select(User).where(User.email == email))
    if user is None:
        user = User(email=email, name=name, password_hash=None)
        s.add(user)
        await s.flush()
    await s.execute(delete(UserRoleAssignment).where(UserRoleAssignment.user_id == user.id))
    s.add(UserRoleAssignment(user_id=user.id, role_id=role.id))
    await s.flush()
    return user.id
