"""OpenAPI 3.1 document built from the endpoint registry and the same pydantic schemas the handlers use."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import GenerateJsonSchema

from central.api.registry import Endpoint

REF = "#/components/schemas/{model}"
_NAME = re.compile(r"[^A-Za-z0-9._-]")


def _error_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["ok", "error"],
        "properties": {
            "ok": {"const": False},
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "details": {}},
            },
        },
    }


def _query_params(model: Any) -> list[dict[str, Any]]:
    schema = model.model_json_schema(by_alias=True, ref_template=REF, mode="validation")
    required = set(schema.get("required", []))
    return [
        {"name": name, "in": "query", "required": name in required, "schema": prop}
        for name, prop in schema.get("properties", {}).items()
    ]


def build(endpoints: list[Endpoint], version: str) -> dict[str, Any]:
    defs: dict[str, Any] = {"ErrorEnvelope": _error_schema()}
    paths: dict[str, dict[str, Any]] = {}

    def merge(found: dict[str, Any]) -> None:
        for name, js in found.items():
            # Nested models are named by class name alone: two classes of one name would silently document
            # one of them in place of the other.
            if name in defs and defs[name] != js:
                raise ValueError(f"two different schemas named {name!r}: rename one of the models")
            defs[name] = js

    def schema_of(tp: Any, mode: str) -> dict[str, Any]:
        js = TypeAdapter(tp).json_schema(
            by_alias=True,
            ref_template=REF,
            mode=mode,  # type: ignore[arg-type]
            schema_generator=GenerateJsonSchema,
        )
        merge(js.pop("$defs", {}))
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            # Named models go to components so clients get one type per schema, not inlined copies.
            name = _NAME.sub("_", js.get("title", tp.__name__))
            if name in defs and defs[name] != js:
                name = f"{name}-{mode.capitalize()}"
            defs[name] = js
            return {"$ref": REF.format(model=name)}
        return js

    for ep in endpoints:
        op: dict[str, Any] = {
            "operationId": ep.operation_id,
            "summary": ep.summary,
            "tags": [ep.tag],
            "parameters": [
                {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                for p in ep.path_params
            ],
        }
        if ep.query is not None:
            op["parameters"] += _query_params(ep.query)
            qs = ep.query.model_json_schema(by_alias=True, ref_template=REF)
            merge(qs.get("$defs", {}))
        if ep.body is not None:
            op["requestBody"] = {
                "required": not ep.body_optional,
                "content": {"application/json": {"schema": schema_of(ep.body, "validation")}},
            }
        data = schema_of(ep.response, "serialization") if ep.response is not None else {}
        if ep.media_type != "application/json":
            body: dict[str, Any] = {"type": "string"}
        elif not ep.enveloped:
            body = data or {"type": "object"}
        else:
            body = {
                "type": "object",
                "required": ["ok", "data"],
                "properties": {"ok": {"const": True}, "data": data},
            }
        success = {"description": "Success", "content": {ep.media_type: {"schema": body}}}
        err = {"application/json": {"schema": {"$ref": REF.format(model="ErrorEnvelope")}}}
        op["responses"] = {
            str(ep.status): success,
            **{str(s): success for s in ep.also_status},
            "4XX": {"description": "Refused (see code)", "content": err},
            "5XX": {"description": "Server error or database unavailable", "content": err},
        }
        if ep.public:
            op["security"] = []
        elif ep.perms:
            op["description"] = "Requires any of: " + ", ".join(f"`{p}`" for p in ep.perms)
        paths.setdefault("/api" + ep.path, {})[ep.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "SMT MES central API",
            "version": version,
            "description": "Envelope, auth, lists and idempotency: see api.md.",
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": defs,
            "securitySchemes": {
                "session": {"type": "apiKey", "in": "cookie", "name": "mes_session"},
                "bearer": {"type": "http", "scheme": "bearer"},
            },
        },
        "security": [{"session": []}, {"bearer": []}],
    }
