"""The broker: one queue per model, a worker registry, heartbeats, deadlines, retries.

One thread runs :meth:`Broker.run`, a single poll loop; nothing else touches
its sockets or state. Per-model state lives in :class:`ModelService`. Rules
it keeps:

* Every accepted request gets exactly one answer: the worker's reply, or an
  error (overloaded, deadline passed, worker died twice, shutting down).
* A worker is alive while it is heard from within ``heartbeat_interval *
  heartbeat_liveness``; a silent one is dropped and its request re-queued at
  the front, once. A second death answers the request with ``WorkerDied``.
  A supervised worker's exit is reported by the supervisor (``on_tick``) and
  handled at once, without waiting for missed heartbeats.
* A model with no registered worker: a request for it queues only while the
  model is *expected* (its workers are local and starting) and no load
  failure is known; otherwise it gets ``NoWorkers`` (503 + Retry-After) at
  once, with the load error when one is known. A load failure (LOAD_FAILED
  from the worker, or its exit before it ever registered) also answers the
  requests already queued for the model.
* A request past its deadline is answered at once, whether queued or running;
  a running one's worker is told to stop (CANCEL) and stays busy until it
  answers; a reply arriving after that is dropped, never handed to anyone else.
* CANCEL from a client names one of its own requests: a queued one is taken
  out, a running one's worker is told to stop at its next chunk. Unknown or
  answered ids are a no-op. Workers' PROGRESS is forwarded to clients that
  asked for it (and kept for jobs), with queue positions as they change.
* DRAIN from a client names a model (all its workers) or one worker; each is
  marked draining at once (never handed a new request; the queue goes to the
  other workers, or waits as for a model with no worker) and sent DRAIN: it
  finishes the request it holds, says goodbye and exits 0, and its supervisor
  does not restart it. A worker may announce its own drain (SIGTERM) the same
  way. Unknown names are answered 404.
* Jobs (JOB_SUBMIT) are requests whose answer goes to the :class:`JobStore`,
  bounded in age and bytes; any frontend holding the job id may read it.
* A BATCH (the texts of one HTTP request) is admitted whole or refused at
  once: 400 when it holds more texts than the queue bound (it could never
  wait whole), 503 + Retry-After when it does not fit now; nothing of a
  refused batch is queued or computed. When one of its texts fails, its
  siblings still queued or running are cancelled (their work is wasted
  anyway: the client gets the failure).
* A reply carrying more tensor bytes than its request's ``max_reply`` is not
  relayed: the client gets 413 instead. A worker announcing a big reply
  (SENDING) is not counted dead while the bytes may still be crossing. Replies are relayed as the frames
  that arrived (received without copying, sent by reference): a big reply
  costs the broker its own size once, while it passes.
* Messages that break the protocol are logged and dropped; peers are never
  trusted to be well-formed. Connections libzmq refuses on its own (a failed
  CURVE handshake, a message over MAXMSGSIZE) are logged from socket monitors.
* The loop never blocks on a peer: every send is non-blocking, so a client or
  worker that stops reading loses its own messages, not everyone's service.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import zmq

from ..errors import (
    BadRequest,
    Cancelled,
    DeadlineExceeded,
    IntgradsError,
    NoWorkers,
    PayloadTooLarge,
    QueueFull,
    ShuttingDown,
    UnknownModel,
    UnknownWorker,
    WorkerDied,
)
from . import protocol as p
from .endpoints import DEFAULT_CLIENT_ENDPOINT, DEFAULT_WORKER_ENDPOINT, ipc_in_use, prepare_private
from .job_store import JobStore
from .model_service import BatchGroup, ModelService, Pending, differing_keys
from .peers import PeerLog, SocketWatch
from .processes import WorkerExit
from .security import FRONTENDS_DOMAIN, WORKERS_DOMAIN, CurveServer, curve_needed

log = logging.getLogger("intgrads.broker")

T = TypeVar("T")
MAX_ATTEMPTS = 2  # a request is dispatched at most twice (re-dispatched once)
POLL_CAP = 0.2  # seconds: how quickly a stop request is noticed
DISCONNECT_EVERY = 1.0  # seconds between DISCONNECTs to the same unknown worker
CLOSE_LINGER_MS = 2000  # at exit, time given to answers already sent to reach their clients
ANSWER_GRACE = 1.0  # seconds the sockets stay open after the last answer, for clients to read it
MAX_REMEMBERED_PEERS = 10_000  # bound on the per-peer memories below
# A worker announcing a big reply (SENDING) is given this much time per byte on
# top of its usual liveness: a floor on transfer speed (20 MB/s: a 945 MB
# reply gets 47 s more). A worker that dies mid-transfer is noticed that much
# later (a local one at once anyway: its supervisor reports the exit).
TRANSFER_FLOOR = 20e6  # bytes per second


@dataclass
class BrokerSettings:
    """Endpoints, liveness, bounds and timeouts (all seconds unless named)."""

    frontend: str = DEFAULT_CLIENT_ENDPOINT
    backend: str = DEFAULT_WORKER_ENDPOINT
    heartbeat_interval: float = 1.0
    heartbeat_liveness: int = 3
    queue_bound: int = 64  # a whole batch of INTGRADS_MAX_SEQUENCES (64) texts must fit
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
    job_ttl: float = 3600.0  # seconds a finished job's result is kept
    job_store_bytes: int = 1 << 30  # bound on all kept job results

    @property
    def worker_expiry(self) -> float:
        return self.heartbeat_interval * self.heartbeat_liveness


@dataclass
class WorkerRecord:
    """A registered worker and what it holds."""

    identity: bytes
    info: p.WorkerInfo
    expires: float
    since: float
    request: Pending | None = None
    served: int = 0
    draining: bool = False

    @property
    def model(self) -> str:
        return self.info.model

    @property
    def name(self) -> str:
        return p.identity_text(self.identity)

    @property
    def state(self) -> str:
        if self.draining:
            return "draining"
        return "busy" if self.request else "idle"

    def status(self, now: float) -> p.WorkerStatus:
        info = self.info
        return p.WorkerStatus(
            identity=self.name, model=info.model, state=self.state,
            device=info.device, placement=info.placement, host=info.host, pid=info.pid,
            served=self.served, up_seconds=round(now - self.since, 1),
        )


def _prefix_of(identity: bytes) -> bytes:
    """The name part of a worker identity (see protocol.worker_identity)."""
    return identity.rpartition(b".")[0] + b"."


class Broker:
    """Routes requests from frontends to idle workers of the requested model."""

    def __init__(self, settings: BrokerSettings, context: zmq.Context | None = None) -> None:
        self.settings = settings
        self.context = context or zmq.Context.instance()
        self.workers: dict[bytes, WorkerRecord] = {}
        self.models: dict[str, ModelService] = {
            m: ModelService(m, expected=True) for m in settings.expected_models}
        self.counters: dict[str, int] = {}
        self.jobs = JobStore(settings.job_ttl, settings.job_store_bytes)
        self.stopping = False
        self._closing_at: float | None = None
        self._stop_requested = False
        self._stop_at = 0.0
        self._next_heartbeat = 0.0
        self._disconnect_sent: dict[bytes, float] = {}
        self._ever_registered: set[bytes] = set()  # identity prefixes (worker names)
        self._authenticator: Any = None
        self._watches: list[SocketWatch] = []
        self._peer_log = PeerLog()
        self.frontend: zmq.Socket | None = None
        self.backend: zmq.Socket | None = None

    # -- lifecycle --------------------------------------------------------
    def bind(self) -> None:
        """Open both ROUTER sockets.

        An endpoint other hosts can reach needs CURVE keys (``--keys``): peers
        of the backend are then checked against the workers' keys, peers of the
        frontend against the frontends' keys. With keys the backend is always a
        CURVE server; the frontend is one beyond loopback, and on loopback TCP
        too when the keys say ``everywhere`` (``--curve-on-loopback``). The
        private ipc:// directory is made (or checked) first, and an ipc
        endpoint another broker listens on is refused: libzmq would replace its
        file and quietly take the other broker's clients.
        """
        s = self.settings
        curve = s.curve
        if curve is None and not s.allow_insecure_backend:
            for role, endpoint, peers in (("backend", s.backend, "workers"), ("frontend", s.frontend, "frontends")):
                if curve_needed(endpoint):
                    raise ValueError(
                        f"{role} {endpoint} is reachable from other hosts: start with --keys DIR so "
                        f"{peers} must authenticate (intgrads-broker keys makes them)"
                    )
        for endpoint in (s.frontend, s.backend):
            prepare_private(endpoint)
            if ipc_in_use(endpoint):
                raise ValueError(f"{endpoint} is in use: another broker listens there (stop it first, or "
                                 "give this one other --frontend / --backend endpoints)")
        if curve is not None:
            self._authenticator = curve.start(self.context)
        front_curve = curve is not None and curve.protects(s.frontend, "frontend")
        self.frontend = self._router(s.frontend, s.max_client_message, FRONTENDS_DOMAIN if front_curve else None)
        self.backend = self._router(s.backend, s.max_worker_message, WORKERS_DOMAIN if curve is not None else None)
        self._watches = [SocketWatch(self.frontend, "client", self._peer_log, self._count),
                         SocketWatch(self.backend, "worker", self._peer_log, self._count)]
        log.info("broker listening: frontends on %s%s, workers on %s%s", s.frontend,
                 " (CURVE)" if front_curve else "", s.backend, " (CURVE)" if curve is not None else "")

    def _router(self, endpoint: str, max_message: int, curve_domain: str | None = None) -> zmq.Socket:
        """A bound ROUTER; a CURVE server checking peers against ``curve_domain``'s keys when given."""
        sock = self.context.socket(zmq.ROUTER)
        if curve_domain is not None:
            self.settings.curve.serve(sock, curve_domain)
        return self._configure(sock, endpoint, max_message)

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

    def run(self, on_tick: Callable[[], Iterable[WorkerExit]] | None = None) -> None:
        """Serve until stopped; ``on_tick`` reports supervised workers that exited."""
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
                for exited in on_tick() if on_tick else ():
                    self.worker_exited(exited)
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
        # Stay open a moment after the last answer: a client's DEALER drops
        # the answers it has not read yet when the connection goes away, and a
        # busy frontend thread may take a while to read them.
        if self._closing_at is None:
            self._closing_at = now + ANSWER_GRACE
        return now >= self._closing_at

    def _begin_shutdown(self, now: float) -> None:
        self.stopping = True
        self._stop_at = now + self.settings.shutdown_grace
        log.info("shutting down: answering queued requests, waiting for running ones")
        for service in self.models.values():
            for pending in service.take_all():
                self._answer_error(pending, ShuttingDown("the broker is shutting down"))

    def _poll_timeout_ms(self) -> int:
        return int(min(POLL_CAP, self.settings.heartbeat_interval) * 1000)

    # -- periodic work ------------------------------------------------------
    def tick(self) -> None:
        now = time.monotonic()
        self._purge_expired_workers(now)
        self._expire_deadlines(now)
        self.jobs.expire(now)
        if now >= self._next_heartbeat:
            for identity in list(self.workers):
                self._send_worker(identity, p.envelope(p.WORKER, p.Command.HEARTBEAT))
            self._next_heartbeat = now + self.settings.heartbeat_interval
        self.dispatch()

    def _purge_expired_workers(self, now: float) -> None:
        for record in [r for r in self.workers.values() if r.expires < now]:
            self.worker_gone(record.identity, died=True, reason="missed heartbeats")

    def _expire_deadlines(self, now: float) -> None:
        for service in self.models.values():
            for pending in service.take_expired(now):
                self._answer_error(pending, DeadlineExceeded("the request waited in the queue past its deadline"))
        for record in self.workers.values():
            pending = record.request
            if pending is not None and not pending.answered and pending.deadline < now:
                self._answer_error(pending, DeadlineExceeded(f"worker {record.name} did not finish before the deadline"))
                self._stop_worker(record)

    def dispatch(self) -> None:
        """Hand queued requests, oldest first, to idle workers of their model."""
        for service in self.models.values():
            moved = False
            while (assignment := service.next_assignment()) is not None:
                identity, pending = assignment
                record = self.workers.get(identity)
                if record is None or record.request is not None:
                    service.requeue(pending)  # a stale idle entry; try the next worker
                    continue
                moved = True
                self._send_to_worker(record, pending)
            if moved:
                self._report_positions(service)

    def _send_to_worker(self, record: WorkerRecord, pending: Pending) -> None:
        remaining = max(0.001, pending.deadline - time.monotonic())
        body = p.RequestBody(pending.model, pending.body.sequence, pending.body.options, remaining,
                             max_reply=pending.body.max_reply)  # the worker refuses an oversize reply first
        record.request = pending
        pending.attempts += 1
        pending.position = None
        if pending.job is not None:
            self.jobs.started(pending.job)
        elif pending.body.progress:
            self._send_client(pending.client, p.progress_frames(p.CLIENT, pending.request_id, p.Progress("running")))
        if not self._send_worker(record.identity, p.request_frames(p.WORKER, pending.request_id, body)):
            self.worker_gone(record.identity, died=True, reason="unreachable")

    def _report_positions(self, service: ModelService) -> None:
        """Tell waiting clients that asked for progress where they now stand."""
        for position, pending in enumerate(service.queue):
            if not pending.wants_progress or pending.position == position:
                continue
            pending.position = position
            if pending.job is not None:
                pending.job.position = position
            else:
                self._send_client(pending.client, p.progress_frames(
                    p.CLIENT, pending.request_id, p.Progress("queued", position=position)))

    def _stop_worker(self, record: WorkerRecord) -> None:
        """Tell a worker to stop its request at the next chunk; it stays busy
        until it answers (the answer is then dropped)."""
        if record.request is not None:
            self._count("cancels_sent")
            self._send_worker(record.identity, p.envelope(p.WORKER, p.Command.CANCEL, record.request.request_id))

    def cancel(self, pending: Pending, error: IntgradsError) -> None:
        """Answer ``pending`` with ``error`` and free its place: out of the
        queue, or its worker told to stop."""
        if pending.answered:
            return
        self._count("requests_cancelled")
        service = self.models.get(pending.model)
        if service is not None and service.remove(pending):
            self._answer_error(pending, error)
            self._report_positions(service)  # the ones behind it moved up
            return
        for record in self.workers.values():
            if record.request is pending:
                self._stop_worker(record)
        self._answer_error(pending, error)

    def _find(self, client: bytes, request_id: str) -> Pending | None:
        """The unanswered request ``request_id`` of ``client`` (jobs excluded)."""
        def mine(pending: Pending | None) -> bool:
            return (pending is not None and pending.job is None and not pending.answered
                    and pending.request_id == request_id and pending.client == client)

        for record in self.workers.values():
            if mine(record.request):
                return record.request
        for service in self.models.values():
            for pending in service.queue:
                if mine(pending):
                    return pending
        return None

    # -- clients --------------------------------------------------------------
    def handle_client(self, client: bytes, frames: list[Any]) -> None:
        message = self._decode(lambda: p.parse(frames, p.CLIENT), "dropped a malformed client message: %s")
        if message is None:
            return
        command = message.command
        if command == p.Command.STATUS:
            self._send_client(client, p.envelope(p.CLIENT, p.Command.STATUS_REPLY, message.request_id)
                              + [self.status().to_json()])
        elif command == p.Command.REQUEST:
            self._accept(client, message)
        elif command == p.Command.BATCH:
            self._accept_batch(client, message)
        elif command == p.Command.CANCEL:
            pending = self._find(client, message.request_id or "")
            if pending is not None:
                self.cancel(pending, Cancelled("the client cancelled the request"))
        elif command in self._job_handlers:
            self._job_command(client, message)
        elif command == p.Command.DRAIN:
            self._drain_command(client, message)
        else:
            self._count("protocol_errors")
            self._peer_log(logging.WARNING, "client sent %s; ignored", message.command.name)

    def _accept(self, client: bytes, message: p.Message, job_id: str | None = None) -> Pending | None:
        """Queue a REQUEST (or a job's JOB_SUBMIT, as ``job_id``); None if refused
        (the refusal is sent to ``client``)."""
        request_id = message.request_id or ""
        try:
            body = p.RequestBody.from_json(message.body[0])
        except p.ProtocolError as exc:
            self._count("protocol_errors")
            self._peer_log(logging.WARNING, "refused a malformed request %r from client %r: %s",
                           request_id, client[:16], exc)
            self._reply_error(client, request_id, BadRequest(f"malformed request: {exc}"))
            return None
        now = time.monotonic()
        try:
            service = self._route(body.model)
        except IntgradsError as exc:
            self._reply_error(client, request_id, exc)
            return None
        timeout = min(body.timeout or self.settings.default_timeout, self.settings.max_timeout)
        pending = Pending(job_id or request_id, client, body, service.name, now + timeout, now)
        if service.full(self.settings.queue_bound):
            self._reply_error(client, request_id, QueueFull(
                f"model '{service.name}' has {len(service.queue)} requests waiting; try again shortly",
                retry_after=self.settings.retry_after,
            ))
            return None
        self._count("jobs_accepted" if job_id else "requests_accepted")
        if job_id is not None:
            pending.job = self.jobs.add(job_id, service.name)
        service.enqueue(pending)
        if pending.wants_progress:
            self._report_positions(service)
        self.dispatch()
        return pending

    def _accept_batch(self, client: bytes, message: p.Message) -> None:
        """Queue every text of a BATCH, or none: a refusal is one ERROR under
        the batch id, sent before anything is queued."""
        batch_id = message.request_id or ""
        try:
            body = p.BatchBody.from_json(message.body[0])
            if len(p.batch_member_id(batch_id, len(body.sequences) - 1)) > p.MAX_REQUEST_ID_BYTES:
                raise p.ProtocolError("batch id too long for its texts' request ids")
        except p.ProtocolError as exc:
            self._count("protocol_errors")
            self._peer_log(logging.WARNING, "refused a malformed batch %r from client %r: %s",
                           batch_id, client[:16], exc)
            self._reply_error(client, batch_id, BadRequest(f"malformed batch: {exc}"))
            return
        try:
            service = self._route(body.model)
            self._admit(service, len(body.sequences))
        except IntgradsError as exc:
            self._count("batches_refused")
            self._reply_error(client, batch_id, exc)
            return
        now = time.monotonic()
        deadline = now + min(body.timeout or self.settings.default_timeout, self.settings.max_timeout)
        group = BatchGroup(batch_id)
        for index in range(len(body.sequences)):
            pending = Pending(p.batch_member_id(batch_id, index), client, body.member(index), service.name,
                              deadline, now, group=group, index=index)
            group.members.append(pending)
            service.enqueue(pending)
        self._count("batches_accepted")
        self.counters["requests_accepted"] = self.counters.get("requests_accepted", 0) + len(group.members)
        self.dispatch()

    def _admit(self, service: ModelService, texts: int) -> None:
        """Raise unless ``texts`` requests may join ``service``'s queue now, all together."""
        bound = self.settings.queue_bound
        if texts > bound:
            raise BadRequest(
                f"a batch of {texts} texts can never be admitted: model '{service.name}' queues at most "
                f"{bound} requests (the broker's --queue-bound) and a batch is queued whole; send at most "
                f"{bound} texts per request", field="sequences")
        room = service.room(bound)
        if texts > room:
            raise QueueFull(
                f"model '{service.name}' has {len(service.queue)} requests waiting (bound {bound}) and "
                f"{len(service.idle)} idle workers: a batch of {texts} texts does not fit now; nothing of it "
                "was queued or computed, try again shortly", retry_after=self.settings.retry_after)

    # -- draining -----------------------------------------------------------------
    def _drain_command(self, client: bytes, message: p.Message) -> None:
        """DRAIN {model | worker}: answered with the workers told, or 404."""
        request_id = message.request_id or "-"
        target = self._decode(lambda: p.DrainTarget.from_json(message.body[0]), "dropped a malformed drain: %s")
        if target is None:
            self._reply_error(client, request_id, BadRequest("malformed drain: name one 'model' or one 'worker'"))
            return
        try:
            records = self._drain_targets(target)
        except IntgradsError as exc:
            self._reply_error(client, request_id, exc)
            return
        for record in records:
            self.drain(record)
        reply = p.DrainReply([record.name for record in records])
        self._send_client(client, p.envelope(p.CLIENT, p.Command.DRAIN_REPLY, request_id) + [reply.to_json()])

    def _drain_targets(self, target: p.DrainTarget) -> list[WorkerRecord]:
        if target.model is not None:
            if target.model not in self.models:
                raise UnknownModel(f"no model named '{target.model}'; served: "
                                   f"{', '.join(sorted(self.models)) or 'none'}")
            return [r for r in self.workers.values() if r.model == target.model]
        # The identity as the status shows it, or the worker's name without its ".N".
        found = [r for r in self.workers.values() if target.worker in (r.name, r.name.rpartition(".")[0])]
        if not found:
            raise UnknownWorker(f"no worker named '{p.printable(target.worker or '')}'; "
                                "`intgrads-broker status` lists them")
        return found

    def drain(self, record: WorkerRecord) -> None:
        """Dispatch nothing more to ``record`` and tell it to finish and leave."""
        self.mark_draining(record)
        self._send_worker(record.identity, p.envelope(p.WORKER, p.Command.DRAIN))

    def mark_draining(self, record: WorkerRecord) -> None:
        if not record.draining:
            record.draining = True
            self._count("workers_drained")
            log.info("worker %s draining: %s", record.name,
                     f"finishing request {record.request.request_id}" if record.request else "idle")
        self.models[record.model].drain_worker(record.identity)

    # -- jobs ---------------------------------------------------------------------
    _job_handlers = (p.Command.JOB_SUBMIT, p.Command.JOB_STATUS, p.Command.JOB_RESULT, p.Command.JOB_CANCEL)

    def _job_command(self, client: bytes, message: p.Message) -> None:
        """JOB_SUBMIT, JOB_STATUS, JOB_RESULT, JOB_CANCEL: answered with the job's
        state, its stored answer, or an error (unknown 404, evicted 410)."""
        request_id = message.request_id or "-"
        if message.command == p.Command.JOB_SUBMIT:
            pending = self._accept(client, message, job_id=p.new_job_id())
            if pending is not None and pending.job is not None:
                self._send_job_state(client, request_id, pending.job)
            return
        query = self._decode(lambda: p.JobQuery.from_json(message.body[0]), "dropped a malformed job query: %s")
        if query is None:
            self._reply_error(client, request_id, BadRequest("malformed job query"))
            return
        try:
            if message.command == p.Command.JOB_RESULT:
                record = self.jobs.result(query.job_id)
                self._send_client(client, p.envelope(p.CLIENT, record.command, request_id) + list(record.body))
                return
            record = self.jobs.get(query.job_id)
        except IntgradsError as exc:
            self._reply_error(client, request_id, exc)
            return
        if message.command == p.Command.JOB_CANCEL:
            self._cancel_job(query.job_id)
        self._send_job_state(client, request_id, record)

    def _cancel_job(self, job_id: str) -> None:
        for pending in self._active():
            if pending.job is not None and pending.job.job_id == job_id:
                self.cancel(pending, Cancelled("the job was cancelled"))
                return

    def _active(self) -> Iterable[Pending]:
        for record in self.workers.values():
            if record.request is not None:
                yield record.request
        for service in self.models.values():
            yield from service.queue

    def _send_job_state(self, client: bytes, request_id: str, record: Any) -> None:
        state = record.to_state(self.jobs.ttl)
        self._send_client(client, p.envelope(p.CLIENT, p.Command.JOB_STATE, request_id) + [state.to_json()])

    def _route(self, requested: str | None) -> ModelService:
        if self.stopping:
            raise ShuttingDown("the broker is shutting down", retry_after=self.settings.retry_after)
        name = requested or self.default_model()
        if name is None:
            raise NoWorkers("no model is being served yet", retry_after=self.settings.retry_after)
        service = self.models.get(name)
        if service is None:
            raise UnknownModel(f"no model named '{name}'; served: {', '.join(sorted(self.models)) or 'none'}")
        if not service.waits_for_workers():
            raise self._no_workers(service)
        return service

    def _no_workers(self, service: ModelService) -> NoWorkers:
        why = f": {service.load_error}" if service.load_error else " is alive"
        return NoWorkers(f"no worker for model '{service.name}'{why}", retry_after=self.settings.retry_after)

    def default_model(self) -> str | None:
        if self.settings.default_model:
            return self.settings.default_model
        return next(iter(self.models), None)

    # -- workers --------------------------------------------------------------
    def handle_worker(self, identity: bytes, frames: list[Any]) -> None:
        message = self._decode(lambda: p.parse(frames, p.WORKER),
                               "dropped a malformed message from worker %r: %s", identity[:40])
        if message is None:
            return
        if message.command == p.Command.READY:
            self._register(identity, message)
            return
        if message.command == p.Command.LOAD_FAILED:
            self._load_failed(identity, message)
            return
        record = self.workers.get(identity)
        if record is None:
            self._disconnect_unknown(identity, message)
            return
        record.expires = time.monotonic() + self.settings.worker_expiry
        if message.command in (p.Command.REPLY, p.Command.ERROR):
            self._finish(record, message)
        elif message.command == p.Command.PROGRESS:
            self._progress(record, message)
        elif message.command == p.Command.SENDING:
            self._sending(record, message)
        elif message.command == p.Command.DISCONNECT:
            self.worker_gone(identity, died=False, reason="drained" if record.draining else "said goodbye")
        elif message.command == p.Command.DRAIN:
            self.mark_draining(record)  # the worker drains itself (SIGTERM)

    def _register(self, identity: bytes, message: p.Message) -> None:
        """READY: add the worker to its model. A model's description (labels,
        limits, defaults, dtype, the adapter's summary) is fixed while it has
        workers: a worker describing it differently is refused, logged and told
        to stop (DRAIN: it exits 0 and its supervisor does not restart it), and
        the model, its workers and /models stay as they were."""
        info = self._decode(lambda: p.WorkerInfo.from_json(message.body[0]), "refused worker %r: %s", identity[:40])
        if info is None:
            return
        if identity in self.workers:
            self.worker_gone(identity, died=False, reason="re-registered")
        service = self.models.setdefault(info.model, ModelService(info.model))
        differ = service.add_worker(identity, info)
        if differ:
            self._refuse_worker(identity, service, info, differ)
            return
        now = time.monotonic()
        record = WorkerRecord(identity, info, now + self.settings.worker_expiry, now)
        self.workers[identity] = record
        self._disconnect_sent.pop(identity, None)
        self._remember(self._ever_registered, _prefix_of(identity))
        log.info("worker %s ready: model %s on %.40s (%.80s), loaded in %.1f s", record.name,
                 p.printable(info.model), info.device or "?", info.placement or "", info.load_seconds)
        self.dispatch()

    def _load_failed(self, identity: bytes, message: p.Message) -> None:
        """A worker could not load its model: no request waits for it any more."""
        failure = self._decode(lambda: p.LoadFailure.from_json(message.body[0]),
                               "dropped a malformed LOAD_FAILED from %r: %s", identity[:40])
        if failure is None:
            return
        self.model_failed(failure.model, f"worker {p.identity_text(identity)} failed to load it: {failure.error}")

    def worker_exited(self, exited: WorkerExit) -> None:
        """The supervisor saw a worker process end: forget it now; if it never
        registered, its model failed to load."""
        prefix = p.identity_prefix(exited.name)
        for identity in [i for i in self.workers if i.startswith(prefix)]:
            drained = exited.exitcode == 0 and self.workers[identity].draining
            self.worker_gone(identity, died=not drained, reason=f"process exited with code {exited.exitcode}")
        if prefix not in self._ever_registered and not self.stopping and exited.exitcode != 0:
            service = self.models.get(exited.model)
            if service is None or service.load_error is None:  # keep a LOAD_FAILED's own words
                self.model_failed(exited.model, f"worker {p.printable(exited.name)} exited with code "
                                                f"{exited.exitcode} before it registered (see the log)")

    def model_failed(self, model: str, error: str) -> None:
        """Record why ``model`` has no worker; answer its queue if none is left."""
        service = self.models.get(model)
        if service is None:
            self._peer_log(logging.INFO, "ignored a load failure for unknown model %r", model[:80])
            return
        log.error("model %s: %s", p.printable(model), error)
        self._count("load_failures")
        service.load_failed(error)
        if not service.waits_for_workers():
            for pending in service.take_all():
                self._answer_error(pending, self._no_workers(service))

    def _finish(self, record: WorkerRecord, message: p.Message) -> None:
        pending = record.request
        if pending is None or pending.request_id != message.request_id:
            self._count("late_replies_dropped")
            self._peer_log(logging.INFO, "dropped a reply for %r from %s: not its current request",
                           message.request_id, record.name)
            return
        record.request = None
        record.served += 1
        self.models[record.model].worker_free(record.identity)
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
            self._answer(pending, p.Command.ERROR, [p.dumps(error.to_dict())], "error", error)
            return
        try:
            payload = p.parse_reply(message.body)
        except p.ProtocolError as exc:
            self._count("protocol_errors")
            self._peer_log(logging.WARNING, "worker %s sent a malformed reply: %s", record.name, exc)
            self._answer_error(pending, IntgradsError(f"worker {record.name} sent a malformed reply"))
            return
        size = sum(tensor.nbytes for tensor in payload.tensors.values())
        limit = pending.body.max_reply
        # A batch's replies end up in one HTTP body: the bound is on their sum.
        total = size + (pending.group.tensor_bytes if pending.group is not None else 0)
        if limit is not None and total > limit:
            self._count("replies_too_large")
            what = "the reply holds" if total == size else f"sequences[{pending.index}] brings the batch's replies to"
            self._answer_error(pending, PayloadTooLarge(
                f"{what} {total:,} bytes of tensors, more than the {limit:,} bytes the client takes "
                "(INTGRADS_MAX_REPLY, or INTGRADS_MAX_JSON_TENSORS for JSON); ask for fewer 'fields', "
                "fewer 'n_steps', a smaller 'max_length' or fewer texts", field="fields"))
            return
        if pending.group is not None:
            pending.group.tensor_bytes = total
        self._answer(pending, p.Command.REPLY, list(message.body), "ok")

    def _sending(self, record: WorkerRecord, message: p.Message) -> None:
        """A big reply to the worker's current request follows: nothing else
        from it (heartbeats included) arrives before it does, so its liveness
        is stretched by the time the bytes may take."""
        pending = record.request
        if pending is None or pending.request_id != message.request_id:
            return
        notice = self._decode(lambda: p.Sending.from_json(message.body[0]),
                              "dropped a malformed SENDING from %s: %s", record.name)
        if notice is not None:
            record.expires = time.monotonic() + self.settings.worker_expiry + notice.bytes / TRANSFER_FLOOR

    def _progress(self, record: WorkerRecord, message: p.Message) -> None:
        """A worker's progress on its current request: kept for a job, passed on
        to a client that asked for it, dropped otherwise."""
        pending = record.request
        if pending is None or pending.answered or pending.request_id != message.request_id:
            return
        progress = self._decode(lambda: p.Progress.from_json(message.body[0]),
                                "dropped a malformed PROGRESS from %s: %s", record.name)
        if progress is None or progress.state != "running":
            return
        if pending.job is not None:
            pending.job.done, pending.job.total = progress.done, progress.total
        elif pending.body.progress:
            self._send_client(pending.client, p.progress_frames(p.CLIENT, pending.request_id, progress))

    def worker_gone(self, identity: bytes, *, died: bool, reason: str) -> None:
        """Forget a worker; re-queue (once) or fail the request it held."""
        record = self.workers.pop(identity, None)
        if record is None:
            return
        service = self.models[record.model]
        service.remove_worker(identity)
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
        elif self.stopping:
            self._answer_error(pending, ShuttingDown("the broker is shutting down"))
        else:
            service.requeue(pending)
            if pending.job is not None:
                self.jobs.requeued(pending.job)
            self._count("requests_redispatched")

    def _disconnect_unknown(self, identity: bytes, message: p.Message) -> None:
        """A message from a worker that is not registered (dropped for missed
        heartbeats, or never READY): ignored, and the peer told to register."""
        self._count("unregistered_messages")
        now = time.monotonic()
        if now - self._disconnect_sent.get(identity, 0.0) >= DISCONNECT_EVERY:
            self._remember(self._disconnect_sent, identity, now)
            self._peer_log(logging.INFO, "ignored %s%s from unregistered worker %r; told it to register",
                           message.command.name, f" for {message.request_id!r}" if message.request_id else "",
                           identity[:40])
            self._send_worker(identity, p.envelope(p.WORKER, p.Command.DISCONNECT))

    @staticmethod
    def _remember(memory: Any, key: bytes, value: float | None = None) -> None:
        """Add to a per-peer memory, forgetting everything past its bound."""
        if len(memory) >= MAX_REMEMBERED_PEERS:
            memory.clear()
        if value is None:
            memory.add(key)
        else:
            memory[key] = value

    # -- answering ------------------------------------------------------------
    def _answer(self, pending: Pending, command: p.Command, body: list[Any], outcome: str,
                error: IntgradsError | None = None) -> None:
        """The one answer of ``pending``: to its client, or a job's to the store."""
        pending.answered = True
        self._count(f"answered_{outcome}")
        if pending.job is not None:
            # Kept as received: a zmq.Frame is sent again by reference, never copied.
            self.jobs.finish(pending.job.job_id, command, list(body), error, time.monotonic())
            return
        self._send_client(pending.client, p.envelope(p.CLIENT, command, pending.request_id) + body)
        if error is not None and pending.group is not None:
            self._cancel_siblings(pending, error)

    def _cancel_siblings(self, failed: Pending, error: IntgradsError) -> None:
        """One text of a batch failed: the client gets that failure, so the
        others' work would be thrown away; stop it (once per batch)."""
        group = failed.group
        if group is None or group.failed:
            return
        group.failed = True
        why = Cancelled(f"cancelled because sequences[{failed.index}] of the same request failed ({error.code})")
        for sibling in group.members:
            if not sibling.answered:
                self._count("batch_siblings_cancelled")
                self.cancel(sibling, why)

    def _answer_error(self, pending: Pending, error: IntgradsError) -> None:
        if pending.answered:
            return
        self._answer(pending, p.Command.ERROR, [p.dumps(error.to_dict())], error.code, error)

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

    def _decode(self, decode: Callable[[], T], complaint: str, *args: Any) -> T | None:
        """``decode()``, or None once a ProtocolError is counted and logged as
        ``complaint % (*args, error)``: a peer's bad message costs one line."""
        try:
            return decode()
        except p.ProtocolError as exc:
            self._count("protocol_errors")
            self._peer_log(logging.WARNING, complaint, *args, exc)
            return None

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    # -- status -----------------------------------------------------------------
    def status(self) -> p.BrokerStatus:
        """Models, workers, queues and counters (for /models, /readyz, /metrics)."""
        now = time.monotonic()
        return p.BrokerStatus(
            default_model=self.default_model(),
            models={name: s.status() for name, s in self.models.items()},
            workers=[r.status(now) for r in self.workers.values()],
            counters=dict(self.counters),
            stopping=self.stopping,
            jobs=self.jobs.stats(),
            queue_bound=self.settings.queue_bound,
        )

    # -- registration refused ------------------------------------------------------
    def _refuse_worker(self, identity: bytes, service: ModelService, info: p.WorkerInfo,
                       differ: list[str]) -> None:
        """Log why a worker may not join ``service`` and tell it to stop."""
        self._count("workers_refused")
        registered = service.info or p.WorkerInfo(service.name)
        changes = []
        for name in differ:
            theirs, ours = getattr(info, name), getattr(registered, name)
            if isinstance(theirs, dict) and isinstance(ours, dict):
                changes += [f"{name}.{key} {theirs.get(key)!r:.60} instead of {ours.get(key)!r:.60}"
                            for key in differing_keys(theirs, ours)]
            else:
                changes.append(f"{name} {theirs!r:.120} instead of {ours!r:.120}")
        details = "; ".join(changes)
        self._peer_log(logging.ERROR, "refused worker %s for model %s: its description differs from the %d "
                       "worker(s) serving it (%s); told it to stop. Give it another --name, or drain the "
                       "model's workers first", p.identity_text(identity), p.printable(service.name),
                       len(service.workers), details)
        self._send_worker(identity, p.envelope(p.WORKER, p.Command.DRAIN))
