"""Declares endpoints once: path, method, permissions, schemas. The app, auth and OpenAPI all read it."""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, get_type_hints

from aiohttp import web
from pydantic import BaseModel, TypeAdapter

Handler = Callable[..., Awaitable[Any]]
_PARAM = re.compile(r"\{(\w+)\}")


@dataclass
class Endpoint:
    method: str
    path: str  # aiohttp style, relative to /api: /lines/{lineId}
    handler: Handler
    perms: tuple[str, ...]
    public: bool
    status: int
    tag: str
    summary: str
    entity_type: str
    action: str
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    response: Any = None
    response_adapter: TypeAdapter[Any] | None = field(
        default=None, repr=False
    )  # None: handler-built response
    body_optional: bool = False
    omit_none: bool = False  # drop null fields from the response (optional keys such as inspectionOverride)
    # Handler-built responses other than the JSON envelope (the OpenAPI document, the HTML docs page).
    media_type: str = "application/json"
    enveloped: bool = True
    also_status: tuple[int, ...] = ()  # other statuses answered with the success body (health: 503 degraded)

    @property
    def is_write(self) -> bool:
        return self.method in {"POST", "PUT", "PATCH", "DELETE"}

    @property
    def path_params(self) -> list[str]:
        return _PARAM.findall(self.path)

    @property
    def operation_id(self) -> str:
        return self.handler.__name__


@dataclass
class Router:
    """One per handler module; `tag` groups its endpoints in the OpenAPI document."""

    tag: str
    entity_type: str = "SYSTEM_CONFIG"
    endpoints: list[Endpoint] = field(default_factory=list)

    def route(
        self,
        method: str,
        path: str,
        *,
        perms: tuple[str, ...] | list[str] = (),
        public: bool = False,
        status: int = 200,
        action: str | None = None,
        entity_type: str | None = None,
        summary: str | None = None,
        response_model: Any = None,
        omit_none: bool = False,
        media_type: str = "application/json",
        enveloped: bool = True,
        also_status: tuple[int, ...] = (),
    ) -> Callable[[Handler], Handler]:
        def deco(fn: Handler) -> Handler:
            hints = get_type_hints(fn)
            sig = inspect.signature(fn)
            body = hints.get("body") if "body" in sig.parameters else None
            body_optional = body is not None and sig.parameters["body"].default is not inspect.Parameter.empty
            if body is not None and not (isinstance(body, type) and issubclass(body, BaseModel)):
                body = _unwrap_optional(body)
            query = hints.get("query") if "query" in sig.parameters else None
            response = hints.get("return")
            if isinstance(response, type) and issubclass(response, web.StreamResponse):
                # The handler builds its own response (cookies, non-JSON); `response_model` documents it.
                response, adapter = response_model, None
            else:
                adapter = TypeAdapter(response) if response not in (None, type(None)) else None
            ep = Endpoint(
                method=method,
                path=path,
                handler=fn,
                perms=tuple(perms),
                public=public,
                status=status,
                tag=self.tag,
                summary=summary or (fn.__doc__ or fn.__name__).strip().splitlines()[0],
                entity_type=entity_type or self.entity_type,
                action=action or fn.__name__.upper(),
                body=body,
                query=query,
                response=response,
                response_adapter=adapter,
                body_optional=body_optional,
                omit_none=omit_none,
                media_type=media_type,
                enveloped=enveloped,
                also_status=also_status,
            )
            self.endpoints.append(ep)
            return fn

        return deco

    def get(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("POST", path, **kw)

    def put(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("PUT", path, **kw)

    def patch(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("PATCH", path, **kw)

    def delete(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("DELETE", path, **kw)


def _unwrap_optional(tp: Any) -> Any:
    for arg in getattr(tp, "__args__", ()):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return tp
