"""JSON envelope helpers (api.md): one serializer, one shape for success and failure."""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson
from aiohttp import web
from pydantic import BaseModel

from central.domain.clock import iso


def _default(obj: Any) -> Any:
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json", by_alias=True)
    if isinstance(obj, datetime):
        return iso(obj)
    if isinstance(obj, Decimal):
        return float(obj)
    if isinstance(obj, set | frozenset):
        return sorted(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def dumps(payload: Any) -> bytes:
    try:
        return orjson.dumps(payload, default=_default, option=orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError:
        # PostgreSQL hands JSONB numbers back exactly (1e29 comes back as a 30-digit int) and orjson stops at
        # 64-bit integers; the standard library writes any integer.
        return json.dumps(payload, default=_default, ensure_ascii=False, separators=(",", ":")).encode()


def ok(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=dumps({"ok": True, "data": data}),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def fail(
    status: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None
) -> web.Response:
    error: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        error["details"] = details
    return web.Response(
        body=dumps({"ok": False, "error": error}),
        status=status,
        content_type="application/json",
        headers=headers,
    )
