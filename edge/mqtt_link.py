"""The MQTT connection of the edge agent: paho-mqtt on its own thread, one fresh client per connection.

A fresh client per connection means paho's in-memory queue never outlives a connection: a message that could
not be sent is simply gone, and the forwarder sends it again from the outbox (edge.md delivery rule 6). The
thread only runs paho's network loop and reconnects with jittered backoff; every callback is handed to the
asyncio loop with `call_soon_threadsafe`, where all decisions are taken.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion

from edge.config import MqttConfig, redact
from shared.backoff import Backoff

log = logging.getLogger(__name__)

# publish() from the loop wakes paho's select at once; the timeout only bounds keepalive/stop checks.
_LOOP_TIMEOUT = 0.5
_DISCONNECT_GRACE = 2.0


@dataclass(frozen=True)
class Will:
    topic: str
    payload: bytes


class MqttLink:
    """Keeps one MQTT connection up (reconnecting with backoff) and reports to the asyncio loop.

    `on_ready(True)` once connected *and* subscribed to every topic of `subscriptions`, `on_ready(False)` when
    that connection ends; `on_message(topic, payload)` for each message received. Both run on the loop.
    """

    def __init__(
        self,
        cfg: MqttConfig,
        *,
        client_id: str,
        subscriptions: list[str],
        will: Callable[[], Will],
        on_ready: Callable[[bool], None],
        on_message: Callable[[str, bytes], None],
        reconnect_min: float,
        reconnect_max: float,
    ) -> None:
        self._cfg = cfg
        self._client_id = client_id
        self._subscriptions = subscriptions
        self._will = will
        self._on_ready = on_ready
        self._on_message = on_message
        self._backoff = Backoff(base=reconnect_min, cap=reconnect_max)
        self._username, self._password = cfg.credentials()
        self._tls = cfg.ssl_context() if cfg.tls else None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._client: mqtt.Client | None = None
        self._generation = 0
        # Loop-side state (only touched on the asyncio thread).
        self.ready = False
        self.last_error: str | None = None
        self.connected_since: float | None = None
        self.connects = 0
        self._ready_gen = -1
        self._puback: dict[tuple[int, int], asyncio.Future[None]] = {}

    # ---- loop side ----------------------------------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._main, name="mqtt-link", daemon=True)
        self._thread.start()

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> asyncio.Future[None] | None:
        """Publishes at QoS 1 when connected; None (nothing queued anywhere) when not.

        The future resolves on the broker's PUBACK and never resolves if the connection drops first.
        """
        with self._lock:
            client, gen = self._client, self._generation
        if not self.ready or client is None or gen != self._ready_gen:
            return None
        info = client.publish(topic, payload, qos=1, retain=retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            # The connection dropped under us; that client is discarded, so paho never sends this later.
            return None
        assert self._loop is not None
        fut: asyncio.Future[None] = self._loop.create_future()
        self._puback[(gen, info.mid)] = fut
        return fut

    async def stop(self, last: tuple[str, bytes] | None = None) -> None:
        """Publishes `last` (retained) when connected and waits for its PUBACK, then disconnects cleanly."""
        if last is not None:
            fut = self.publish(last[0], last[1], retain=True)
            if fut is not None:
                # asyncio.wait, not wait_for: the future is cancelled if the connection drops meanwhile.
                await asyncio.wait({fut}, timeout=_DISCONNECT_GRACE)
                if not fut.done() or fut.cancelled():
                    log.warning("the broker did not confirm the final status message")
        self._stopping.set()
        with self._lock:
            client = self._client
        if client is not None:
            client.disconnect()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
        self._mark_down(self._generation, None)

    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        """From paho's thread to the asyncio loop."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop closed between the check and the call: the agent is gone
            pass

    def _mark_ready(self, gen: int) -> None:
        if gen != self._generation or self._stopping.is_set():
            return
        self.ready = True
        self._ready_gen = gen
        self.last_error = None
        self.connected_since = time.time()
        self.connects += 1
        log.info("connected to %s as %s", self._cfg.endpoint, self._client_id)
        self._on_ready(True)

    def _mark_down(self, gen: int, error: str | None) -> None:
        if not self.ready or gen != self._ready_gen:
            # Never up: the first reason given (refused, TLS, …) is the one worth keeping.
            if error is not None and gen == self._generation and self.last_error is None:
                self.last_error = error
            return
        self.last_error = error
        self.ready = False
        self.connected_since = None
        for fut in self._puback.values():
            fut.cancel()
        self._puback.clear()
        if error:
            log.warning("connection to %s lost: %s", self._cfg.endpoint, error)
        self._on_ready(False)

    def _note_error(self, gen: int, error: str) -> None:
        if gen == self._generation:
            if error != self.last_error:
                log.warning("cannot connect to %s: %s", self._cfg.endpoint, error)
            self.last_error = error

    def _got_puback(self, gen: int, mid: int) -> None:
        fut = self._puback.pop((gen, mid), None)
        if fut is not None and not fut.done():
            fut.set_result(None)

    # ---- network thread -----------------------------------------------------------------------------------

    def _new_client(self, gen: int) -> mqtt.Client:
        v5 = self._cfg.protocol == "5"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self._client_id,
            clean_session=None if v5 else True,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            reconnect_on_failure=False,
        )
        client.connect_timeout = self._cfg.connect_timeout
        # publish() from the asyncio thread must only queue the packet and wake this thread (as with
        # loop_start); without a registered writer paho would write to the socket from the caller's thread.
        client.on_socket_register_write = lambda *_: None
        if self._username is not None:
            client.username_pw_set(self._username, self._password)
        if self._tls is not None:
            client.tls_set_context(self._tls)
        will = self._will()
        client.will_set(will.topic, will.payload, qos=1, retain=True)
        client.on_connect = lambda c, u, flags, rc, props: self._cb_connect(gen, c, rc)
        client.on_subscribe = lambda c, u, mid, codes, props: self._cb_subscribe(gen, c, codes)
        client.on_message = lambda c, u, msg: self._post(self._on_message, msg.topic, bytes(msg.payload))
        client.on_publish = lambda c, u, mid, rc, props: self._post(self._got_puback, gen, mid)
        client.on_disconnect = lambda c, u, flags, rc, props: self._cb_disconnect(gen, rc)
        return client

    def _cb_connect(self, gen: int, client: mqtt.Client, rc: Any) -> None:
        if rc.is_failure:
            self._post(self._note_error, gen, f"connection refused by the broker: {rc}")
            return
        self._backoff.reset()
        client.subscribe([(topic, 1) for topic in self._subscriptions])

    def _cb_subscribe(self, gen: int, client: mqtt.Client, codes: list[Any]) -> None:
        refused = [str(c) for c in codes if c.is_failure]
        if refused:
            # Without the acks subscription nothing can ever be confirmed: drop and retry later (ACL fixed?).
            self._post(self._note_error, gen, f"subscription refused by the broker: {', '.join(refused)}")
            client.disconnect()
            return
        self._post(self._mark_ready, gen)

    def _cb_disconnect(self, gen: int, rc: Any) -> None:
        if self._stopping.is_set():
            self._post(self._mark_down, gen, None)  # our own goodbye, not a loss
            return
        reason = None if rc is None or str(rc) in ("Success", "Normal disconnection") else str(rc)
        self._post(self._mark_down, gen, reason or "disconnected")

    def _main(self) -> None:
        while not self._stopping.is_set():
            with self._lock:
                self._generation += 1
                gen = self._generation
            client = self._new_client(gen)
            try:
                client.connect(self._cfg.host, self._cfg.port, keepalive=self._cfg.keepalive)
            except (OSError, ValueError) as exc:  # refused, unreachable, DNS, TLS handshake (ssl.SSLError)
                self._post(self._note_error, gen, redact(f"{type(exc).__name__}: {exc}"))
                self._stopping.wait(self._backoff.next_delay())
                continue
            with self._lock:
                self._client = client
            try:
                self._run_connection(client)
            except Exception as exc:  # this thread must never die silently: log, drop the client, reconnect
                log.exception("MQTT network loop failed")
                self._post(self._note_error, gen, f"network loop failed: {type(exc).__name__}: {exc}")
            with self._lock:
                self._client = None
            self._post(self._mark_down, gen, None if self._stopping.is_set() else "connection closed")
            if not self._stopping.is_set():
                self._stopping.wait(self._backoff.next_delay())

    def _run_connection(self, client: mqtt.Client) -> None:
        deadline: float | None = None
        while True:
            rc = client.loop(timeout=_LOOP_TIMEOUT)
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return
            if self._stopping.is_set():
                # Let the DISCONNECT packet go out, but never hang the shutdown on a dead socket.
                deadline = deadline or time.monotonic() + _DISCONNECT_GRACE
                if time.monotonic() > deadline:
                    return
