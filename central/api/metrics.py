"""Times every request for `mes_http_request_duration_seconds` (central/metrics.py): the outermost middleware,
so the status recorded is the one sent, error envelopes included."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from central import metrics

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
UNMATCHED = "UNMATCHED"


def route_of(request: web.Request) -> str:
    """The route template (`/api/runs/{runNo}`), never the raw path: one label value per route."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED


@web.middleware
async def metrics_mw(request: web.Request, handler: Handler) -> web.StreamResponse:
    start = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:  # only what error_mw lets through (redirects)
        status = exc.status
        raise
    except asyncio.CancelledError:
        status = 499  # the client went away before the answer (nginx's code for it)
        raise
    finally:
        metrics.observe_request(request.method, route_of(request), status, time.perf_counter() - start)
