"""Who is calling: a signed-in user or an API key, with permissions and data-scope bindings."""

from __future__ import annotations

from dataclasses import dataclass, field

from central.domain.errors import Forbidden
from central.domain.permissions import SCOPE_RANK, DataScope


@dataclass(frozen=True)
class Actor:
    user_id: int | None
    name: str
    email: str | None = None
    role_codes: tuple[str, ...] = ()
    # permission → widest data scope among the roles granting it
    scopes: dict[str, DataScope] = field(default_factory=dict)
    line_ids: frozenset[int] = frozenset()
    station_ids: frozenset[int] = frozenset()
    api_key_id: int | None = None
    session_id: int | None = None
    actor_type: str = "USER"

    @property
    def permissions(self) -> frozenset[str]:
        return frozenset(self.scopes)

    def has_any(self, perms: tuple[str, ...] | list[str]) -> bool:
        return any(p in self.scopes for p in perms)

    def require(self, *perms: str) -> None:
        if perms and not self.has_any(perms):
            raise Forbidden("FORBIDDEN", f"Missing required permission: {' or '.join(perms)}")

    def scope_for(self, perms: tuple[str, ...] | list[str]) -> DataScope | None:
        """Widest scope with which any of `perms` is granted; None when none is held."""
        granted = [self.scopes[p] for p in perms if p in self.scopes]
        if not granted:
            return None
        return max(granted, key=lambda s: SCOPE_RANK[s])

    @property
    def role_label(self) -> str:
        return ",".join(self.role_codes)


SYSTEM_ACTOR = Actor(user_id=None, name="system", actor_type="SYSTEM")


def merge_scopes(roles: list[tuple[str, list[str]]]) -> dict[str, DataScope]:
    """roles = [(dataScope, permissions)] → permission → widest scope (domain.md §10)."""
    out: dict[str, DataScope] = {}
    for scope_str, perms in roles:
        scope = DataScope(scope_str)
        for p in perms:
            cur = out.get(p)
            if cur is None or SCOPE_RANK[scope] > SCOPE_RANK[cur]:
                out[p] = scope
    return out
