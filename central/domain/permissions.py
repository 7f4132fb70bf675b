"""Permission points, data scopes and the seven preset roles of domain.md §10 / demo-plant.md §1."""

from __future__ import annotations

from enum import StrEnum

PERMISSIONS: frozenset[str] = frozenset(
    {
        *(f"wo:{a}" for a in ("read", "receive", "release", "update", "close")),
        *(f"run:{a}" for a in ("read", "create", "authorize", "revoke", "close")),
        *(f"exec:{a}" for a in ("read", "track_in", "track_out", "data_collect")),
        "data_spec:read",
        "data_spec:config",
        "operation:read",
        "operation:config",
        *(f"route:{a}" for a in ("read", "configure", "compile", "create")),
        "quality:fai",
        "quality:oqc",
        "quality:disposition",
        *(f"readiness:{a}" for a in ("view", "check", "override", "config")),
        "line:config",
        "loading:view",
        "loading:verify",
        "loading:config",
        "trace:read",
        "trace:export",
        *(
            f"system:{a}"
            for a in ("user_manage", "role_manage", "config", "integration", "chat_feedback", "demo_seed")
        ),
    }
)


class DataScope(StrEnum):
    ALL = "ALL"
    ASSIGNED_LINES = "ASSIGNED_LINES"
    ASSIGNED_STATIONS = "ASSIGNED_STATIONS"


# Wider scope first: a permission granted by several roles takes the widest of their scopes.
SCOPE_RANK = {DataScope.ALL: 3, DataScope.ASSIGNED_LINES: 2, DataScope.ASSIGNED_STATIONS: 1}

PRESET_ROLES: dict[str, tuple[str, DataScope, tuple[str, ...]]] = {
    "admin": (
        "Administrator",
        DataScope.ALL,
        (
            "system:user_manage",
            "system:role_manage",
            "system:config",
            "system:integration",
            "system:chat_feedback",
            "system:demo_seed",
            "wo:read",
            "run:read",
            "route:read",
            "trace:read",
            "exec:read",
            "readiness:view",
            "loading:view",
        ),
    ),
    "planner": (
        "Planner",
        DataScope.ALL,
        (
            "wo:read",
            "wo:receive",
            "wo:release",
            "wo:update",
            "wo:close",
            "run:read",
            "run:create",
            "run:authorize",
            "run:revoke",
            "run:close",
            "route:read",
            "trace:read",
            "readiness:view",
        ),
    ),
    "engineer": (
        "Process engineer",
        DataScope.ALL,
        (
            "system:integration",
            "route:read",
            "route:configure",
            "route:compile",
            "route:create",
            "data_spec:config",
            "operation:config",
            "wo:read",
            "run:read",
            "trace:read",
            "readiness:config",
            "loading:config",
            "line:config",
        ),
    ),
    "quality": (
        "Quality engineer",
        DataScope.ALL,
        (
            "quality:fai",
            "quality:oqc",
            "quality:disposition",
            "trace:read",
            "trace:export",
            "wo:read",
            "run:read",
            "exec:read",
            "readiness:view",
            "readiness:check",
            "readiness:override",
        ),
    ),
    "material": (
        "Material handler",
        DataScope.ASSIGNED_LINES,
        ("run:read", "loading:view", "loading:verify"),
    ),
    "operator": (
        "Operator",
        DataScope.ASSIGNED_STATIONS,
        (
            "exec:track_in",
            "exec:track_out",
            "exec:data_collect",
            "trace:read",
            "readiness:view",
            "loading:view",
            "loading:verify",
        ),
    ),
    "trace": ("Traceability", DataScope.ALL, ("trace:read", "trace:export")),
}

RESERVED_ROLE_CODES = frozenset(PRESET_ROLES)
