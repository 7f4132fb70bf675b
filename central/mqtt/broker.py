"""The embedded MQTT broker (amqtt, in this process) for `MES_MQTT_URL=embedded`: the demo and laptops.

amqtt speaks MQTT 3.1.1 only and has no shared subscriptions, so the embedded mode is single-instance by
design; production points MES_MQTT_URL at Mosquitto or EMQX. It listens on 127.0.0.1 only and allows
anonymous clients.
"""

from __future__ import annotations

import logging
import socket

from amqtt.broker import Broker

log = logging.getLogger("central.mqtt")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedBroker:
    def __init__(self, port: int = 0) -> None:
        self.port = port or free_port()
        self._broker: Broker | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._broker = Broker(
            {
                "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{self.port}"}},
                "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
            }
        )
        await self._broker.start()
        log.info("embedded MQTT broker listening on %s", self.url)

    async def stop(self) -> None:
        if self._broker is not None:
            await self._broker.shutdown()
            self._broker = None
