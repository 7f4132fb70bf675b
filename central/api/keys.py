"""Typed application and request keys (aiohttp AppKey) shared by the api modules."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from central.services.actor import Actor
from central.services.idempotency import Claim

if TYPE_CHECKING:
    from central.api.registry import Endpoint
    from central.config import Settings
    from central.db.engine import Database
    from central.mqtt.consumer import MqttConsumer
    from central.services.auth import AuthService

SETTINGS: web.AppKey[Settings] = web.AppKey("settings")
DB: web.AppKey[Database] = web.AppKey("db")
AUTH: web.AppKey[AuthService] = web.AppKey("auth")
ENDPOINTS: web.AppKey[list[Endpoint]] = web.AppKey("endpoints")
STATE: web.AppKey[dict[str, object]] = web.AppKey("state")
MQTT: web.AppKey[MqttConsumer | None] = web.AppKey("mqtt")

REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id", str)
ACTOR: web.RequestKey[Actor] = web.RequestKey("actor", Actor)
BODY: web.RequestKey[Any] = web.RequestKey("body", object)
IDEMPOTENCY_CLAIM: web.RequestKey[Claim] = web.RequestKey("idempotency_claim", Claim)
