"""What a parsed JSON document may not hold even when it fits its schema (REST bodies and MQTT batches alike).

A NUL character is valid JSON but PostgreSQL refuses it in text and JSONB (a 500, or a RETRY that looks like
a database outage). Nesting deeper than MAX_NESTING passes `dict[str, Any]` fields but cannot be stored: the
JSON parser reads 1,024 levels, orjson writes 255, the standard library stops at its recursion limit.
Iterative, so a deep document cannot exhaust the stack here either.
"""

from __future__ import annotations

from typing import Any, Literal

MAX_NESTING = 64  # the product's own documents use fewer than ten levels

Oddity = tuple[list[Any], Literal["string_nul", "too_deep"]]


def find_oddity(value: Any) -> Oddity | None:
    """The path to the first NUL-holding string or too-deep container, and which it is; None when fine."""
    stack: list[tuple[Any, list[Any]]] = [(value, [])]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return where, "string_nul"
            continue
        if not isinstance(item, dict | list):
            continue
        if len(where) >= MAX_NESTING:
            return where, "too_deep"
        if isinstance(item, dict):
            for k, v in item.items():
                stack.append((k, [*where, k.replace("\x00", "\\0")]))
                stack.append((v, [*where, k]))
        else:
            stack.extend((v, [*where, i]) for i, v in enumerate(item))
    return None
