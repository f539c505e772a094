"""Watching peers: rate-limited log lines and libzmq's own connection events.

Both are used by the broker's loop thread only (not thread-safe).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

log = logging.getLogger("intgrads.broker")

PEER_LOG_BURST = 100  # warnings about misbehaving peers logged per PEER_LOG_WINDOW
PEER_LOG_WINDOW = 10.0
HANDSHAKE_FAILURES = {
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "handshake failed",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "not a valid ZMTP/CURVE handshake",
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "CURVE key refused",
}
PROTOCOL_ERRORS = {
    getattr(zmq, name): name.removeprefix("PROTOCOL_ERROR_").lower()
    for name in dir(zmq) if name.startswith("PROTOCOL_ERROR_") and isinstance(getattr(zmq, name), int)
}


class PeerLog:
    """Rate-limited lines about peers: a flood of garbage must not become a
    flood of log lines. Each kind of line (its format string) may be logged
    ``PEER_LOG_BURST`` times per window, so one flood hides no other kind;
    beyond that, lines are counted and the count is logged later."""

    def __init__(self) -> None:
        self._windows: dict[str, list[float]] = {}  # format -> [window end, logged, suppressed]

    def __call__(self, level: int, message: str, *args: Any) -> None:
        now = time.monotonic()
        window = self._windows.setdefault(message, [0.0, 0, 0])
        if now >= window[0]:
            if window[2]:
                log.warning("%d more lines like %r were not logged", window[2], message)
            window[:] = [now + PEER_LOG_WINDOW, 0, 0]
        if window[1] >= PEER_LOG_BURST:
            window[2] += 1
            return
        window[1] += 1
        log.log(level, message, *args)


MAX_TRACKED_CONNECTIONS = 10_000  # bound on connections remembered as mid-handshake


class SocketWatch:
    """A monitor on one ROUTER: logs what libzmq decides before the broker sees
    a message. A peer without an authorised CURVE key, or not speaking ZMTP,
    fails the handshake; a message over MAXMSGSIZE drops its connection.

    libzmq reports most refusals as a handshake failure, but not all: on a
    CURVE socket a peer whose first bytes look like the old ZMTP 1.0 (any
    plain-TCP client, HTTP for one) is dropped with nothing but
    ``DISCONNECTED``. Such a connection is recognised here as one that was
    accepted and closed with no handshake outcome of its own, and is counted
    and logged as a refused handshake. Handshake events carry no file
    descriptor, so outcomes are matched to connections by count: a connection
    that closes while no outcome is pending for any connection still
    mid-handshake had none. When that cannot be told (several handshakes at
    once), tracking starts afresh: a refusal may then go uncounted, but a
    completed handshake is never counted as refused."""

    EVENTS = (zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED
              | sum(HANDSHAKE_FAILURES))

    def __init__(self, sock: zmq.Socket, role: str, peer_log: PeerLog, count: Callable[[str], None]) -> None:
        self.sock = sock
        self.role = role
        self.peer_log = peer_log
        self.count = count
        self.monitor = sock.get_monitor_socket(self.EVENTS)
        self._handshaking: set[int] = set()  # fds accepted whose handshake outcome is not known
        self._outcomes = 0  # handshake outcomes seen that belong to some fd in _handshaking

    def drain(self) -> None:
        for _ in range(64):
            try:
                event = recv_monitor_message(self.monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            kind, value = event["event"], event["value"]
            endpoint = event["endpoint"].decode("ascii", "replace")
            if kind == zmq.EVENT_ACCEPTED:
                if len(self._handshaking) >= MAX_TRACKED_CONNECTIONS:
                    self._handshaking.clear()
                    self._outcomes = 0
                self._handshaking.add(value)
            elif kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._resolved()
            elif kind == zmq.EVENT_DISCONNECTED:
                self._closed(value, endpoint)
            elif kind in HANDSHAKE_FAILURES:
                self._resolved()
                detail = PROTOCOL_ERRORS.get(value, value) if kind == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL else value
                self.count("handshakes_refused")
                self.peer_log(logging.WARNING, "refused a %s connection on %s: %s (%s)", self.role, endpoint,
                              HANDSHAKE_FAILURES[kind], detail)

    def _resolved(self) -> None:
        """One connection mid-handshake has an outcome (which one is not said)."""
        if not self._handshaking:
            return  # an untracked connection's
        self._outcomes += 1
        if self._outcomes >= len(self._handshaking):  # every one of them is resolved
            self._handshaking.clear()
            self._outcomes = 0

    def _closed(self, fd: int, endpoint: str) -> None:
        self.count(f"{self.role}_disconnections")
        unresolved = fd in self._handshaking and self._outcomes == 0
        if unresolved:
            self._handshaking.discard(fd)
        elif fd in self._handshaking:  # it may own one of the pending outcomes: no longer known who does
            self._handshaking.clear()
            self._outcomes = 0
        if unresolved:
            self.count("handshakes_refused")
            self.peer_log(logging.WARNING, "refused a %s connection on %s: %s", self.role, endpoint,
                          "closed before the ZMTP handshake finished (not a ZeroMQ peer, or one that gave up)")
            return
        self.peer_log(logging.INFO, "%s connection closed on %s (the peer left, or sent a message "
                      "over the size limit)", self.role, endpoint)

    def close(self) -> None:
        self.sock.disable_monitor()
        self.monitor.close(linger=0)
