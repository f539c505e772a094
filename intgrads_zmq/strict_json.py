"""JSON decoding that refuses what cannot be re-encoded.

Python's json accepts NaN, Infinity and numbers like 1e400, which our own
encoders (``allow_nan=False``) would later refuse, far from the peer or client
that sent them. Decoding them is refused here, at the boundary, instead. Used
by the wire protocol and by the HTTP frontend. Pure Python.
"""

from __future__ import annotations

import json
import math
from typing import Any


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def loads(data: bytes | str) -> Any:
    """Decode JSON; raise ValueError (or RecursionError, for absurd nesting) on
    anything malformed, non-finite or not UTF-8."""
    if isinstance(data, bytes | bytearray | memoryview):
        data = bytes(data).decode("utf-8")
    return json.loads(data, parse_constant=_reject_constant, parse_float=_finite_float)
