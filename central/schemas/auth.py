"""Request/response shapes of sign-in, sessions, API keys, users and roles."""

from __future__ import annotations

from pydantic import AwareDatetime, Field, SecretStr

from central.schemas.base import CamelModel, OutModel, RowId, UtcTime


class SignInBody(CamelModel):
    email: str = Field(min_length=3, max_length=254)
    password: SecretStr = Field(min_length=1, max_length=256)


class UserBrief(OutModel):
    id: int
    email: str
    name: str
    roles: list[str]


class SignInOut(OutModel):
    token: str
    expires_at: UtcTime
    user: UserBrief


class RoleOut(OutModel):
    id: int
    code: str
    name: str
    description: str | None = None
    permissions: list[str]
    data_scope: str
    is_system: bool


class RoleCreate(CamelModel):
    code: str = Field(min_length=2, max_length=64, pattern=r"^[a-z][a-z0-9_.-]*$")
    name: str = Field(min_length=1, max_length=120)
    description: str | None = Field(None, max_length=500)
    permissions: list[str] = Field(default_factory=list, max_length=200)
    data_scope: str = Field("ALL", pattern="^(ALL|ASSIGNED_LINES|ASSIGNED_STATIONS)$")


class RoleUpdate(CamelModel):
    name: str | None = Field(None, min_length=1, max_length=120)
    description: str | None = Field(None, max_length=500)
    permissions: list[str] | None = Field(None, max_length=200)
    data_scope: str | None = Field(None, pattern="^(ALL|ASSIGNED_LINES|ASSIGNED_STATIONS)$")


class UserOut(OutModel):
    id: int
    email: str
    name: str
    is_active: bool
    employee_no: str | None = None
    roles: list[str]
    line_ids: list[int]
    station_ids: list[int]
    created_at: UtcTime


class UserCreate(CamelModel):
    email: str = Field(max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
    name: str = Field(min_length=1, max_length=120)
    password: SecretStr = Field(min_length=8, max_length=256)
    employee_no: str | None = Field(None, max_length=64)
    roles: list[str] = Field(default_factory=list, max_length=20)
    line_ids: list[RowId] = Field(default_factory=list)
    station_ids: list[RowId] = Field(default_factory=list)


class UserUpdate(CamelModel):
    name: str | None = Field(None, min_length=1, max_length=120)
    password: SecretStr | None = Field(None, min_length=8, max_length=256)
    is_active: bool | None = None
    employee_no: str | None = Field(None, max_length=64)
    roles: list[str] | None = Field(None, max_length=20)
    line_ids: list[RowId] | None = None
    station_ids: list[RowId] | None = None


class ApiKeyCreate(CamelModel):
    name: str = Field(min_length=1, max_length=120)
    user_id: RowId | None = None
    role: str | None = Field(None, max_length=64)
    expires_at: AwareDatetime | None = None


class ApiKeyOut(OutModel):
    id: int
    name: str
    prefix: str
    user_id: int
    created_at: UtcTime
    revoked_at: UtcTime | None = None
    last_used_at: UtcTime | None = None
    expires_at: UtcTime | None = None


class ApiKeyCreated(ApiKeyOut):
    key: str
