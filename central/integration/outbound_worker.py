"""Delivery worker of the outbound ERP feedback outbox (domain.md §9 Push, §3 MesEvent).

Per event: claim it (one short transaction), POST it with no transaction open, record the attempt (another
short transaction). Several workers — tasks or processes on one PostgreSQL — can run side by side: the claim
is a compare-and-set, so each attempt of an event is made by exactly one of them. The ERP sees the same
Idempotency-Key on every attempt of an event, so a retry after a lost response is harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime, timedelta

import aiohttp
import orjson

from central.config import Settings
from central.db.engine import Database
from central.domain.clock import utcnow
from central.services import outbound
from central.services.uow import UnitOfWork

log = logging.getLogger(__name__)

BATCH = 50  # events per pass (domain.md §3)
REQUEST_TIMEOUT_SECONDS = 30.0
# A PROCESSING event older than this belongs to a worker that died mid-delivery: take it back. Far above the
# request timeout, so a live worker's slow delivery is never delivered twice at once.
CLAIM_TIMEOUT = timedelta(minutes=5)
ERROR_BODY_MAX = 2000


def erp_url(settings: Settings) -> str:
    base = (settings.outbound_erp_base_url or "").rstrip("/")
    path = settings.outbound_erp_path
    return f"{base}{path if path.startswith('/') else '/' + path}"


async def post_claim(
    http: aiohttp.ClientSession, settings: Settings, claim: outbound.Claim
) -> outbound.Attempt:
    """One HTTP attempt; any answer but 2xx, and any transport failure, is a failed attempt."""
    url = erp_url(settings)
    headers = {"Content-Type": "application/json", "Idempotency-Key": claim.idempotency_key}
    if settings.outbound_erp_api_key is not None:
        headers["Authorization"] = f"Bearer {settings.outbound_erp_api_key.get_secret_value()}"
    loop = asyncio.get_running_loop()
    started = loop.time()

    def took() -> int:
        return int((loop.time() - started) * 1000)

    try:
        async with http.post(
            url,
            data=orjson.dumps(claim.payload),
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS),
        ) as resp:
            body = (await resp.read())[: ERROR_BODY_MAX * 4].decode("utf-8", errors="replace")
            if 200 <= resp.status < 300:
                return outbound.Attempt(True, url, resp.status, None, took())
            error = f"HTTP {resp.status}: {body[:ERROR_BODY_MAX] or resp.reason or ''}".rstrip(": ")
            return outbound.Attempt(False, url, resp.status, error, took())
    except TimeoutError:
        return outbound.Attempt(False, url, None, f"timeout after {REQUEST_TIMEOUT_SECONDS:g} s", took())
    except aiohttp.ClientError as exc:
        return outbound.Attempt(False, url, None, f"{type(exc).__name__}: {exc}"[:ERROR_BODY_MAX], took())


async def deliver_due(
    db: Database,
    settings: Settings,
    http_session: aiohttp.ClientSession,
    now: datetime,
    *,
    batch: int = BATCH,
    claim_timeout: timedelta = CLAIM_TIMEOUT,
    stop: asyncio.Event | None = None,
) -> int:
    """One pass: delivers up to `batch` due events, one at a time (ends early once `stop` is set). `now` is
    the pass's clock (tests move it); it advances with real time during the pass. Returns the number of
    delivery attempts made."""
    if not settings.outbound_erp_base_url:  # misconfigured: spending attempts on it would dead-letter events
        return 0
    loop = asyncio.get_running_loop()
    started = loop.time()

    def clock() -> datetime:
        return now + timedelta(seconds=loop.time() - started)

    attempts = 0
    while attempts < batch and not (stop is not None and stop.is_set()):
        at = clock()
        async with UnitOfWork(db.writer) as uow:
            claim = await outbound.claim_next(uow, at, at - claim_timeout)
        if claim is None:
            break
        if claim.reclaimed:
            log.warning("outbound event %s was stuck in PROCESSING; delivering it again", claim.event_id)
        attempt = await post_claim(http_session, settings, claim)
        async with UnitOfWork(db.writer) as uow:
            status = await outbound.record_attempt(
                uow,
                claim,
                attempt,
                clock(),
                backoff_base=settings.outbound_backoff_base_seconds,
                backoff_max=settings.outbound_backoff_max_seconds,
            )
        attempts += 1
        if status == "FENCED":
            log.warning("outbound event %s was taken back by another worker during delivery", claim.event_id)
        elif not attempt.ok:
            log.warning("outbound event %s attempt failed (%s): %s", claim.event_id, status, attempt.error)
    return attempts


async def run_outbound_worker(db: Database, settings: Settings, stop: asyncio.Event) -> None:
    """Delivers until `stop` is set: a pass, then a pause of outbound_poll_seconds (none while a full batch
    suggests more is due). Does nothing unless outbound feedback is enabled and has a base URL."""
    if not settings.outbound_feedback_enabled:
        return
    if not settings.outbound_erp_base_url:
        log.error("outbound feedback is enabled but outbound_erp_base_url is not set: nothing is delivered")
        return
    log.info("outbound feedback worker delivering to %s", erp_url(settings))
    async with aiohttp.ClientSession() as http:
        while not stop.is_set():
            made = 0
            try:
                made = await deliver_due(db, settings, http, utcnow(), stop=stop)
            except Exception:  # the worker outlives a database outage; the traceback is logged, not hidden
                log.exception("outbound feedback pass failed; retrying after the poll interval")
            if made >= BATCH:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), settings.outbound_poll_seconds)
