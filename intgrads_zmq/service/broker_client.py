"""Talking to the broker from a frontend, a CLI or a test (no torch here).

A :class:`BrokerClient` owns one DEALER socket and must stay in one thread
(ZeroMQ sockets are not thread-safe; the HTTP frontend keeps one per thread).
It never hangs:

* ``IMMEDIATE`` is set, so with no broker connected a request is refused after
  ``connect_wait`` seconds with :class:`BrokerUnavailable` rather than queued;
* a socket monitor reports a lost connection while a reply is awaited, which
  also ends in :class:`BrokerUnavailable` at once;
* every wait is bounded by the request's deadline (plus a margin for the
  broker's own deadline answer to arrive).

Replies are matched by request id; anything else arriving on the socket (a
reply to an earlier request that was already given up on) is dropped. The
texts of a batch (:meth:`BrokerClient.submit_batch`) are answered one by
one under their own ids; a refusal of the whole batch arrives once, under
the batch id, and answers each of its texts that is waited for.

A waiter may pass ``on_progress`` (PROGRESS messages of the requests it
waits for) and ``stop_if`` (checked every :data:`CHECK_EVERY` seconds: when
it returns True the requests still unanswered are cancelled at the broker
and reported as :class:`Cancelled`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from ..errors import BrokerUnavailable, Cancelled, DeadlineExceeded, IntgradsError
from ..payload import AttributionPayload
from . import protocol as p
from .endpoints import broker_endpoint, prepare_private
from .security import CurveClient, client_curve_from_env

DEADLINE_MARGIN = 5.0  # seconds to wait past a deadline for the broker's answer
CHECK_EVERY = 0.1  # seconds between two calls of a waiter's stop_if
Outcome = AttributionPayload | IntgradsError
ProgressCallback = Callable[[str, p.Progress], None]


def refused_whole_batch(error: IntgradsError) -> bool:
    """Whether ``error`` refused a whole batch (it answers each of its texts)
    rather than being one text's own failure."""
    return getattr(error, "whole_batch", False) is True


class BrokerClient:
    """Sends requests to the broker and collects their answers."""

    def __init__(self, endpoint: str | None = None, *, context: zmq.Context | None = None,
                 connect_wait: float = 1.0, curve: CurveClient | None = None) -> None:
        """Connect to ``endpoint`` (default: $INTGRADS_BROKER, else this user's
        private ipc:// socket, whose directory is checked first). ``curve``: the
        key pair for a broker whose frontend port uses CURVE; with no endpoint
        given, $INTGRADS_SERVER_KEY / $INTGRADS_CLIENT_KEY supply it too. A key
        the broker refuses looks like an unreachable broker (BrokerUnavailable)."""
        if endpoint is None and curve is None:
            curve = client_curve_from_env()
        self.endpoint = prepare_private(endpoint or broker_endpoint())
        self.context = context or zmq.Context.instance()
        self.connect_wait = connect_wait
        self.dropped = 0
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.IMMEDIATE, 1)
        self.socket.setsockopt(zmq.RECONNECT_IVL, 100)
        self.socket.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        if curve is not None:
            curve.apply(self.socket)
        self.monitor = self.socket.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self.socket.connect(self.endpoint)

    def close(self) -> None:
        self.socket.disable_monitor()
        self.monitor.close(linger=0)
        self.socket.close(linger=0)

    def __enter__(self) -> BrokerClient:
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.close()

    # -- sending ------------------------------------------------------------
    def _send(self, frames: list[bytes]) -> None:
        self._drain_monitor()
        if not self.socket.poll(int(self.connect_wait * 1000), zmq.POLLOUT):
            raise BrokerUnavailable(f"cannot reach the broker at {self.endpoint}", retry_after=1.0)
        try:
            self.socket.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            raise BrokerUnavailable(f"cannot reach the broker at {self.endpoint}", retry_after=1.0) from None

    def submit(self, sequence: str, *, model: str | None = None, options: dict[str, Any] | None = None,
               timeout: float = 600.0, progress: bool = False, max_reply: int | None = None) -> str:
        """Send one request; returns its id (collect it with :meth:`wait`).
        ``progress``: the broker sends PROGRESS messages for it. ``max_reply``:
        the most tensor bytes to accept (a bigger reply is answered 413)."""
        request_id = p.new_request_id()
        body = p.RequestBody(model, sequence, options or {}, timeout, progress, max_reply)
        self._send(p.request_frames(p.CLIENT, request_id, body))
        return request_id

    def submit_batch(self, sequences: list[str] | tuple[str, ...], *, model: str | None = None,
                     options: dict[str, Any] | None = None, timeout: float = 600.0,
                     max_reply: int | None = None) -> list[str]:
        """Send several texts as one batch, admitted whole or refused whole;
        returns one request id per text (collect them with :meth:`wait`)."""
        batch_id = p.new_request_id()
        body = p.BatchBody(model, tuple(sequences), options or {}, timeout, max_reply)
        self._send(p.batch_frames(batch_id, body))
        return [p.batch_member_id(batch_id, index) for index in range(len(sequences))]

    def cancel(self, request_ids: list[str]) -> None:
        """Cancel this client's requests (a no-op for answered or unknown ids)."""
        for request_id in request_ids:
            try:
                self._send(p.envelope(p.CLIENT, p.Command.CANCEL, request_id))
            except BrokerUnavailable:
                return  # nothing runs there to cancel, or the broker will answer a gone client

    # -- jobs ---------------------------------------------------------------
    def submit_job(self, sequence: str, *, model: str | None = None, options: dict[str, Any] | None = None,
                   timeout: float = 600.0, wait: float = 5.0, max_reply: int | None = None) -> dict[str, Any]:
        """Make a job; returns its state (``job_id`` included) or raises the refusal."""
        body = p.RequestBody(model, sequence, options or {}, timeout, max_reply=max_reply)
        return self._job_call(p.request_frames(p.CLIENT, p.new_request_id(), body), wait)

    def job_status(self, job_id: str, *, wait: float = 5.0) -> dict[str, Any]:
        return self._job_call(p.job_frames(p.CLIENT, p.Command.JOB_STATUS, p.new_request_id(), job_id), wait)

    def job_cancel(self, job_id: str, *, wait: float = 5.0) -> dict[str, Any]:
        """Cancel a job (a no-op once finished); returns its state after."""
        return self._job_call(p.job_frames(p.CLIENT, p.Command.JOB_CANCEL, p.new_request_id(), job_id), wait)

    def job_result(self, job_id: str, *, wait: float = 30.0) -> AttributionPayload:
        """A finished job's reply, or the typed error it ended with (or
        JobNotFinished / JobGone / UnknownJob)."""
        request_id = p.new_request_id()
        self._send(p.job_frames(p.CLIENT, p.Command.JOB_RESULT, request_id, job_id))
        outcome = self.wait([request_id], wait, margin=0.0)[request_id]
        if isinstance(outcome, IntgradsError):
            raise outcome
        if not isinstance(outcome, AttributionPayload):
            raise IntgradsError("unexpected answer to a job result request")
        return outcome

    def _job_call(self, frames: list[bytes], wait: float) -> dict[str, Any]:
        if frames[1] == p.Command.REQUEST.value:
            frames[1] = p.Command.JOB_SUBMIT.value
        request_id = frames[2].decode("ascii")
        self._send(frames)
        outcome = self.wait([request_id], wait, margin=0.0)[request_id]
        if isinstance(outcome, IntgradsError):
            if isinstance(outcome, DeadlineExceeded):
                raise BrokerUnavailable("the broker did not answer a job request in time", retry_after=1.0)
            raise outcome
        if not isinstance(outcome, dict):
            raise IntgradsError("unexpected answer to a job request")
        return outcome

    # -- receiving ----------------------------------------------------------
    def wait(self, request_ids: list[str], timeout: float, *, margin: float = DEADLINE_MARGIN,
             on_progress: ProgressCallback | None = None,
             stop_if: Callable[[], bool] | None = None) -> dict[str, Outcome]:
        """Collect answers for ``request_ids``; give up ``timeout + margin`` from now
        (the margin lets the broker's own deadline answer arrive first)."""
        wanted = set(request_ids)
        results: dict[str, Outcome] = {}
        deadline = time.monotonic() + timeout + margin
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        poller.register(self.monitor, zmq.POLLIN)
        step = CHECK_EVERY if stop_if is not None else 1.0
        while wanted - set(results):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            events = dict(poller.poll(int(min(remaining, step) * 1000)))
            # Answers first: a broker that replies and then exits (a graceful
            # shutdown) delivers the reply and the disconnect in the same poll.
            if self.socket in events:
                self._receive(wanted, results, on_progress)
            if self.monitor in events and self._drain_monitor():
                self._receive(wanted, results, on_progress)
                lost = BrokerUnavailable("the connection to the broker was lost", retry_after=1.0)
                results.update({rid: lost for rid in wanted - set(results)})
                break
            if stop_if is not None and wanted - set(results) and stop_if():
                self.give_up(sorted(wanted - set(results)), results)
        for rid in wanted - set(results):
            results[rid] = DeadlineExceeded("no answer from the broker before the deadline")
        return results

    def wait_some(self, request_ids: list[str], seconds: float, *,
                  on_progress: ProgressCallback | None = None) -> dict[str, Outcome]:
        """The answers among ``request_ids`` that arrive within ``seconds``
        (maybe none): for a caller that does something between waits, such
        as streaming progress. A lost connection answers every one."""
        results: dict[str, Outcome] = {}
        if self._drain_monitor():
            self._receive(set(request_ids), results, on_progress)  # what arrived before the loss
            lost = BrokerUnavailable("the connection to the broker was lost", retry_after=1.0)
            return {**{rid: lost for rid in request_ids}, **results}
        if self.socket.poll(int(max(0.0, seconds) * 1000), zmq.POLLIN):
            self._receive(set(request_ids), results, on_progress)
        return results

    def give_up(self, request_ids: list[str], results: dict[str, Outcome]) -> None:
        """Cancel requests at the broker and record them as cancelled here."""
        self.cancel(request_ids)
        for rid in request_ids:
            results[rid] = Cancelled("the client went away; the request was cancelled")

    def _receive(self, wanted: set[str], results: dict[str, Outcome],
                 on_progress: ProgressCallback | None = None) -> None:
        while True:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                message = p.parse(frames, p.CLIENT)
            except p.ProtocolError:
                self.dropped += 1
                continue
            if message.request_id not in wanted and self._batch_refused(message, wanted, results):
                continue
            if message.request_id not in wanted or message.request_id in results:
                self.dropped += 1  # a late answer to a request given up on
                continue
            if message.command == p.Command.PROGRESS:
                self._progress(message, on_progress)
                continue
            results[message.request_id] = self._outcome(message)

    def _batch_refused(self, message: p.Message, wanted: set[str], results: dict[str, Outcome]) -> bool:
        """An ERROR under a batch id answers every text of it still waited for."""
        if message.command != p.Command.ERROR or message.request_id is None:
            return False
        prefix = p.batch_member_id(message.request_id, 0)[:-1]
        members = [rid for rid in wanted if rid.startswith(prefix) and rid[len(prefix):].isdigit()]
        if not members:
            return False
        error = p.parse_error(message.body)
        error.whole_batch = True  # type: ignore[attr-defined]  # read by refused_whole_batch()
        for rid in members:
            results.setdefault(rid, error)
        return True

    @staticmethod
    def _progress(message: p.Message, on_progress: ProgressCallback | None) -> None:
        if on_progress is None:
            return
        try:
            progress = p.Progress.from_json(message.body[0])
        except p.ProtocolError:
            return
        on_progress(message.request_id or "", progress)

    @staticmethod
    def _outcome(message: p.Message) -> Outcome | dict[str, Any]:
        if message.command == p.Command.REPLY:
            try:
                return p.parse_reply(message.body)
            except p.ProtocolError as exc:
                return IntgradsError(f"malformed reply: {exc}")
        if message.command == p.Command.ERROR:
            return p.parse_error(message.body)
        if message.command == p.Command.STATUS_REPLY:
            try:
                return p.BrokerStatus.dict_from_json(message.body[0])
            except p.ProtocolError as exc:
                return IntgradsError(f"malformed status reply: {exc}")
        if message.command == p.Command.DRAIN_REPLY:
            try:
                return p.DrainReply.from_json(message.body[0]).to_dict()
            except p.ProtocolError as exc:
                return IntgradsError(f"malformed drain reply: {exc}")
        if message.command == p.Command.JOB_STATE:
            try:
                return p.JobState.from_json(message.body[0]).to_dict()
            except p.ProtocolError as exc:
                return IntgradsError(f"malformed job state: {exc}")
        return IntgradsError(f"unexpected {message.command.name} from the broker")

    def _drain_monitor(self) -> bool:
        """Consume monitor events; True if the connection dropped."""
        lost = False
        while self.monitor.poll(0):
            event = recv_monitor_message(self.monitor)
            lost = lost or event["event"] == zmq.EVENT_DISCONNECTED
        return lost

    # -- conveniences -------------------------------------------------------
    def attribute(self, sequence: str, *, model: str | None = None, options: dict[str, Any] | None = None,
                  timeout: float = 600.0) -> AttributionPayload:
        """One request, answered or raised."""
        request_id = self.submit(sequence, model=model, options=options, timeout=timeout)
        outcome = self.wait([request_id], timeout)[request_id]
        if isinstance(outcome, IntgradsError):
            raise outcome
        return outcome

    def status(self, timeout: float = 2.0) -> dict[str, Any]:
        """The broker's models, workers, queues and counters, as plain data
        (:meth:`protocol.BrokerStatus.to_dict`'s keys)."""
        request_id = p.new_request_id()
        self._send(p.envelope(p.CLIENT, p.Command.STATUS, request_id))
        answer = self.wait([request_id], timeout, margin=0.0)[request_id]
        if isinstance(answer, IntgradsError):
            raise BrokerUnavailable(f"the broker did not answer a status request: {answer.description}")
        return answer  # type: ignore[return-value]

    def drain(self, *, model: str | None = None, worker: str | None = None, timeout: float = 3.0) -> dict[str, Any]:
        """Drain every worker of ``model``, or the one ``worker`` (its identity
        in the status): ``{"workers": [identities told], "count": n}``.
        Raises UnknownModel / UnknownWorker (404) for a name the broker lacks."""
        request_id = p.new_request_id()
        self._send(p.drain_frames(request_id, p.DrainTarget(model=model, worker=worker)))
        answer = self.wait([request_id], timeout, margin=0.0)[request_id]
        if isinstance(answer, DeadlineExceeded):
            raise BrokerUnavailable("the broker did not answer the drain request in time", retry_after=1.0)
        if isinstance(answer, IntgradsError):
            raise answer
        if not isinstance(answer, dict):
            raise IntgradsError("unexpected answer to a drain request")
        return answer
