"""The MQTT broker for tests that only need one (no restarts, no cuts): the machine's Mosquitto on
127.0.0.1:1883, else (a laptop without it) an embedded amqtt broker on its own thread — unless
MES_REQUIRE_SERVICES=1, which makes a missing Mosquitto an error. Tests that restart or cut the broker start
their own (tests/brokers.py)."""

from __future__ import annotations

import asyncio
import os
import threading
from functools import cache

from tests import services

MOSQUITTO_HOST = os.environ.get("MES_TEST_MQTT_HOST", "127.0.0.1")
MOSQUITTO_PORT = int(os.environ.get("MES_TEST_MQTT_PORT", "1883"))
USED: set[str] = set()


@cache
def mosquitto_available() -> bool:
    ok = services._reachable(MOSQUITTO_HOST, MOSQUITTO_PORT)
    if not ok and services.REQUIRE:
        raise RuntimeError(
            f"MES_REQUIRE_SERVICES=1 but Mosquitto is not reachable at {MOSQUITTO_HOST}:{MOSQUITTO_PORT}"
        )
    return ok


@cache
def _embedded_url() -> str:
    from central.mqtt.broker import EmbeddedBroker

    broker = EmbeddedBroker()
    started = threading.Event()

    def run() -> None:
        loop = asyncio.new_event_loop()
        loop.run_until_complete(broker.start())
        started.set()
        loop.run_forever()

    threading.Thread(target=run, name="test-amqtt", daemon=True).start()
    if not started.wait(10):
        raise RuntimeError("the embedded amqtt broker did not start")
    return broker.url


def broker_url() -> str:
    if mosquitto_available():
        USED.add("mosquitto")
        return f"mqtt://{MOSQUITTO_HOST}:{MOSQUITTO_PORT}"
    USED.add("amqtt (fallback)")
    return _embedded_url()
