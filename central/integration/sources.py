"""Where pull syncs read from: the `SourceAdapter` protocol and its HTTP JSON implementation.

The wire contract (query parameters, response envelope, item fields) is in docs/integration.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import aiohttp
import orjson

from central.config import Settings
from central.domain.clock import iso

ERP_ENTITIES = ("routes", "work-orders", "materials", "boms", "work-centers")
TPM_ENTITIES = ("equipment", "status-logs", "maintenance-tasks")
# A misbehaving upstream must not exhaust memory: pages are small JSON documents.
MAX_BODY_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class Page:
    """One page of upstream items; `next_start_row` only when the upstream names it."""

    items: list[dict[str, Any]]
    has_more: bool
    next_start_row: int | None = None
    url: str | None = None


class SourceError(Exception):
    """The upstream could not be read. `code` is the API error code, `reason` the kind of failure."""

    def __init__(
        self, code: str, reason: str, message: str, *, http_status: int | None = None, url: str | None = None
    ) -> None:
        super().__init__(message)
        self.code = code  # UPSTREAM_FAILED | INTEGRATION_NOT_CONFIGURED
        self.reason = reason  # HTTP_ERROR | TIMEOUT | CONNECTION | BAD_JSON | BAD_PAYLOAD | NOT_CONFIGURED
        self.message = message
        self.http_status = http_status
        self.url = url


class _TooLarge(Exception):
    pass


class SourceAdapter(Protocol):
    """Reads one page of one entity ("routes", "equipment", …) changed at or after `since`."""

    system: str

    async def fetch(self, entity: str, since: datetime | None, start_row: int, limit: int) -> Page: ...


@dataclass
class UnconfiguredSource:
    """Stands in for a system without a base URL: every fetch fails the same, explained way."""

    system: str

    async def fetch(self, entity: str, since: datetime | None, start_row: int, limit: int) -> Page:
        raise SourceError(
            "INTEGRATION_NOT_CONFIGURED",
            "NOT_CONFIGURED",
            f"{self.system} pull is not configured (set MES_{self.system}_BASE_URL)",
        )


@dataclass
class HttpJsonSource:
    """GET {base_url}/{entity}?since&startRow&limit with an optional Bearer key.

    Uses the given ClientSession (the scheduler shares one) or opens one per fetch.
    """

    system: str
    base_url: str
    api_key: str | None = None
    timeout_seconds: float = 30.0
    session: aiohttp.ClientSession | None = None

    async def fetch(self, entity: str, since: datetime | None, start_row: int, limit: int) -> Page:
        url = f"{self.base_url.rstrip('/')}/{entity}"
        params = {"startRow": str(start_row), "limit": str(limit)}
        if since is not None:
            params["since"] = iso(since) or ""
        headers = {"Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"

        def fail(reason: str, message: str, status: int | None = None) -> SourceError:
            text = f"{self.system} {message}"
            return SourceError("UPSTREAM_FAILED", reason, text, http_status=status, url=url)

        limits = aiohttp.ClientTimeout(total=self.timeout_seconds)
        try:
            if self.session is not None:
                status, body = await _get(self.session, url, params, headers, limits)
            else:
                async with aiohttp.ClientSession() as session:
                    status, body = await _get(session, url, params, headers, limits)
        except _TooLarge:
            raise fail("BAD_PAYLOAD", f"sent more than {MAX_BODY_BYTES} bytes") from None
        except TimeoutError:
            raise fail("TIMEOUT", f"did not answer within {self.timeout_seconds:g}s") from None
        except aiohttp.ClientError as exc:
            raise fail("CONNECTION", f"is unreachable: {type(exc).__name__}: {exc}") from None
        if not 200 <= status < 300:
            raise fail("HTTP_ERROR", f"answered HTTP {status}", status)
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise fail("BAD_JSON", f"sent invalid JSON: {exc}", status) from None
        return parse_envelope(self.system, doc, url)


async def _get(
    session: aiohttp.ClientSession,
    url: str,
    params: dict[str, str],
    headers: dict[str, str],
    limits: aiohttp.ClientTimeout,
) -> tuple[int, bytes]:
    async with session.get(url, params=params, headers=headers, timeout=limits) as resp:
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise _TooLarge
            chunks.append(chunk)
        return resp.status, b"".join(chunks)


def parse_envelope(system: str, doc: Any, url: str | None = None) -> Page:
    """`{cursor:{hasMore, nextStartRow?}, items:[…]}` (or top-level `hasMore`), bare or as `{ok, data}`."""
    if isinstance(doc, dict) and doc.get("ok") is True and isinstance(doc.get("data"), dict):
        doc = doc["data"]

    def bad(why: str) -> SourceError:
        message = f"{system} sent an unexpected document: {why}"
        return SourceError("UPSTREAM_FAILED", "BAD_PAYLOAD", message, url=url)

    if not isinstance(doc, dict):
        raise bad("not a JSON object")
    items = doc.get("items")
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise bad("`items` must be a list of objects")
    cursor = doc.get("cursor") if isinstance(doc.get("cursor"), dict) else {}
    has_more = cursor.get("hasMore", doc.get("hasMore", False))
    if not isinstance(has_more, bool):
        raise bad("`hasMore` must be true or false")
    nxt = cursor.get("nextStartRow", doc.get("nextStartRow"))
    if nxt is not None and (isinstance(nxt, bool) or not isinstance(nxt, int) or nxt < 0):
        raise bad("`nextStartRow` must be a non-negative integer")
    return Page(items=items, has_more=has_more, next_start_row=nxt, url=url)


def source_for(
    settings: Settings | None, system: str, session: aiohttp.ClientSession | None = None
) -> SourceAdapter:
    """The adapter configured for "ERP" or "TPM" (an `UnconfiguredSource` without a base URL)."""
    if settings is None:
        return UnconfiguredSource(system)
    base, key = (
        (settings.erp_base_url, settings.erp_api_key)
        if system == "ERP"
        else (settings.tpm_base_url, settings.tpm_api_key)
    )
    if not base:
        return UnconfiguredSource(system)
    return HttpJsonSource(
        system=system,
        base_url=base,
        api_key=key.get_secret_value() if key else None,
        timeout_seconds=settings.sync_timeout_seconds,
        session=session,
    )


def is_configured(settings: Settings | None, system: str) -> bool:
    if settings is None:
        return False
    return bool(settings.erp_base_url if system == "ERP" else settings.tpm_base_url)
