"""(being written)"""

from __future__ import annotations

from central.api.registry import Router

router = Router(tag="routing")
