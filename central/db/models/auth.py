"""Users, roles, data-scope bindings, sessions and API keys (domain.md §10, api.md Authentication)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from central.db.base import Base, IdMixin, TimestampMixin, fk_id


class User(IdMixin, TimestampMixin, Base):
    __tablename__ = "users"

    email: Mapped[str] = mapped_column(String(254), unique=True)
    name: Mapped[str] = mapped_column(String(120))
    password_hash: Mapped[str | None] = mapped_column(String(255))
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    email_verified: Mapped[bool] = mapped_column(Boolean, default=True)
    # Operator number printed on badges (e.g. OP-01); optional, unique when set.
    employee_no: Mapped[str | None] = mapped_column(String(64), unique=True)

    role_assignments: Mapped[list[UserRoleAssignment]] = relationship(
        back_populates="user", cascade="all, delete-orphan", lazy="selectin"
    )


class Role(IdMixin, TimestampMixin, Base):
    __tablename__ = "roles"

    code: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(120))
    description: Mapped[str | None] = mapped_column(String(500))
    permissions: Mapped[list[Any]] = mapped_column(default=list)
    data_scope: Mapped[str] = mapped_column(String(32), default="ALL")
    is_system: Mapped[bool] = mapped_column(Boolean, default=False)


class UserRoleAssignment(IdMixin, Base):
    __tablename__ = "user_role_assignments"
    __table_args__ = (UniqueConstraint("user_id", "role_id"),)

    user_id: Mapped[int] = mapped_column(fk_id(), ForeignKey("users.id", ondelete="CASCADE"), index=True)
    role_id: Mapped[int] = mapped_column(fk_id(), ForeignKey("roles.id", ondelete="CASCADE"), index=True)

    user: Mapped[User] = relationship(back_populates="role_assignments")
    role: Mapped[Role] = relationship(lazy="joined")


class UserLineBinding(IdMixin, Base):
    __tablename__ = "user_line_bindings"
    __table_args__ = (UniqueConstraint("user_id", "line_id"),)

    user_id: Mapped[int] = mapped_column(fk_id(), ForeignKey("users.id", ondelete="CASCADE"), index=True)
    line_id: Mapped[int] = mapped_column(fk_id(), ForeignKey("lines.id", ondelete="CASCADE"), index=True)


class UserStationBinding(IdMixin, Base):
    __tablename__ = "user_station_bindings"
    __table_args__ = (UniqueConstraint("user_id", "station_id"),)

    user_id: Mapped[int] = mapped_column(fk_id(), ForeignKey("users.id", ondelete="CASCADE"), index=True)
    station_id: Mapped[int] = mapped_column(
        fk_id(), ForeignKey("stations.id", ondelete="CASCADE"), index=True
    )


class AuthSession(IdMixin, Base):
    """A signed-in browser session; only the SHA-256 of the (256-bit random) token is stored."""

    __tablename__ = "auth_sessions"

    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(fk_id(), ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(500))


class ApiKey(IdMixin, TimestampMixin, Base):
    """A machine credential. `prefix` finds the row; `key_hash` is a scrypt hash of the whole key."""

    __tablename__ = "api_keys"

    name: Mapped[str] = mapped_column(String(120))
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    key_hash: Mapped[str] = mapped_column(String(255))
    user_id: Mapped[int] = mapped_column(fk_id(), ForeignKey("users.id", ondelete="CASCADE"), index=True)
    revoked_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]
    expires_at: Mapped[datetime | None]


class SignInAttempt(IdMixin, Base):
    """Failed sign-ins, kept in the database so the rate limit holds across central processes."""

    __tablename__ = "sign_in_attempts"

    email: Mapped[str] = mapped_column(String(254), index=True)
    ip: Mapped[str] = mapped_column(String(64), index=True)
    attempted_at: Mapped[datetime] = mapped_column(index=True)
