"""The wire protocol: every frame and command, in one place.

Two conversations, each over a DEALER -> ROUTER pair (the ROUTER adds the
peer's identity as the first frame on receive and consumes it on send):

Frontend (client) <-> broker, header ``CLIENT``::

    client -> broker  [CLIENT, REQUEST, request_id, request_json]
    client -> broker  [CLIENT, STATUS, request_id]
    broker -> client  [CLIENT, REPLY, request_id, reply_json, *tensor_frames]
    broker -> client  [CLIENT, ERROR, request_id, error_json]
    broker -> client  [CLIENT, STATUS_REPLY, request_id, status_json]

Worker <-> broker, header ``WORKER``::

    worker -> broker  [WORKER, READY, info_json]
    worker -> broker  [WORKER, REPLY, request_id, reply_json, *tensor_frames]
    worker -> broker  [WORKER, ERROR, request_id, error_json]
    both ways         [WORKER, HEARTBEAT]
    both ways         [WORKER, DISCONNECT]
    broker -> worker  [WORKER, REQUEST, request_id, request_json]

``request_json`` holds ``{"model", "sequence", "options", "timeout"}``;
``reply_json`` holds ``{"meta": {...}, "tensors": [{"name", "dtype",
"shape"}, ...]}`` describing the raw little-endian tensor frames that follow,
in order. Headers are versioned (``IGC1``/``IGW1``): a peer speaking another
version is refused. Nothing is ever unpickled: JSON and raw bytes only, with
sizes checked before use.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from ..errors import IntgradsError
from ..payload import AttributionPayload, RawTensor

CLIENT = b"IGC1"
WORKER = b"IGW1"

MAX_JSON_BYTES = 8 << 20  # request texts and metadata; tensors travel as raw frames
MAX_REQUEST_ID_BYTES = 64
MAX_TIMEOUT_SECONDS = 1e9  # longer asked-for deadlines are clamped to this (the broker clamps further)
MAX_RETRY_AFTER = 86_400.0


class Command(bytes, Enum):
    """One-byte commands; the value goes on the wire as is."""

    REQUEST = b"\x01"
    REPLY = b"\x02"
    ERROR = b"\x03"
    STATUS = b"\x04"
    STATUS_REPLY = b"\x05"
    READY = b"\x06"
    HEARTBEAT = b"\x07"
    DISCONNECT = b"\x08"


class ProtocolError(ValueError):
    """A message that does not follow this protocol (logged and dropped)."""


@dataclass(frozen=True)
class Message:
    """A parsed message: its command, request id (if any) and other frames."""

    command: Command
    request_id: str | None
    body: Sequence[Any]  # remaining frames (bytes or zmq.Frame)


def new_request_id() -> str:
    return uuid.uuid4().hex


def _bytes(frame: Any) -> bytes:
    return frame.bytes if hasattr(frame, "bytes") else bytes(frame)


def _buffer(frame: Any) -> memoryview:
    return frame.buffer if hasattr(frame, "buffer") else memoryview(frame)


def dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def loads(frame: Any) -> Any:
    """Decode a JSON frame with a size bound; errors become ProtocolError.

    Strict where Python's json is lenient, because whatever is decoded here may
    be re-encoded later with ``allow_nan=False`` (a failure then, far from the
    peer that caused it, would stop the broker's loop): NaN, Infinity and
    numbers like 1e400 are refused. So are the ValueError of an integer with
    more than 4300 digits and the RecursionError of deeply nested arrays, which
    json.loads raises instead of JSONDecodeError.
    """
    data = _bytes(frame)
    if len(data) > MAX_JSON_BYTES:
        raise ProtocolError(f"JSON frame of {len(data)} bytes exceeds {MAX_JSON_BYTES}")
    try:
        return json.loads(data, parse_constant=_reject_constant, parse_float=_finite_float)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError included
        raise ProtocolError(f"bad JSON frame: {str(exc)[:200]}") from None


def loads_object(frame: Any) -> dict[str, Any]:
    value = loads(frame)
    if not isinstance(value, dict):
        raise ProtocolError("JSON frame is not an object")
    return value


# Commands that carry a request id right after the command frame, per side.
_WITH_ID = {
    CLIENT: {Command.REQUEST, Command.STATUS, Command.REPLY, Command.ERROR, Command.STATUS_REPLY},
    WORKER: {Command.REQUEST, Command.REPLY, Command.ERROR},
}
# Minimum number of body frames (after header, command and id) per command.
_MIN_BODY = {
    Command.REQUEST: 1,
    Command.REPLY: 1,
    Command.ERROR: 1,
    Command.STATUS_REPLY: 1,
    Command.READY: 1,
}


def parse(frames: Sequence[Any], header: bytes) -> Message:
    """Validate the envelope of a message for ``header``'s conversation."""
    if len(frames) < 2:
        raise ProtocolError("message too short")
    if _bytes(frames[0]) != header:
        raise ProtocolError(f"unexpected protocol header {_bytes(frames[0])[:8]!r}")
    try:
        command = Command(_bytes(frames[1]))
    except ValueError:
        raise ProtocolError(f"unknown command {_bytes(frames[1])[:4]!r}") from None
    rest = list(frames[2:])
    request_id = None
    if command in _WITH_ID[header]:
        if not rest:
            raise ProtocolError(f"{command.name} without a request id")
        raw_id = _bytes(rest.pop(0))
        if not raw_id or len(raw_id) > MAX_REQUEST_ID_BYTES:
            raise ProtocolError("bad request id")
        try:
            request_id = raw_id.decode("ascii")
        except UnicodeDecodeError:
            raise ProtocolError("request id is not ASCII") from None
    if len(rest) < _MIN_BODY.get(command, 0):
        raise ProtocolError(f"{command.name} is missing frames")
    return Message(command, request_id, rest)


def envelope(header: bytes, command: Command, request_id: str | None = None) -> list[bytes]:
    frames = [header, command.value]
    if request_id is not None:
        frames.append(request_id.encode("ascii"))
    return frames


# -- requests -------------------------------------------------------------
def request_frames(
    header: bytes,
    request_id: str,
    *,
    model: str | None,
    sequence: str,
    options: dict[str, Any],
    timeout: float,
) -> list[bytes]:
    body = {"model": model, "sequence": sequence, "options": options, "timeout": timeout}
    return envelope(header, Command.REQUEST, request_id) + [dumps(body)]


@dataclass(frozen=True)
class RequestBody:
    """A validated request: which model, which text, which options, how long."""

    model: str | None
    sequence: str
    options: dict[str, Any]
    timeout: float | None


def parse_request_body(frame: Any) -> RequestBody:
    body = loads_object(frame)
    model, sequence = body.get("model"), body.get("sequence")
    options, timeout = body.get("options", {}), body.get("timeout")
    if model is not None and (not isinstance(model, str) or not 0 < len(model) <= 200):
        raise ProtocolError("'model' must be a short string or null")
    if not isinstance(sequence, str):
        raise ProtocolError("'sequence' must be a string")
    if not isinstance(options, dict):
        raise ProtocolError("'options' must be an object")
    if not all(_flat(value) for value in options.values()):
        raise ProtocolError("'options' values must be scalars or lists of scalars")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0
    ):
        raise ProtocolError("'timeout' must be a positive number")
    if timeout is not None:  # min() first: float() of a 400-digit int raises OverflowError
        timeout = float(min(timeout, MAX_TIMEOUT_SECONDS))
    return RequestBody(model, sequence, options, timeout)


def _flat(value: Any) -> bool:
    """Options are scalars or lists of scalars (``fields``); anything nested is
    refused here so that re-encoding a request can never recurse deeply."""
    if isinstance(value, list):
        return not any(isinstance(item, (list, dict)) for item in value)
    return not isinstance(value, dict)


# -- replies with tensors -------------------------------------------------
def reply_frames(
    header: bytes, request_id: str, meta: dict[str, Any], tensors: dict[str, RawTensor]
) -> list[Any]:
    """[header, REPLY, id, reply_json, *raw tensor buffers] (buffers not copied)."""
    described = [
        {"name": name, "dtype": t.dtype, "shape": list(t.shape)} for name, t in tensors.items()
    ]
    head = dumps({"meta": meta, "tensors": described})
    return envelope(header, Command.REPLY, request_id) + [head, *(t.data for t in tensors.values())]


def parse_reply(body: Sequence[Any]) -> AttributionPayload:
    """Rebuild a payload from a REPLY's frames, checking every size."""
    head = loads_object(body[0])
    meta, described = head.get("meta"), head.get("tensors")
    if not isinstance(meta, dict) or not isinstance(described, list):
        raise ProtocolError("reply header needs 'meta' and 'tensors'")
    frames = body[1:]
    if len(frames) != len(described):
        raise ProtocolError(f"reply describes {len(described)} tensors but has {len(frames)} frames")
    tensors: dict[str, RawTensor] = {}
    for item, frame in zip(described, frames, strict=True):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ProtocolError("bad tensor description")
        shape = item.get("shape")
        if not isinstance(shape, list) or not all(isinstance(n, int) for n in shape):
            raise ProtocolError("bad tensor shape")
        try:
            tensors[item["name"]] = RawTensor(str(item.get("dtype")), tuple(shape), _buffer(frame))
        except ValueError as exc:
            raise ProtocolError(f"tensor {item['name']!r}: {exc}") from None
    return AttributionPayload(meta=meta, tensors=tensors)


def check_reply_frames(body: Sequence[Any]) -> None:
    """Cheap structural check the broker runs before relaying a reply."""
    parse_reply(body)


# -- errors ---------------------------------------------------------------
def error_frames(header: bytes, request_id: str, error: IntgradsError) -> list[bytes]:
    return envelope(header, Command.ERROR, request_id) + [dumps(error.to_dict())]


def parse_error_strict(body: Sequence[Any]) -> IntgradsError:
    """An ERROR's typed error; ProtocolError if it is not a JSON object.

    A ``retry_after`` that is not a number of seconds in [0, a day] is dropped:
    it becomes a Retry-After header, and ``float()`` of a huge integer raises.
    """
    data = loads_object(body[0])
    retry = data.get("retry_after")
    if isinstance(retry, bool) or not isinstance(retry, (int, float)) or not 0 <= retry <= MAX_RETRY_AFTER:
        data.pop("retry_after", None)
    return IntgradsError.from_dict(data)


def parse_error(body: Sequence[Any]) -> IntgradsError:
    try:
        return parse_error_strict(body)
    except ProtocolError:
        return IntgradsError("malformed error reply")
