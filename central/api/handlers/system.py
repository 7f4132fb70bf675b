"""Health, OpenAPI document and its human-readable page."""

from __future__ import annotations

import html
from typing import Any

from aiohttp import web

from central import __version__
from central.api import keys
from central.api.openapi import build
from central.api.registry import Router
from central.api.request import Req
from central.api.wire import dumps
from central.services import health

router = Router(tag="system", entity_type="SYSTEM_CONFIG")


@router.get("/health", public=True, also_status=(503,))
async def get_health(rq: Req) -> web.Response:
    """Liveness and dependencies: database and MQTT."""
    db = await health.database_ok(rq.request.app[keys.DB])
    mqtt = str(rq.request.app[keys.STATE].get("mqtt", "disabled"))
    data = {
        "status": "ok" if db else "degraded",
        "db": "ok" if db else "down",
        "mqtt": mqtt,
        "version": __version__,
    }
    return web.Response(
        body=dumps({"ok": True, "data": data}), status=200 if db else 503, content_type="application/json"
    )


def _document(app: web.Application) -> dict[str, Any]:
    state = app[keys.STATE]
    if "openapi" not in state:
        state["openapi"] = build(app[keys.ENDPOINTS], __version__)
    return state["openapi"]  # type: ignore[return-value]


@router.get("/openapi.json", public=True, enveloped=False)
async def get_openapi(rq: Req) -> web.Response:
    """The OpenAPI 3.1 document of this server."""
    return web.Response(body=dumps(_document(rq.request.app)), content_type="application/json")


@router.get("/docs", public=True, media_type="text/html")
async def get_docs(rq: Req) -> web.Response:
    """A self-contained HTML page listing every operation (works offline, no CDN)."""
    doc = _document(rq.request.app)
    rows = []
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            perms = html.escape(op.get("description", "public" if op.get("security") == [] else "signed-in"))
            rows.append(
                f"<tr><td><code>{method.upper()}</code></td><td><code>{html.escape(path)}</code></td>"
                f"<td>{html.escape(op['summary'])}</td><td>{perms}</td></tr>"
            )
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>SMT MES API</title><style>"
        "body{font-family:system-ui,sans-serif;margin:2rem}table{border-collapse:collapse}"
        "td,th{border-bottom:1px solid #ddd;padding:4px 10px;text-align:left;vertical-align:top}"
        "</style></head><body><h1>SMT MES central API</h1>"
        f"<p>Version {html.escape(__version__)}. Machine-readable: "
        "<a href='/api/openapi.json'>/api/openapi.json</a>. Every response is enveloped: "
        "<code>{ok, data}</code> or <code>{ok:false, error:{code, message}}</code>.</p>"
        "<table><tr><th>Method</th><th>Path</th><th>What</th><th>Permission</th></tr>"
        + "".join(rows)
        + "</table></body></html>"
    )
    return web.Response(text=page, content_type="text/html")
