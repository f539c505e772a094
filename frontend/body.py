"""Reading a request body: bounded in size, bounded in time, strictly framed.

A body that trickles in one byte every few seconds used to hold a gunicorn
thread for as long as the client cared to keep sending; with all
INTGRADS_HTTP_THREADS threads held, /healthz and real requests waited. Here
the whole body must arrive within ``timeout`` seconds (INTGRADS_BODY_TIMEOUT)
or the request gets 408 and its thread is free again.

Chunked bodies are de-chunked by our own strict parser rather than gunicorn's:
gunicorn accepts any chunk size (``FFFFFFFFFFFFFFFFFFFFFFFF`` makes it read
until the client stops) and waits for a CRLF that a bare-LF client never
sends. Ours refuses a chunk that would take the body past the limit as soon as
its size line is parsed (413) and a line ending in a bare LF at once (400).

Both need gunicorn's request reader (``environ["wsgi.input"]``): the deadline
wraps the socket its unreader reads from, the chunk parser replaces its
not-yet-started generator. Under another server (or falcon.testing) the body
is read as before, bounded in size only.
"""

from __future__ import annotations

import inspect
import re
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import falcon

from intgrads_zmq import strict_json
from intgrads_zmq.errors import BadRequest, BodyTimeout, IntgradsError, PayloadTooLarge

DRAIN_CAP = 64 << 20  # read (and drop) up to this much of a too-large body
LINE_LIMIT = 4096  # a chunk-size line (size and extensions) or one trailer line
TRAILER_LIMIT = 16384  # the whole trailer section
HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")
# RFC 9112 §7.1.1 chunk-ext: *( BWS ";" BWS name [ BWS "=" BWS ( token / quoted-string ) ] )
_TOKEN = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+"
_QUOTED = rb'"(?:[^"\\\x00-\x08\x0a-\x1f\x7f]|\\[^\x00-\x08\x0a-\x1f\x7f])*"'
CHUNK_EXTENSIONS = re.compile(rb"(?:[ \t]*;[ \t]*" + _TOKEN + rb"(?:[ \t]*=[ \t]*(?:" + _TOKEN + rb"|" + _QUOTED + rb"))?)*")


class _DeadlineSocket:
    """The socket gunicorn's unreader reads from, with every ``recv`` bounded
    by what is left of one deadline for the whole body (a per-recv timeout
    alone would let a client send one byte just before each expires)."""

    def __init__(self, sock: socket.socket, deadline: float, timeout: float) -> None:
        self._sock = sock
        self._deadline = deadline
        self._timeout = timeout

    def _expired(self) -> BodyTimeout:
        return BodyTimeout(f"the body did not arrive within {self._timeout:g} s")

    def recv(self, size: int, *flags: int) -> bytes:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise self._expired()
        self._sock.settimeout(left)
        try:
            return self._sock.recv(size, *flags)
        except TimeoutError:
            raise self._expired() from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def _gunicorn_reader(env: dict[str, Any]) -> Any:
    """gunicorn's body reader (Length/Chunked/EOFReader) behind wsgi.input, or None."""
    return getattr(env.get("wsgi.input"), "reader", None)


def _unreader(reader: Any) -> Any:
    """Where the reader gets its bytes: LengthReader and EOFReader hold it,
    ChunkedReader reaches it through its request."""
    return getattr(reader, "unreader", None) or getattr(getattr(reader, "req", None), "unreader", None)


@contextmanager
def _deadline(env: dict[str, Any], timeout: float | None) -> Iterator[None]:
    """Bound every socket read made inside by one deadline ``timeout`` s away."""
    unreader = _unreader(_gunicorn_reader(env))
    sock = getattr(unreader, "sock", None)
    if not timeout or not isinstance(sock, socket.socket):
        yield
        return
    previous = sock.gettimeout()
    unreader.sock = _DeadlineSocket(sock, time.monotonic() + timeout, timeout)
    try:
        yield
    finally:
        unreader.sock = sock
        with suppress(OSError):
            sock.settimeout(previous)


class _Framing:
    """Reads CRLF-terminated lines and counted bytes from a gunicorn unreader."""

    def __init__(self, unreader: Any) -> None:
        self.unreader = unreader
        self.buf = bytearray()

    def _more(self) -> None:
        data = self.unreader.read()
        if not data:
            raise BadRequest("the chunked body ended before its last chunk")
        self.buf += data

    def line(self, what: str) -> bytes:
        """One line without its CRLF; a bare LF or CR is refused at once."""
        searched = 0
        while True:
            end = self.buf.find(b"\n", searched)
            # A CR may only be the byte just before the LF (or, with no LF
            # yet, the last byte received); any other is a bare CR.
            allowed = end - 1 if end >= 0 else len(self.buf) - 1
            cr = self.buf.find(b"\r", 0, end if end >= 0 else len(self.buf))
            if cr >= 0 and cr != allowed:
                raise BadRequest(f"a bare CR in the chunked body's {what}")
            if end >= 0:
                if end == 0 or cr != end - 1:
                    raise BadRequest(f"a bare LF ends a line of the chunked body's {what}: lines end with CRLF")
                line = bytes(self.buf[:end - 1])
                del self.buf[:end + 1]
                return line
            if len(self.buf) > LINE_LIMIT:
                raise BadRequest(f"the chunked body's {what} line is over {LINE_LIMIT} bytes")
            searched = len(self.buf)
            self._more()

    def take(self, size: int) -> Iterator[bytes]:
        """``size`` bytes, as they arrive."""
        while size > 0:
            if not self.buf:
                self._more()
            piece = bytes(self.buf[:size])
            del self.buf[:len(piece)]
            size -= len(piece)
            yield piece

    def give_back(self) -> None:
        """Bytes read past the body (a pipelined request) go back to gunicorn."""
        if self.buf:
            self.unreader.unread(bytes(self.buf))
            self.buf = bytearray()


def _chunk_size(line: bytes, received: int, limit: int) -> int:
    size_text, semicolon, extensions = line.partition(b";")
    size_text = size_text.rstrip(b" \t") if semicolon else size_text
    if not size_text or not HEX_DIGITS.issuperset(size_text):
        raise BadRequest(f"invalid chunk size {size_text[:40]!r}: hexadecimal digits expected")
    if semicolon and not CHUNK_EXTENSIONS.fullmatch(semicolon + extensions):
        raise BadRequest(f"invalid chunk extension {extensions[:40]!r}")
    size = int(size_text, 16)
    if size > limit - received:
        raise PayloadTooLarge(f"a chunk of {size} bytes takes the body past the limit of {limit} bytes")
    return size


def strict_chunks(unreader: Any, limit: int) -> Iterator[bytes]:
    """The de-chunked body (RFC 9112 §7.1), read from gunicorn's unreader,
    refusing a body over ``limit`` bytes from its chunk sizes alone."""
    framing, received = _Framing(unreader), 0
    while True:
        size = _chunk_size(framing.line("chunk size"), received, limit)
        if size == 0:
            break
        received += size
        yield from framing.take(size)
        if framing.line("chunk data") != b"":
            raise BadRequest("a chunk is longer than its size line says")
    trailers = 0
    while (line := framing.line("trailer")) != b"":
        trailers += len(line) + 2
        if trailers > TRAILER_LIMIT:
            raise BadRequest(f"the chunked body's trailers are over {TRAILER_LIMIT} bytes")
    framing.give_back()


def _use_strict_chunks(env: dict[str, Any], limit: int) -> None:
    """Swap gunicorn's chunk parser for ours, if it has not started yet."""
    reader = _gunicorn_reader(env)
    parser = getattr(reader, "parser", None)
    unreader = _unreader(reader)
    if (type(reader).__name__ == "ChunkedReader" and inspect.isgenerator(parser)
            and inspect.getgeneratorstate(parser) == inspect.GEN_CREATED and unreader is not None):
        parser.close()
        reader.parser = strict_chunks(unreader, limit)


def _body_stream(req: falcon.Request) -> Any:
    """Where the body comes from. ``bounded_stream`` trusts Content-Length and
    reads nothing without one, which silently emptied chunked uploads; when the
    server says its input ends where the body ends (``wsgi.input_terminated``,
    as gunicorn does after de-chunking) that stream is read instead."""
    if req.content_length is None and req.env.get("wsgi.input_terminated"):
        return req.stream
    return req.bounded_stream


def _read(stream: Any, size: int) -> bytes:
    try:
        return stream.read(size)
    except IntgradsError:
        raise
    except Exception as exc:  # noqa: BLE001 - the server's parser: bad chunk framing, a body cut short
        raise BadRequest(f"the body could not be read ({type(exc).__name__}): send a JSON object") from None


def _too_large(req: falcon.Request, limit: int, described: str) -> PayloadTooLarge:
    """Drain a moderately oversized body first, so the client (which is still
    sending) receives the 413 instead of a broken pipe; a drain that runs
    out of time or framing just stops (the 413 is still the answer)."""
    length = req.content_length
    if length is None or length <= DRAIN_CAP:
        drained, stream = 0, _body_stream(req)
        with suppress(IntgradsError):
            while drained < DRAIN_CAP and _read(stream, 1 << 20):
                drained += 1 << 20
    return PayloadTooLarge(f"{described}; the limit is {limit} bytes")


def _decode(data: bytes) -> Any:
    if not data.strip():
        raise BadRequest("the body is empty: send a JSON object with a 'sequence'", field="sequence")
    try:
        return strict_json.loads(data)
    except UnicodeDecodeError:
        raise BadRequest("the body is not UTF-8 text") from None
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"the body is not valid JSON: {str(exc)[:200]}") from None


def read_json_body(req: falcon.Request, limit: int, timeout: float | None = None) -> Any:
    """The body as JSON, whatever the Content-Type says (curl -d sends JSON
    as form-urlencoded); at most ``limit`` bytes, all arrived within
    ``timeout`` seconds (None: no deadline)."""
    with _deadline(req.env, timeout):
        length = req.content_length
        if length is not None and length > limit:
            raise _too_large(req, limit, f"the body is {length} bytes")
        _use_strict_chunks(req.env, limit)
        data = _read(_body_stream(req), limit + 1)
        if len(data) > limit:
            raise _too_large(req, limit, "the body is too large")
    return _decode(data)
