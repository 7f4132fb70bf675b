"""The middleware chain (outermost first): request id → errors → audit of refusals → auth → idempotency."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from central.api import keys
from central.api.registry import Endpoint
from central.api.request import ANONYMOUS, audit_context, read_json
from central.api.wire import fail
from central.domain.errors import Forbidden, MesError, Unauthorized
from central.services import idempotency
from central.services.uow import record_refusal

log = logging.getLogger("central.api")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")
COOKIE = "mes_session"


def endpoint_of(request: web.Request) -> Endpoint | None:
    return getattr(request.match_info.handler, "endpoint", None)


@web.middleware
async def request_id_mw(request: web.Request, handler: Handler) -> web.StreamResponse:
    rid = request.headers.get("X-Request-Id", "")
    request[keys.REQUEST_ID] = rid if _REQUEST_ID.match(rid) else uuid.uuid4().hex
    response = await handler(request)
    response.headers["X-Request-Id"] = request[keys.REQUEST_ID]
    return response


def _db_down(exc: BaseException) -> bool:
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, ConnectionError | OSError | TimeoutError)


@web.middleware
async def error_mw(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except MesError as exc:
        return fail(exc.status, exc.code, exc.message, exc.details)
    except web.HTTPException as exc:
        if exc.status == 404:
            return fail(404, "NOT_FOUND", f"No route for {request.method} {request.path}")
        if exc.status == 405:
            return fail(
                405,
                "METHOD_NOT_ALLOWED",
                f"Method {request.method} not allowed on {request.path}",
                headers={"Allow": exc.headers.get("Allow", "")},
            )
        if exc.status == 413:
            return fail(413, "PAYLOAD_TOO_LARGE", "Request body too large")
        if exc.status < 400:
            raise
        return fail(exc.status, "BAD_REQUEST" if exc.status < 500 else "INTERNAL_ERROR", exc.reason)
    except Exception as exc:
        if _db_down(exc):
            log.warning("database unavailable on %s %s: %s", request.method, request.path, type(exc).__name__)
            return fail(
                503, "SERVICE_UNAVAILABLE", "Database unavailable; retry later", headers={"Retry-After": "5"}
            )
        log.exception(
            "unhandled error on %s %s (request %s)",
            request.method,
            request.path,
            request.get(keys.REQUEST_ID),
        )
        return fail(500, "INTERNAL_ERROR", "Internal server error")


@web.middleware
async def audit_mw(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every refused write leaves a FAIL audit row (the successful ones are written inside their tx)."""
    ep = endpoint_of(request)
    if ep is None or not ep.is_write or (ep.public and ep.action != "SIGN_IN"):
        return await handler(request)
    try:
        request[keys.BODY] = await read_json(request)
    except MesError:
        request[keys.BODY] = None
    try:
        return await handler(request)
    except MesError as exc:
        actor = request.get(keys.ACTOR)
        if actor is not None or ep.action == "SIGN_IN":
            who = actor or ANONYMOUS
            await record_refusal(
                request.app[keys.DB].writer, who, audit_context(request, ep), exc.code, exc.message
            )
        raise


def credentials(request: web.Request) -> tuple[str | None, str | None]:
    auth = request.headers.get("Authorization", "")
    bearer = auth[7:].strip() if auth[:7].lower() == "bearer " else None
    return request.cookies.get(COOKIE), bearer or None


@web.middleware
async def auth_mw(request: web.Request, handler: Handler) -> web.StreamResponse:
    ep = endpoint_of(request)
    if ep is None or ep.public:
        return await handler(request)
    cookie, bearer = credentials(request)
    actor = await request.app[keys.AUTH].resolve(cookie=cookie, bearer=bearer)
    if actor is None:
        raise Unauthorized("UNAUTHORIZED", "Authentication required")
    request[keys.ACTOR] = actor
    if ep.perms and not actor.has_any(ep.perms):
        raise Forbidden("FORBIDDEN", f"Missing required permission: {' | '.join(ep.perms)}")
    return await handler(request)


@web.middleware
async def idempotency_mw(request: web.Request, handler: Handler) -> web.StreamResponse:
    ep = endpoint_of(request)
    key = request.headers.get("Idempotency-Key")
    if ep is None or not ep.is_write or key is None or ep.public:
        return await handler(request)
    if not 1 <= len(key) <= 128:
        raise MesError("VALIDATION_FAILED", "Idempotency-Key must be 1..128 characters", 422)
    actor = request[keys.ACTOR]
    caller = f"k{actor.api_key_id}" if actor.api_key_id else f"u{actor.user_id}"
    body_hash = idempotency.request_hash(request.method, request.path, await request.read())
    db = request.app[keys.DB]
    settings = request.app[keys.SETTINGS]
    claim = await idempotency.begin(
        db.writer,
        caller,
        key,
        request.method,
        request.path,
        body_hash,
        settings.idempotency_ttl_seconds,
        settings.idempotency_lease_seconds,
    )
    if isinstance(claim, idempotency.StoredResponse):
        return web.Response(
            body=claim.body,
            status=claim.status,
            content_type="application/json",
            headers={"Idempotency-Replayed": "true"},
        )
    request[keys.IDEMPOTENCY_CLAIM] = claim  # Req.write marks it APPLIED inside the business transaction
    try:
        response = await handler(request)
    except MesError as exc:
        if exc.status in (400, 404, 409):
            # A business refusal is this key's answer: a replay gets the same refusal, never a second try.
            await idempotency.finish(
                db.writer, claim, exc.status, fail(exc.status, exc.code, exc.message, exc.details).body
            )
        else:
            await idempotency.abandon(db.writer, claim)
        raise
    except BaseException:
        # Validation, auth or server errors store nothing: the caller may fix the request and retry.
        await idempotency.abandon(db.writer, claim)
        raise
    body: Any = getattr(response, "body", None)
    if isinstance(body, bytes) and response.status < 500:
        await idempotency.finish(db.writer, claim, response.status, body)
    else:
        await idempotency.abandon(db.writer, claim)
    return response
