"""JSON replies written piece by piece, never holding the process's GIL for long.

Turning millions of floats into text is slow whatever one does (a few
hundred thousand numbers per second and core), and CPython's converters
(``memoryview.tolist``, ``json.dumps``) hold the GIL for the whole call: one
call over a big tensor stalled every other thread of the gunicorn process
for seconds, ``/healthz`` included. Here a tensor is converted a block of at
most :data:`BLOCK_NUMBERS` numbers at a time (a few milliseconds), so the
interpreter can hand the GIL to other threads between blocks, and the text
leaves as it is made instead of being built whole.

The bytes are the same as one ``json.dumps`` of the nested lists (compact
separators), with NaN and infinities written as ``null``.
"""

from __future__ import annotations

import json
import math
import re
import struct
import sys
from array import array
from collections.abc import Iterator
from typing import Any

from intgrads_zmq.payload import DTYPES, RawTensor

BLOCK_NUMBERS = 1 << 14
_NON_FINITE = re.compile(r"NaN|-?Infinity")


def dumps(value: Any) -> str:
    """Compact strict JSON (NaN refused: pass values through :func:`finite` first)."""
    return json.dumps(value, allow_nan=False, separators=(",", ":"))


def finite(value: Any) -> Any:
    """The same JSON value with NaN and infinities replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def tensor_json(tensor: RawTensor, block: int = BLOCK_NUMBERS) -> Iterator[str]:
    """The nested-list JSON of ``tensor``'s values, in pieces of at most about
    ``block`` numbers (a single innermost row is never split)."""
    if tensor.numel <= block or not tensor.shape or sys.byteorder != "little":
        yield _text(tensor.tolist(), tensor.dtype)
        return
    inner = tensor.shape[-1]
    if len(tensor.shape) == 1:
        yield "["
        for start in range(0, inner, block):
            if start:
                yield ","
            yield _text(_rows(tensor, start, min(inner, start + block), None), tensor.dtype)[1:-1]
        yield "]"
        return
    outer = tensor.shape[:-1]
    rows = tensor.numel // inner
    group = outer[-1]  # rows per innermost list of rows: blocks never cross one
    per_block = max(1, block // inner)
    depth = len(outer)
    yield "[" * depth
    row = 0
    while row < rows:
        end = min(rows, row + per_block, (row // group + 1) * group)
        if row:
            closing = _boundaries(row, outer)
            yield "]" * closing + "," + "[" * closing
        yield _text(_rows(tensor, row * inner, end * inner, inner), tensor.dtype)[1:-1]
        row = end
    yield "]" * depth


def _boundaries(row: int, outer: tuple[int, ...]) -> int:
    """How many nested lists end just before ``row`` (0 < row < rows): the
    trailing zero digits of ``row`` written in the mixed radix ``outer``."""
    count = 0
    for size in reversed(outer):
        if row % size:
            break
        count += 1
        row //= size
    return count


def _rows(tensor: RawTensor, start: int, end: int, inner: int | None) -> list[Any]:
    """Values ``start:end`` (flat indices) as a list, or as rows of ``inner``."""
    itemsize, code = DTYPES[tensor.dtype]
    raw = memoryview(tensor.data).cast("B")[start * itemsize : end * itemsize]
    if tensor.dtype == "float16":  # memoryview cannot view half floats; all are exact in float32
        raw = memoryview(array("f", struct.unpack(f"<{end - start}e", raw))).cast("B")
        code = "f"
    if inner is None:
        return raw.cast(code).tolist()
    return raw.cast(code, [(end - start) // inner, inner]).tolist()


def _text(values: Any, dtype: str) -> str:
    text = json.dumps(values, separators=(",", ":"))
    return _NON_FINITE.sub("null", text) if dtype.startswith("float") else text
