"""Pure helpers: scope merging, audit diff, secret hashing, sort parsing."""

from __future__ import annotations

import pytest

from central.domain.errors import MesError
from central.domain.permissions import PERMISSIONS, PRESET_ROLES, DataScope
from central.services import security
from central.services.actor import Actor, merge_scopes
from central.services.listing import order_by, split_csv
from central.services.uow import diff


def test_preset_roles_use_only_known_permissions() -> None:
    for _code, (_name, _scope, perms) in PRESET_ROLES.items():
        assert set(perms) <= PERMISSIONS
    assert "exec:track_in" not in PRESET_ROLES["admin"][2]
    assert "readiness:view" not in PRESET_ROLES["engineer"][2]


def test_scope_is_the_widest_granting_role() -> None:
    scopes = merge_scopes([("ASSIGNED_STATIONS", ["trace:read", "exec:track_in"]), ("ALL", ["trace:read"])])
    assert scopes == {"trace:read": DataScope.ALL, "exec:track_in": DataScope.ASSIGNED_STATIONS}
    actor = Actor(user_id=1, name="x", scopes=scopes)
    assert actor.scope_for(["exec:track_in", "exec:read"]) == DataScope.ASSIGNED_STATIONS
    assert actor.scope_for(["exec:read"]) is None
    assert actor.has_any(["exec:read", "trace:read"]) and not actor.has_any(["wo:read"])


def test_diff_lists_only_changed_fields() -> None:
    assert diff({"a": 1, "b": 2, "c": 3}, {"a": 1, "b": 5, "d": 4}) == [
        {"op": "replace", "path": "/b", "before": 2, "after": 5},
        {"op": "remove", "path": "/c", "before": 3, "after": None},
        {"op": "add", "path": "/d", "before": None, "after": 4},
    ]


def test_secret_hash_round_trip_and_salt() -> None:
    h1, h2 = security.hash_secret("pw"), security.hash_secret("pw")
    assert h1 != h2 and h1.startswith("scrypt$")
    assert security.verify_secret("pw", h1) and not security.verify_secret("pW", h1)
    assert not security.verify_secret("pw", None) and not security.verify_secret("pw", "garbage")


def test_api_key_prefix_parsing() -> None:
    prefix, key = security.new_api_key()
    assert security.api_key_prefix(key) == prefix
    assert security.api_key_prefix("mes_short_x") is None and security.api_key_prefix("token") is None


def test_sort_parsing_against_allow_list() -> None:
    class Col:
        def __init__(self, n: str) -> None:
            self.n = n

        def asc(self) -> str:
            return f"{self.n} ASC"

        def desc(self) -> str:
            return f"{self.n} DESC"

    allowed = {"createdAt": Col("c"), "line.code": Col("l")}
    assert order_by("line.code.asc,createdAt.desc", allowed) == ["l ASC", "c DESC"]
    assert order_by(None, allowed) == ["c DESC"]
    with pytest.raises(MesError) as err:
        order_by("secret.asc", allowed)
    assert err.value.status == 422
    assert split_csv("PREP, AUTHORIZED,,") == ["PREP", "AUTHORIZED"]
