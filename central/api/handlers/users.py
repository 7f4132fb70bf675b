"""Role, user and API-key administration."""

from __future__ import annotations

from typing import Any

from central.api.registry import Router
from central.api.request import Req
from central.schemas.auth import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyOut,
    RoleCreate,
    RoleOut,
    RoleUpdate,
    UserCreate,
    UserOut,
    UserUpdate,
)
from central.schemas.base import Deleted, ListQuery, Page
from central.services import auth, users

router = Router(tag="users", entity_type="USER")
ROLE = ("system:role_manage",)
USER = ("system:user_manage",)


@router.get("/roles", perms=ROLE)
async def list_roles(rq: Req) -> list[RoleOut]:
    """All roles with their permissions and data scope."""
    return await rq.read(users.list_roles)


@router.post("/roles", perms=ROLE, entity_type="ROLE", action="ROLE_CREATE")
async def create_role(rq: Req, body: RoleCreate) -> RoleOut:
    """Create a custom role."""
    return await rq.write(users.create_role, body)


@router.patch("/roles/{id}", perms=ROLE, entity_type="ROLE", action="ROLE_UPDATE")
async def update_role(rq: Req, body: RoleUpdate) -> RoleOut:
    """Change a custom role (system roles are locked)."""
    return await rq.write(users.update_role, rq.path_int("id", "ROLE_NOT_FOUND"), body)


@router.delete("/roles/{id}", perms=ROLE, entity_type="ROLE", action="ROLE_DELETE")
async def delete_role(rq: Req) -> Deleted:
    """Delete a custom role that no user holds."""
    return await rq.write(users.delete_role, rq.path_int("id", "ROLE_NOT_FOUND"))


@router.get("/users", perms=USER)
async def list_users(rq: Req, query: ListQuery) -> Page[UserOut]:
    """Users with roles and bindings (search: email, name; sort: createdAt, email, name)."""
    return await rq.read(users.list_users, query)


@router.post("/users", perms=USER, action="USER_CREATE")
async def create_user(rq: Req, body: UserCreate) -> UserOut:
    """Create a user with roles and line/station bindings."""
    return await rq.write(users.create_user, body)


@router.patch("/users/{id}", perms=USER, action="USER_UPDATE")
async def update_user(rq: Req, body: UserUpdate) -> UserOut:
    """Change a user's name, password, activity, roles or bindings."""
    return await rq.write(users.update_user, rq.path_int("id", "USER_NOT_FOUND"), body)


@router.get("/api-keys", perms=USER)
async def list_api_keys(rq: Req) -> list[ApiKeyOut]:
    """API keys (never the key itself)."""
    return await rq.read(auth.list_api_keys)


@router.post("/api-keys", perms=USER, entity_type="API_KEY", action="API_KEY_CREATE")
async def create_api_key(rq: Req, body: ApiKeyCreate) -> ApiKeyCreated:
    """Create an API key; the key is in this response only."""
    row, key = await rq.write(users.create_api_key_for, body)
    data: dict[str, Any] = ApiKeyOut.model_validate(row).model_dump()
    return ApiKeyCreated(**data, key=key)


@router.delete("/api-keys/{id}", perms=USER, entity_type="API_KEY", action="API_KEY_REVOKE")
async def revoke_api_key(rq: Req) -> ApiKeyOut:
    """Revoke an API key at once."""
    return await rq.write(auth.revoke_api_key, rq.path_int("id", "API_KEY_NOT_FOUND"))
