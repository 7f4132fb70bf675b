"""Turns a registered Endpoint into an aiohttp handler: parse → validate → call → envelope."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Concatenate, ParamSpec, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

from central.api import keys
from central.api.registry import Endpoint
from central.api.wire import ok
from central.domain.errors import MesError, NotFound
from central.schemas.base import parse_row_id
from central.services.actor import Actor
from central.services.uow import AuditContext, UnitOfWork
from shared.json_shape import MAX_NESTING, find_oddity

P = ParamSpec("P")
ANONYMOUS = Actor(user_id=None, name="anonymous", actor_type="ANONYMOUS")
R = TypeVar("R")


class RequestInvalid(MesError):
    """Body or query did not match its schema (422 VALIDATION_FAILED with pydantic's details)."""

    status = 422

    def __init__(self, details: list[dict[str, Any]], message: str = "Request validation failed") -> None:
        super().__init__("VALIDATION_FAILED", message, details=details)


def validation_details(exc: ValidationError, where: str) -> list[dict[str, Any]]:
    # `input` and `ctx` are dropped: they may echo secrets (passwords) back or into logs.
    return [{"loc": [where, *err["loc"]], "msg": err["msg"], "type": err["type"]} for err in exc.errors()]


def client_ip(request: web.Request) -> str | None:
    """The client's address: the peer's, or what a trusted reverse proxy says it is. Anyone else could send
    X-Forwarded-For to fake the audit trail's address and slip the per-address sign-in limit."""
    peer = request.remote
    if peer not in request.app[keys.SETTINGS].trusted_proxies:
        return peer
    fwd = request.headers.get("X-Forwarded-For")
    return fwd.split(",")[-1].strip() if fwd else request.headers.get("X-Real-IP") or peer


def audit_context(request: web.Request, ep: Endpoint) -> AuditContext:
    ip = client_ip(request)
    body = request.get(keys.BODY)
    return AuditContext(
        entity_type=ep.entity_type,
        action=ep.action,
        request_id=request.get(keys.REQUEST_ID),
        ip=ip,
        user_agent=request.headers.get("User-Agent"),
        trace_id=request.headers.get("traceparent"),
        idempotency_key=request.headers.get("Idempotency-Key"),
        payload=_redact(body) if isinstance(body, dict) else None,
        is_write=ep.is_write,
    )


_SECRET_FIELDS = {"password", "newPassword", "currentPassword", "token", "key", "apiKey", "secret"}


def _redact(body: dict[str, Any]) -> dict[str, Any]:
    return {k: ("***" if k in _SECRET_FIELDS else v) for k, v in body.items()}


class Req:
    """What a handler sees: validated inputs, the caller, and a way to run one unit of work."""

    def __init__(self, request: web.Request, ep: Endpoint) -> None:
        self.request = request
        self.endpoint = ep
        self.actor: Actor = request.get(keys.ACTOR) or ANONYMOUS
        self._db = request.app[keys.DB]

    @property
    def settings(self) -> Any:
        return self.request.app[keys.SETTINGS]

    def path(self, name: str) -> str:
        return self.request.match_info[name]

    def path_int(self, name: str, code: str = "NOT_FOUND") -> int:
        raw = self.request.match_info[name]
        value = parse_row_id(raw)
        if value is None:
            raise NotFound(code, f"{name} {raw!r} not found")
        return value

    async def read(
        self, fn: Callable[Concatenate[UnitOfWork, P], Awaitable[R]], *args: P.args, **kwargs: P.kwargs
    ) -> R:
        async with UnitOfWork(
            self._db.reader, self.actor, audit_context(self.request, self.endpoint), self.settings
        ) as uow:
            return await fn(uow, *args, **kwargs)

    async def write(
        self, fn: Callable[Concatenate[UnitOfWork, P], Awaitable[R]], *args: P.args, **kwargs: P.kwargs
    ) -> R:
        async with UnitOfWork(
            self._db.writer,
            self.actor,
            audit_context(self.request, self.endpoint),
            self.settings,
            idempotency=self.request.get(keys.IDEMPOTENCY_CLAIM),
        ) as uow:
            return await fn(uow, *args, **kwargs)


async def read_json(request: web.Request) -> Any:
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise RequestInvalid(
            [{"loc": ["body"], "msg": f"malformed JSON: {exc}", "type": "json_invalid"}],
            "Malformed JSON body",
        ) from exc
    _refuse_nul(data, ["body"])
    return data


def _refuse_nul(value: Any, loc: list[Any]) -> None:
    """A NUL character or nesting beyond MAX_NESTING is refused here (422), before it reaches a query, a row
    or the audit trail, where it would be a 500 (shared/json_shape.py)."""
    odd = find_oddity(value)
    if odd is None:
        return
    where, kind = odd
    if kind == "string_nul":
        msg, summary = "NUL characters are not allowed", "NUL characters are not allowed"
    else:
        msg, summary = (
            f"nested deeper than {MAX_NESTING} levels",
            f"JSON nested deeper than {MAX_NESTING} levels",
        )
    raise RequestInvalid([{"loc": [*loc, *where], "msg": msg, "type": kind}], summary)


def _parse(model: type[BaseModel], data: Any, where: str) -> BaseModel:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RequestInvalid(validation_details(exc, where)) from exc


def make_handler(ep: Endpoint) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        kwargs: dict[str, Any] = {}
        if ep.body is not None:
            data = request.get(keys.BODY)
            if data is None:
                data = await read_json(request)
            if data == {} and ep.body_optional:
                kwargs["body"] = None
            else:
                kwargs["body"] = _parse(ep.body, data, "body")
        for name, raw in request.match_info.items():
            _refuse_nul(raw, ["path", name])
        if ep.query is not None:
            query = dict(request.query)
            _refuse_nul(query, ["query"])
            kwargs["query"] = _parse(ep.query, query, "query")
        result = await ep.handler(Req(request, ep), **kwargs)
        if isinstance(result, web.StreamResponse):
            return result
        if ep.response_adapter is not None and result is not None:
            result = ep.response_adapter.dump_python(
                ep.response_adapter.validate_python(result, from_attributes=True),
                mode="json",
                by_alias=True,
                exclude_none=ep.omit_none,
            )
        return ok(result, status=ep.status)

    handle.endpoint = ep  # type: ignore[attr-defined]
    handle.__name__ = ep.operation_id
    return handle
