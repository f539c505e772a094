"""Server-Sent Events for POST /model/ with ``Accept: text/event-stream``.

One request, streamed as it goes::

    event: queued     data: {"position": 0}                   (requests ahead of it)
    event: progress   data: {"done", "total", "elapsed", "eta_seconds"}   (0 or more)
    event: result     data: <the JSON reply, as ?format=json gives it>
 or event: error      data: <the JSON error body, plus "status">

The result is written as it is encoded (compact JSON holds no newline, so
it is one ``data:`` line however long), within the same bounds as a plain
JSON reply (a 413 comes as an error event).

The generator runs in the gunicorn thread that took the request (it is the
response body), so it uses that thread's own broker client, like any handler.
If the client goes away, the write fails and the generator is closed, or the
socket check sees it first; either way the request is cancelled at the broker.
A comment line is sent every :data:`KEEPALIVE` seconds so proxies keep the
stream open while a request waits.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Generator, Iterator
from typing import Any

from intgrads_zmq.encoding import ReplyLimits, encode
from intgrads_zmq.errors import DeadlineExceeded, IntgradsError
from intgrads_zmq.service import protocol as p
from intgrads_zmq.service.broker_client import DEADLINE_MARGIN, BrokerClient

MEDIA_TYPE = "text/event-stream"
WAIT_SLICE = 0.1  # seconds between checks of the client while waiting
KEEPALIVE = 15.0


def wants_event_stream(accept: str | None) -> bool:
    """Whether the Accept header asks for SSE (an explicit q=0 refuses it)."""
    for item in (accept or "").split(","):
        media, *params = item.split(";")
        if media.strip().lower() != MEDIA_TYPE:
            continue
        return not any(param.strip().replace(" ", "") in ("q=0", "q=0.0") for param in params)
    return False


def event(name: str, data: str | bytes) -> bytes:
    """One SSE event; every line of ``data`` gets its own ``data:`` prefix."""
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    lines = "".join(f"data: {line}\n" for line in text.split("\n"))
    return f"event: {name}\n{lines}\n".encode()


def progress_event(progress: p.Progress) -> bytes:
    if progress.state == "queued":
        return event("queued", json.dumps({"position": progress.position}))
    eta = None
    if progress.done and progress.total >= progress.done:
        eta = round(progress.elapsed * (progress.total - progress.done) / progress.done, 2)
    return event("progress", json.dumps({"done": progress.done, "total": progress.total,
                                         "elapsed": progress.elapsed, "eta_seconds": eta}))


def error_event(error: IntgradsError) -> bytes:
    return event("error", json.dumps({**error.to_dict(), "status": error.status}))


def stream_attribution(client: BrokerClient, submit: Callable[[], str], timeout: float,
                       client_gone: Callable[[], bool] | None, *,
                       limits: ReplyLimits | None = None) -> Iterator[bytes]:
    """Run one request (``submit()`` sends it with progress on; returns its id)
    and yield its events; cancels it if the stream is abandoned. ``limits``
    bound the result, as for a JSON reply."""
    try:
        request_id = submit()
    except IntgradsError as exc:
        yield error_event(exc)
        return
    finished = False
    try:
        finished = yield from _events(client, request_id, timeout, client_gone, limits)
    finally:
        if not finished:  # closed by the server (the client went away) or gone: stop the work
            client.cancel([request_id])


def _events(client: BrokerClient, request_id: str, timeout: float,
            client_gone: Callable[[], bool] | None, limits: ReplyLimits | None) -> Generator[bytes, None, bool]:
    """The request's events; returns False if the client went away first."""
    updates: list[p.Progress] = []
    deadline = time.monotonic() + timeout + DEADLINE_MARGIN
    quiet_since = time.monotonic()
    while True:
        answers = client.wait_some([request_id], WAIT_SLICE, on_progress=lambda _rid, u: updates.append(u))
        for update in updates:
            yield progress_event(update)
            quiet_since = time.monotonic()
        updates.clear()
        if request_id in answers:
            yield from _final(answers[request_id], limits)
            return True
        if time.monotonic() > deadline:
            yield error_event(DeadlineExceeded("no answer from the broker before the deadline"))
            return True
        if client_gone is not None and client_gone():
            return False
        if time.monotonic() - quiet_since > KEEPALIVE:
            quiet_since = time.monotonic()
            yield b": still working\n\n"


def _final(outcome: Any, limits: ReplyLimits | None) -> Iterator[bytes]:
    """The last event: the error, or the JSON result streamed as one ``data:`` line."""
    if isinstance(outcome, IntgradsError):
        yield error_event(outcome)
        return
    try:
        encoded = encode([outcome], "json", batch=False, limits=limits)
    except IntgradsError as exc:
        yield error_event(exc)
        return
    yield b"event: result\ndata: "
    yield from encoded.chunks()
    yield b"\n\n"
