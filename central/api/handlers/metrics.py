"""Prometheus exposition of central's series (central/metrics.py lists them)."""

from __future__ import annotations

from aiohttp import web

from central import metrics
from central.api.registry import Router
from central.api.request import Req
from central.domain.clock import utcnow
from central.services.metrics import figures

router = Router(tag="system", entity_type="SYSTEM_CONFIG")


# system:config, like the rest of the operations views: a scraper signs in with an API key (Bearer) of a
# machine user holding it. The figures name no business data but do tell a visitor the plant's activity.
@router.get("/metrics", perms=("system:config",), media_type="text/plain", enveloped=False)
async def get_metrics(rq: Req) -> web.Response:
    """Prometheus metrics: HTTP latency, ingest rate and lag, outbox depth, edges online."""
    figs = await rq.read(figures, utcnow())
    body, content_type = metrics.render(metrics.Figures(**figs), rq.request.headers.get("Accept"))
    return web.Response(body=body, headers={"Content-Type": content_type})
