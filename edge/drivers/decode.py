"""Register ↔ value conversion with configurable byte and word order (pure; driver and simulator).

Registers are 16-bit words as the Modbus wire gives them. `byte_order` is the order of the two bytes
inside each register, `word_order` the order of the registers of a multi-register value ("big" = most
significant first, the Modbus convention). A string keeps its characters in register order; only its
byte order applies.
"""

from __future__ import annotations

import struct
from typing import Any

from edge.device_config import REGISTER_WIDTH

_STRUCT = {
    "int16": "h",
    "uint16": "H",
    "int32": "i",
    "uint32": "I",
    "int64": "q",
    "uint64": "Q",
    "float32": "f",
    "float64": "d",
}


def _swap(reg: int) -> int:
    return ((reg & 0xFF) << 8) | (reg >> 8)


def decode(regs: list[int], type_: str, *, byte_order: str = "big", word_order: str = "big") -> Any:
    """The value held by `regs` (exactly the signal's registers)."""
    words = [_swap(r) for r in regs] if byte_order == "little" else list(regs)
    if type_ == "string":
        raw = b"".join(w.to_bytes(2, "big") for w in words)
        return raw.split(b"\x00", 1)[0].decode("utf-8", errors="replace").strip()
    if type_ == "bool":
        return words[0] != 0
    width = REGISTER_WIDTH[type_]
    if len(words) != width:
        raise ValueError(f"{type_} takes {width} registers, got {len(words)}")
    if word_order == "little":
        words.reverse()
    raw = b"".join(w.to_bytes(2, "big") for w in words)
    return struct.unpack(f">{_STRUCT[type_]}", raw)[0]


def encode(
    value: Any, type_: str, *, byte_order: str = "big", word_order: str = "big", length: int = 0
) -> list[int]:
    """Registers holding `value` (inverse of `decode`); a string is NUL-padded to `length` registers."""
    if type_ == "string":
        raw = str(value).encode("utf-8")[: length * 2].ljust(length * 2, b"\x00")
        words = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
    elif type_ == "bool":
        words = [1 if value else 0]
    else:
        raw = struct.pack(f">{_STRUCT[type_]}", value)
        words = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
        if word_order == "little":
            words.reverse()
    return [_swap(w) for w in words] if byte_order == "little" else words


def scaled(value: Any, scale: float | None) -> Any:
    """Raw engineering value × scale, rounded so 2453 × 0.1 reads 245.3 and not 245.29999999999998."""
    if scale is None or isinstance(value, (str, bool)) or value is None:
        return value
    return round(value * scale, 9)
