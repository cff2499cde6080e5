"""Model bytes as a C array: written by the microcontroller export, read back by verify and tests,
so the two can never disagree on the format."""

from __future__ import annotations

import re

_PER_ROW = 12  # bytes per line: 12 x "0xNN, " stays under 80 columns


def c_array_rows(data: bytes) -> list[str]:
    """The array's initializer lines, `0x20, 0x00, ...`, twelve bytes a line."""
    return [
        ", ".join(f"0x{b:02x}" for b in data[i : i + _PER_ROW]) + "," for i in range(0, len(data), _PER_ROW)
    ]


def c_array_bytes(source: str) -> bytes:
    """The bytes of the one array a generated C source defines, parsed back from its text."""
    body = re.search(r"\[\]\s*=\s*\{(.*?)\};", source, re.S)
    if body is None:
        raise ValueError("no array definition")
    return bytes(int(v, 16) for v in re.findall(r"0x([0-9a-fA-F]{2})", body.group(1)))
