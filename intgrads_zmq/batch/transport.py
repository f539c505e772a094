"""HTTP to the server: one request per example, and a way to cancel them all.

Standard library only (``http.client``), one connection per request, so
that Ctrl-C can cancel what is in flight by shutting the sockets down: the
server notices the client is gone and stops the worker at its next chunk
(see the README's "Cancellation"). Answers are decoded here: JSON replies, or
safetensors replies whose tensors stay raw bytes (no torch, no numpy).
"""

from __future__ import annotations

import http.client
import json
import socket
import struct
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from .. import __version__
from ..encoding.safetensors_format import SAFETENSORS_DTYPES
from ..payload import RawTensor
from .request import RequestSpec

_DTYPES = {code: name for name, code in SAFETENSORS_DTYPES.items()}
_MEDIA_TYPES = {"json": "application/json", "safetensors": "application/octet-stream"}


@dataclass
class Failure:
    """An error answer: the HTTP status and the server's JSON error fields."""

    status: int
    code: str | None
    description: str
    field: str | None = None
    retry_after: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status, "code": self.code, "description": self.description}
        if self.field is not None:
            out["field"] = self.field
        return out

    @classmethod
    def from_response(cls, status: int, headers: Any, raw: bytes) -> Failure:
        try:
            body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            body = None
        retry = _seconds(headers.get("Retry-After"))
        if not isinstance(body, dict):
            text = raw.decode("utf-8", "replace").strip()[:300]
            return cls(status, None, text or f"HTTP {status}", retry_after=retry)
        field_name = body.get("field")
        body_retry = _seconds(body.get("retry_after"))
        return cls(status, body.get("code") if isinstance(body.get("code"), str) else None,
                   str(body.get("description") or body.get("title") or f"HTTP {status}"),
                   field=field_name if isinstance(field_name, str) else None,
                   retry_after=body_retry if body_retry is not None else retry)


class HttpFailure(Exception):
    """The server answered with an error status."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(f"{failure.status} {failure.code or ''}: {failure.description}")
        self.failure = failure


class Unreachable(Exception):
    """No (complete) answer: refused, reset, timed out, or not HTTP."""


class Aborted(Exception):
    """The request was cancelled by :meth:`Transport.abort_all` (the run is stopping)."""


@dataclass
class Reply:
    """A successful answer: the reply's metadata and, when asked for, its tensors."""

    meta: dict[str, Any]
    tensors: dict[str, RawTensor] = field(default_factory=dict)
    seconds: float = 0.0


def _seconds(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return seconds if 0 <= seconds < 1e6 else None


class Transport:
    """Requests to one server (``http://host:port``, optionally with a path prefix)."""

    def __init__(self, base_url: str, timeout: float = 660.0) -> None:
        parsed = urllib.parse.urlsplit(base_url if "://" in base_url else "http://" + base_url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.scheme = parsed.scheme
        self.host = parsed.hostname
        self.port = parsed.port or (443 if parsed.scheme == "https" else 80)
        self.prefix = parsed.path.rstrip("/")
        self.timeout = timeout
        self._lock = threading.Lock()
        self._open: set[http.client.HTTPConnection] = set()
        self._aborted = False

    # -- the two calls the runner makes ------------------------------------------
    def get_json(self, path: str, timeout: float = 10.0) -> Any:
        status, headers, raw = self.exchange("GET", path, None, {"Accept": "application/json"}, timeout)
        if status >= 300:
            raise HttpFailure(Failure.from_response(status, headers, raw))
        return json.loads(raw)

    def explain(self, spec: RequestSpec, text: str) -> Reply:
        """``POST /model/[NAME/]`` one text; raises HttpFailure, Unreachable or Aborted."""
        path = "/model/" if spec.model is None else f"/model/{urllib.parse.quote(spec.model, safe='')}/"
        data = json.dumps(spec.body(text), allow_nan=False).encode("utf-8")
        headers = {"Content-Type": "application/json; charset=utf-8", "Accept": _MEDIA_TYPES[spec.format]}
        started = time.monotonic()
        status, response_headers, raw = self.exchange("POST", f"{path}?format={spec.format}", data,
                                                      headers, self.timeout)
        seconds = time.monotonic() - started
        if status >= 300:
            raise HttpFailure(Failure.from_response(status, response_headers, raw))
        try:
            if spec.format == "json":
                meta = json.loads(raw)
                if not isinstance(meta, dict):
                    raise ValueError("the reply is not a JSON object")
                return Reply(meta, {}, seconds)
            meta, tensors = parse_safetensors(raw)
            return Reply(meta, tensors, seconds)
        except (ValueError, KeyError, struct.error) as exc:
            raise Unreachable(f"undecodable {spec.format} reply: {exc}") from None

    # -- cancellation -----------------------------------------------------------
    def abort_all(self) -> None:
        """Shut down every open connection and refuse new ones. The server sees
        the client leave and cancels those requests (queued or running)."""
        with self._lock:
            self._aborted = True
            connections = list(self._open)
        for connection in connections:
            sock = connection.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    @property
    def aborted(self) -> bool:
        return self._aborted

    def exchange(self, method: str, path: str, data: bytes | None, headers: dict[str, str],
                 timeout: float) -> tuple[int, Any, bytes]:
        """One request on a fresh connection: (status, headers, body) for any status."""
        kind = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        connection = kind(self.host, self.port, timeout=timeout)
        with self._lock:
            if self._aborted:
                raise Aborted("the run is stopping")
            self._open.add(connection)
        try:
            connection.connect()
            if self._aborted:  # abort_all ran while we connected (it saw no socket yet)
                raise Aborted("the run is stopping")
            connection.request(method, self.prefix + path, body=data, headers={
                "User-Agent": f"intgrads-batch/{__version__}", **headers})
            response = connection.getresponse()
            return response.status, response.headers, response.read()
        except (OSError, http.client.HTTPException) as exc:
            if self._aborted:
                raise Aborted("the run is stopping") from None
            raise Unreachable(f"{self.base_url}: {type(exc).__name__}: {exc}") from None
        finally:
            with self._lock:
                self._open.discard(connection)
            connection.close()


def parse_safetensors(raw: bytes) -> tuple[dict[str, Any], dict[str, RawTensor]]:
    """The reply's ``intgrads`` metadata and its tensors, as raw little-endian bytes."""
    if len(raw) < 8:
        raise ValueError("shorter than a safetensors header")
    (length,) = struct.unpack("<Q", raw[:8])
    if length > len(raw) - 8:
        raise ValueError("header length past the end of the body")
    header = json.loads(raw[8:8 + length])
    meta_text = header.pop("__metadata__", {}).get("intgrads")
    meta = json.loads(meta_text) if meta_text else {}
    if not isinstance(meta, dict):
        raise ValueError("the intgrads metadata is not a JSON object")
    base = 8 + length
    view = memoryview(raw)
    tensors = {}
    for name, spec in header.items():
        start, end = spec["data_offsets"]
        dtype = _DTYPES.get(spec["dtype"])
        if dtype is None:
            raise ValueError(f"tensor {name!r} has an unknown dtype {spec['dtype']!r}")
        tensors[name] = RawTensor(dtype, tuple(spec["shape"]), view[base + start:base + end])
    return meta, tensors
