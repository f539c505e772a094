"""The broker: queues per model, a worker registry, heartbeats, deadlines, retries.

One thread runs :meth:`Broker.run`, a single poll loop; nothing else touches
its sockets or state. Rules it keeps:

* Every accepted request gets exactly one answer: the worker's reply, or an
  error (overloaded, deadline passed, worker died twice, shutting down).
* A worker is alive while it is heard from within ``heartbeat_interval *
  heartbeat_liveness``; a silent one is dropped and its request re-queued at
  the front, once. A second death answers the request with ``WorkerDied``.
* A request past its deadline is answered at once, whether queued or running;
  a reply arriving after that is dropped, never handed to anyone else.
* Messages that break the protocol are logged and dropped; peers are never
  trusted to be well-formed. Connections libzmq refuses on its own (a failed
  CURVE handshake, a message over MAXMSGSIZE) are logged from socket monitors.
* The loop never blocks on a peer: every send is non-blocking, so a client or
  worker that stops reading loses its own messages, not everyone's service.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from ..errors import (
    BadRequest,
    DeadlineExceeded,
    IntgradsError,
    NoWorkers,
    QueueFull,
    ShuttingDown,
    UnknownModel,
    WorkerDied,
)
from . import protocol as p
from .endpoints import is_local_endpoint
from .security import CurveServer

log = logging.getLogger("intgrads.broker")

DEFAULT_FRONTEND = "tcp://127.0.0.1:5555"
DEFAULT_BACKEND = "tcp://127.0.0.1:5556"
MAX_ATTEMPTS = 2  # a request is dispatched at most twice (re-dispatched once)
POLL_CAP = 0.2  # seconds: how quickly a stop request is noticed
DISCONNECT_EVERY = 1.0  # seconds between DISCONNECTs to the same unknown worker
CLOSE_LINGER_MS = 2000  # at exit, time given to answers already sent to reach their clients
MAX_MODEL_NAME = 200
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


class SocketWatch:
    """A monitor on one ROUTER: logs what libzmq decides before the broker sees
    a message. A peer without an authorised CURVE key, or not speaking ZMTP,
    fails the handshake; a message over MAXMSGSIZE drops its connection."""

    EVENTS = zmq.EVENT_DISCONNECTED | sum(HANDSHAKE_FAILURES)

    def __init__(self, sock: zmq.Socket, role: str, peer_log: PeerLog, count: Callable[[str], None]) -> None:
        self.sock = sock
        self.role = role
        self.peer_log = peer_log
        self.count = count
        self.monitor = sock.get_monitor_socket(self.EVENTS)

    def drain(self) -> None:
        for _ in range(64):
            try:
                event = recv_monitor_message(self.monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            kind, value = event["event"], event["value"]
            endpoint = event["endpoint"].decode("ascii", "replace")
            if kind == zmq.EVENT_DISCONNECTED:
                self.count(f"{self.role}_disconnections")
                self.peer_log(logging.INFO, "%s connection closed on %s (the peer left, or sent a message "
                              "over the size limit)", self.role, endpoint)
            elif kind in HANDSHAKE_FAILURES:
                detail = PROTOCOL_ERRORS.get(value, value) if kind == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL else value
                self.count("handshakes_refused")
                self.peer_log(logging.WARNING, "refused a %s connection on %s: %s (%s)", self.role, endpoint,
                              HANDSHAKE_FAILURES[kind], detail)

    def close(self) -> None:
        self.sock.disable_monitor()
        self.monitor.close(linger=0)


def _printable(text: str, limit: int = 80) -> str:
    """A peer-chosen string made safe for one log line."""
    return "".join(ch if ch.isprintable() else "?" for ch in text[:limit])


@dataclass
class BrokerSettings:
    """Endpoints, liveness, bounds and timeouts (all seconds unless named)."""

    frontend: str = DEFAULT_FRONTEND
    backend: str = DEFAULT_BACKEND
    heartbeat_interval: float = 1.0
    heartbeat_liveness: int = 3
    queue_bound: int = 32
    default_timeout: float = 600.0
    max_timeout: float = 3600.0
    retry_after: float = 1.0
    shutdown_grace: float = 30.0
    max_client_message: int = 8 << 20
    max_worker_message: int = 1 << 31
    expected_models: tuple[str, ...] = ()
    default_model: str | None = None
    curve: CurveServer | None = None
    allow_insecure_backend: bool = False

    @property
    def worker_expiry(self) -> float:
        return self.heartbeat_interval * self.heartbeat_liveness


@dataclass
class Pending:
    """A client request from arrival to answer."""

    request_id: str
    client: bytes
    body: p.RequestBody
    model: str
    deadline: float
    arrived: float
    attempts: int = 0
    answered: bool = False
    died_on: list[str] = field(default_factory=list)


@dataclass
class WorkerRecord:
    """A registered worker and what it holds."""

    identity: bytes
    model: str
    info: dict[str, Any]
    expires: float
    since: float
    request: Pending | None = None
    served: int = 0

    @property
    def name(self) -> str:
        return _printable(self.identity.decode("ascii", "replace"))


class Broker:
    """Routes requests from frontends to idle workers of the requested model."""

    def __init__(self, settings: BrokerSettings, context: zmq.Context | None = None) -> None:
        self.settings = settings
        self.context = context or zmq.Context.instance()
        self.workers: dict[bytes, WorkerRecord] = {}
        self.idle: dict[str, deque[bytes]] = {}
        self.queues: dict[str, deque[Pending]] = {}
        self.known_models: dict[str, dict[str, Any]] = {m: {} for m in settings.expected_models}
        self.counters: dict[str, int] = {}
        self.stopping = False
        self._stop_requested = False
        self._stop_at = 0.0
        self._next_heartbeat = 0.0
        self._disconnect_sent: dict[bytes, float] = {}
        self._authenticator: Any = None
        self._watches: list[SocketWatch] = []
        self._peer_log = PeerLog()
        self.frontend: zmq.Socket | None = None
        self.backend: zmq.Socket | None = None

    # -- lifecycle --------------------------------------------------------
    def bind(self) -> None:
        """Open both ROUTER sockets (CURVE on the backend when configured)."""
        s = self.settings
        if not is_local_endpoint(s.backend) and s.curve is None and not s.allow_insecure_backend:
            raise ValueError(
                f"backend {s.backend} is reachable from other hosts: start with --keys DIR so "
                "workers must authenticate (intgrads-broker keys makes them)"
            )
        if not is_local_endpoint(s.frontend) and not s.allow_insecure_backend:
            raise ValueError(f"frontend {s.frontend} must be a loopback or ipc endpoint")
        self.frontend = self._router(s.frontend, s.max_client_message)
        backend = self.context.socket(zmq.ROUTER)
        if s.curve is not None:
            self._authenticator = s.curve.apply(backend, self.context)
        self.backend = self._configure(backend, s.backend, s.max_worker_message)
        self._watches = [SocketWatch(self.frontend, "client", self._peer_log, self._count),
                         SocketWatch(self.backend, "worker", self._peer_log, self._count)]
        log.info("broker listening: frontends on %s, workers on %s", s.frontend, s.backend)

    def _router(self, endpoint: str, max_message: int) -> zmq.Socket:
        return self._configure(self.context.socket(zmq.ROUTER), endpoint, max_message)

    @staticmethod
    def _configure(sock: zmq.Socket, endpoint: str, max_message: int) -> zmq.Socket:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.MAXMSGSIZE, max_message)
        sock.bind(endpoint)
        return sock

    def request_stop(self) -> None:
        """Ask the loop to shut down gracefully (safe from a signal handler)."""
        self._stop_requested = True

    def close(self) -> None:
        """Close both sockets. They linger (LINGER 0 would discard the answers
        sent in the loop's last turn, e.g. the replies it waited for while
        shutting down); the process owning the context terms it to flush them."""
        for record in list(self.workers.values()):
            self._send_worker(record.identity, p.envelope(p.WORKER, p.Command.DISCONNECT))
        for watch in self._watches:
            watch.close()
        self._watches = []
        for sock in (self.frontend, self.backend):
            if sock is not None:
                sock.close(linger=CLOSE_LINGER_MS)
        if self._authenticator is not None:
            self._authenticator.stop()

    def run(self, on_tick: Callable[[], Iterable[bytes]] | None = None) -> None:
        """Serve until stopped; ``on_tick`` reports workers known to have died,
        as identity prefixes (a worker's identity gains a suffix per reconnect)."""
        if self.frontend is None:
            self.bind()
        poller = zmq.Poller()
        poller.register(self.frontend, zmq.POLLIN)
        poller.register(self.backend, zmq.POLLIN)
        try:
            while not self._finished():
                events = dict(poller.poll(self._poll_timeout_ms()))
                if self.backend in events:
                    self._receive(self.backend, self.handle_worker)
                if self.frontend in events:
                    self._receive(self.frontend, self.handle_client)
                for prefix in on_tick() if on_tick else ():
                    for identity in [i for i in self.workers if i.startswith(prefix)]:
                        self.worker_gone(identity, died=True, reason="process exited")
                self.tick()
        finally:
            self.close()

    def _receive(self, sock: zmq.Socket, handler: Callable[[bytes, list[Any]], None]) -> None:
        for _ in range(64):  # drain a burst, but keep both sockets served
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            try:
                handler(frames[0].bytes, frames[1:])
            except Exception:
                self._count("handler_errors")
                log.exception("error while handling a message from %r; dropped it", frames[0].bytes[:40])
        for watch in self._watches:
            watch.drain()

    def _finished(self) -> bool:
        now = time.monotonic()
        if self._stop_requested and not self.stopping:
            self._begin_shutdown(now)
        if not self.stopping:
            return False
        busy = [r for r in self.workers.values() if r.request and not r.request.answered]
        if busy and now < self._stop_at:
            return False
        for record in busy:
            self._answer_error(record.request, ShuttingDown("the broker stopped before this finished"))
        return True

    def _begin_shutdown(self, now: float) -> None:
        self.stopping = True
        self._stop_at = now + self.settings.shutdown_grace
        log.info("shutting down: answering queued requests, waiting for running ones")
        for queue in self.queues.values():
            while queue:
                self._answer_error(queue.popleft(), ShuttingDown("the broker is shutting down"))

    def _poll_timeout_ms(self) -> int:
        return int(min(POLL_CAP, self.settings.heartbeat_interval) * 1000)

    # -- periodic work ------------------------------------------------------
    def tick(self) -> None:
        now = time.monotonic()
        self._purge_expired_workers(now)
        self._expire_deadlines(now)
        if now >= self._next_heartbeat:
            for identity in list(self.workers):
                self._send_worker(identity, p.envelope(p.WORKER, p.Command.HEARTBEAT))
            self._next_heartbeat = now + self.settings.heartbeat_interval
        self.dispatch()

    def _purge_expired_workers(self, now: float) -> None:
        for record in [r for r in self.workers.values() if r.expires < now]:
            self.worker_gone(record.identity, died=True, reason="missed heartbeats")

    def _expire_deadlines(self, now: float) -> None:
        for queue in self.queues.values():
            for pending in [q for q in queue if q.deadline < now]:
                queue.remove(pending)
                self._answer_error(pending, DeadlineExceeded("the request waited in the queue past its deadline"))
        for record in self.workers.values():
            pending = record.request
            if pending is not None and not pending.answered and pending.deadline < now:
                self._answer_error(pending, DeadlineExceeded(f"worker {record.name} did not finish before the deadline"))

    def dispatch(self) -> None:
        """Hand queued requests, oldest first, to idle workers of their model."""
        for model, queue in self.queues.items():
            idle = self.idle.get(model)
            while queue and idle:
                identity = idle.popleft()
                record = self.workers.get(identity)
                if record is None or record.request is not None:
                    continue
                self._send_to_worker(record, queue.popleft())

    def _send_to_worker(self, record: WorkerRecord, pending: Pending) -> None:
        remaining = max(0.001, pending.deadline - time.monotonic())
        frames = p.request_frames(
            p.WORKER, pending.request_id, model=pending.model, sequence=pending.body.sequence,
            options=pending.body.options, timeout=remaining,
        )
        record.request = pending
        pending.attempts += 1
        if not self._send_worker(record.identity, frames):
            self.worker_gone(record.identity, died=True, reason="unreachable")

    # -- clients --------------------------------------------------------------
    def handle_client(self, client: bytes, frames: list[Any]) -> None:
        try:
            message = p.parse(frames, p.CLIENT)
        except p.ProtocolError as exc:
            self._count("protocol_errors")
            self._peer_log(logging.WARNING, "dropped a malformed client message: %s", exc)
            return
        if message.command == p.Command.STATUS:
            self._send_client(client, p.envelope(p.CLIENT, p.Command.STATUS_REPLY, message.request_id) + [p.dumps(self.status())])
        elif message.command == p.Command.REQUEST:
            self._accept(client, message)
        else:
            self._count("protocol_errors")
            self._peer_log(logging.WARNING, "client sent %s; ignored", message.command.name)

    def _accept(self, client: bytes, message: p.Message) -> None:
        request_id = message.request_id or ""
        try:
            body = p.parse_request_body(message.body[0])
        except p.ProtocolError as exc:
            self._count("protocol_errors")
            self._peer_log(logging.WARNING, "refused a malformed request %r from client %r: %s",
                           request_id, client[:16], exc)
            self._reply_error(client, request_id, BadRequest(f"malformed request: {exc}"))
            return
        now = time.monotonic()
        try:
            model = self._route(body.model)
        except IntgradsError as exc:
            self._reply_error(client, request_id, exc)
            return
        timeout = min(body.timeout or self.settings.default_timeout, self.settings.max_timeout)
        pending = Pending(request_id, client, body, model, now + timeout, now)
        queue = self.queues.setdefault(model, deque())
        if len(queue) >= self.settings.queue_bound:
            self._answer_error(pending, QueueFull(
                f"model '{model}' has {len(queue)} requests waiting; try again shortly",
                retry_after=self.settings.retry_after,
            ))
            return
        self._count("requests_accepted")
        queue.append(pending)
        self.dispatch()

    def _route(self, requested: str | None) -> str:
        if self.stopping:
            raise ShuttingDown("the broker is shutting down", retry_after=self.settings.retry_after)
        model = requested or self.default_model()
        if model is None:
            raise NoWorkers("no model is being served yet", retry_after=self.settings.retry_after)
        if model not in self.known_models:
            raise UnknownModel(f"no model named '{model}'; served: {', '.join(sorted(self.known_models)) or 'none'}")
        alive = any(r.model == model for r in self.workers.values())
        if not alive and model not in self.settings.expected_models:
            raise NoWorkers(f"no worker for model '{model}' is alive", retry_after=self.settings.retry_after)
        return model

    def default_model(self) -> str | None:
        if self.settings.default_model:
            return self.settings.default_model
        return next(iter(self.known_models), None)

    # -- workers --------------------------------------------------------------
    def handle_worker(self, identity: bytes, frames: list[Any]) -> None:
        try:
            message = p.parse(frames, p.WORKER)
        except p.ProtocolError as exc:
            self._count("protocol_errors")
            self._peer_log(logging.WARNING, "dropped a malformed message from worker %r: %s", identity[:40], exc)
            return
        record = self.workers.get(identity)
        if message.command == p.Command.READY:
            self._register(identity, message)
            return
        if record is None:
            self._disconnect_unknown(identity, message)
            return
        record.expires = time.monotonic() + self.settings.worker_expiry
        if message.command in (p.Command.REPLY, p.Command.ERROR):
            self._finish(record, message)
        elif message.command == p.Command.DISCONNECT:
            self.worker_gone(identity, died=False, reason="said goodbye")

    def _register(self, identity: bytes, message: p.Message) -> None:
        try:
            info = p.loads_object(message.body[0])
            model = info.get("model")
            if not isinstance(model, str) or not 0 < len(model) <= MAX_MODEL_NAME:
                raise p.ProtocolError(f"READY needs a model name of 1 to {MAX_MODEL_NAME} characters")
        except p.ProtocolError as exc:
            self._count("protocol_errors")
            self._peer_log(logging.WARNING, "refused worker %r: %s", identity[:40], exc)
            return
        if identity in self.workers:
            self.worker_gone(identity, died=False, reason="re-registered")
        now = time.monotonic()
        self.workers[identity] = WorkerRecord(identity, model, info, now + self.settings.worker_expiry, now)
        self.known_models[model] = info
        self.idle.setdefault(model, deque()).append(identity)
        self._disconnect_sent.pop(identity, None)
        load_seconds = info.get("load_seconds")
        if isinstance(load_seconds, bool) or not isinstance(load_seconds, (int, float)) or not 0 <= load_seconds < 1e9:
            load_seconds = 0.0  # what a worker says about itself only decorates this line
        log.info(
            "worker %s ready: model %s on %.40s (%.80s), loaded in %.1f s",
            self.workers[identity].name, _printable(model), info.get("device", "?"),
            info.get("placement", ""), load_seconds,
        )
        self.dispatch()

    def _finish(self, record: WorkerRecord, message: p.Message) -> None:
        pending = record.request
        if pending is None or pending.request_id != message.request_id:
            self._count("late_replies_dropped")
            self._peer_log(logging.INFO, "dropped a reply for %r from %s: not its current request",
                           message.request_id, record.name)
            return
        record.request = None
        record.served += 1
        self.idle.setdefault(record.model, deque()).append(record.identity)
        if pending.answered:
            self._count("late_replies_dropped")
            return
        if message.command == p.Command.ERROR:
            try:  # decoded and re-encoded: the client gets a well-formed error, whatever was sent
                error = p.parse_error_strict(message.body)
            except p.ProtocolError as exc:
                self._count("protocol_errors")
                self._peer_log(logging.WARNING, "worker %s sent a malformed error: %s", record.name, exc)
                error = IntgradsError(f"worker {record.name} sent a malformed error")
            self._answer(pending, p.error_frames(p.CLIENT, pending.request_id, error), "error")
            return
        try:
            p.check_reply_frames(message.body)
        except p.ProtocolError as exc:
            self._count("protocol_errors")
            self._peer_log(logging.WARNING, "worker %s sent a malformed reply: %s", record.name, exc)
            self._answer_error(pending, IntgradsError(f"worker {record.name} sent a malformed reply"))
            return
        self._answer(pending, p.envelope(p.CLIENT, p.Command.REPLY, pending.request_id) + list(message.body), "ok")

    def worker_gone(self, identity: bytes, *, died: bool, reason: str) -> None:
        """Forget a worker; re-queue (once) or fail the request it held."""
        record = self.workers.pop(identity, None)
        if record is None:
            return
        idle = self.idle.get(record.model)
        if idle is not None and identity in idle:
            idle.remove(identity)
        log.warning("worker %s removed: %s", record.name, reason)
        pending = record.request
        if pending is None or pending.answered:
            return
        if died:
            pending.died_on.append(record.name)
        else:
            pending.attempts -= 1  # a goodbye is not the request's fault
        if pending.attempts >= MAX_ATTEMPTS:
            self._answer_error(pending, WorkerDied(
                f"the request was running on {' and '.join(pending.died_on)} when each died; "
                "it looks like it kills workers and was not retried again"
            ))
            return
        if self.stopping:
            self._answer_error(pending, ShuttingDown("the broker is shutting down"))
            return
        self.queues.setdefault(pending.model, deque()).appendleft(pending)
        self._count("requests_redispatched")

    def _disconnect_unknown(self, identity: bytes, message: p.Message) -> None:
        """A message from a worker that is not registered (dropped for missed
        heartbeats, or never READY): ignored, and the peer told to register."""
        self._count("unregistered_messages")
        now = time.monotonic()
        if now - self._disconnect_sent.get(identity, 0.0) >= DISCONNECT_EVERY:
            self._disconnect_sent[identity] = now
            self._peer_log(logging.INFO, "ignored %s%s from unregistered worker %r; told it to register",
                           message.command.name, f" for {message.request_id!r}" if message.request_id else "",
                           identity[:40])
            self._send_worker(identity, p.envelope(p.WORKER, p.Command.DISCONNECT))
        if len(self._disconnect_sent) > 10_000:
            self._disconnect_sent.clear()

    # -- answering ------------------------------------------------------------
    def _answer(self, pending: Pending, frames: list[Any], outcome: str) -> None:
        pending.answered = True
        self._count(f"answered_{outcome}")
        self._send_client(pending.client, frames)

    def _answer_error(self, pending: Pending, error: IntgradsError) -> None:
        if pending.answered:
            return
        self._answer(pending, p.error_frames(p.CLIENT, pending.request_id, error), error.code)

    def _reply_error(self, client: bytes, request_id: str, error: IntgradsError) -> None:
        self._count(f"answered_{error.code}")
        self._send_client(client, p.error_frames(p.CLIENT, request_id or "-", error))

    def _send_client(self, client: bytes, frames: list[Any]) -> None:
        # NOBLOCK: with ROUTER_MANDATORY a blocking send to a peer at its
        # high-water mark (a client that stopped reading) would stall the loop.
        try:
            self.frontend.send_multipart([client, *frames], zmq.NOBLOCK, copy=False)
        except zmq.ZMQError as exc:
            self._count("undeliverable")
            self._peer_log(logging.INFO, "could not answer client %r: %s", client[:16], exc)

    def _send_worker(self, identity: bytes, frames: list[Any]) -> bool:
        try:
            self.backend.send_multipart([identity, *frames], zmq.NOBLOCK, copy=False)
            return True
        except zmq.ZMQError:
            return False

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    # -- status -----------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Models, workers, queues and counters (for /models, /readyz, /metrics)."""
        now = time.monotonic()
        models = {}
        for name, info in self.known_models.items():
            workers = [r for r in self.workers.values() if r.model == name]
            models[name] = {
                "workers": len(workers),
                "idle": sum(1 for r in workers if r.request is None),
                "queued": len(self.queues.get(name, ())),
                "labels": info.get("labels", []),
                "defaults": info.get("defaults", {}),
                "limits": info.get("limits", {}),
                "model": info.get("describe", {}),
                "dtype": info.get("dtype"),
                "expected": name in self.settings.expected_models,
            }
        workers = [
            {
                "identity": r.name,
                "model": r.model,
                "state": "busy" if r.request else "idle",
                "device": r.info.get("device"),
                "placement": r.info.get("placement"),
                "host": r.info.get("host"),
                "pid": r.info.get("pid"),
                "served": r.served,
                "up_seconds": round(now - r.since, 1),
            }
            for r in self.workers.values()
        ]
        return {
            "default_model": self.default_model(),
            "models": models,
            "workers": workers,
            "counters": dict(self.counters),
            "stopping": self.stopping,
        }
