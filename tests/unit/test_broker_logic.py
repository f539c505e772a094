"""The broker's rules, driven in-process: the real Broker loop in a thread on
inproc:// endpoints, with fake workers and a real BrokerClient speaking the
real protocol over real pyzmq sockets. No process is started; a supervisor's
reports (a worker process exited) are injected through ``on_tick``.
"""

from __future__ import annotations

import queue
import struct
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import zmq

from intgrads_zmq.errors import (
    BadRequest,
    Cancelled,
    ComputeFailed,
    DeadlineExceeded,
    IntgradsError,
    JobGone,
    JobNotFinished,
    NoWorkers,
    PayloadTooLarge,
    QueueFull,
    UnknownJob,
    UnknownModel,
    UnknownWorker,
    WorkerDied,
)
from intgrads_zmq.payload import AttributionPayload, RawTensor
from intgrads_zmq.service import protocol as p
from intgrads_zmq.service.broker import Broker, BrokerSettings
from intgrads_zmq.service.broker_client import BrokerClient, refused_whole_batch
from intgrads_zmq.service.processes import EXIT_LOAD_FAILED, WorkerExit
from intgrads_zmq.testing.stack import wait_until as stack_wait_until

LIMITS = {"max_steps": 300, "max_length": 512, "max_sequence_chars": 100_000, "max_sequences": 64}
DEFAULTS = {"n_steps": 50, "method": "gausslegendre", "baseline": "pad", "max_length": 512}


def wait_until(condition: Callable[[], Any], timeout: float = 5.0) -> Any:
    return stack_wait_until(condition, timeout, "the broker's state", interval=0.005)


class FakeWorker:
    """A DEALER that speaks the worker side of the protocol, step by step."""

    def __init__(self, context: zmq.Context, endpoint: str, model: str, name: str) -> None:
        self.model = model
        self.name = name
        self.sock = context.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.IDENTITY, p.worker_identity(name, 1))
        self.sock.connect(endpoint)

    def send(self, command: p.Command, *frames: Any, request_id: str | None = None) -> None:
        self.sock.send_multipart(p.envelope(p.WORKER, command, request_id) + list(frames))

    def ready(self) -> None:
        info = p.WorkerInfo(self.model, description={"architecture": "Fake"}, labels=["neg", "pos"],
                            defaults=DEFAULTS, limits=LIMITS, dtype="float32", pid=1234)
        self.send(p.Command.READY, info.to_json())

    def next_request(self, timeout: float = 5.0) -> p.Message:
        """The next REQUEST; heartbeats are sent while waiting, as a live worker does."""
        return self.next_message(p.Command.REQUEST, timeout)

    def next_message(self, command: p.Command, timeout: float = 5.0) -> p.Message:
        """The next message with ``command`` (others are skipped), beating meanwhile."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.send(p.Command.HEARTBEAT)
            if self.sock.poll(10):
                message = p.parse(self.sock.recv_multipart(), p.WORKER)
                if message.command == command:
                    return message
        raise TimeoutError(f"{self.name} was sent no {command.name}")

    def progress(self, request_id: str, done: int, total: int) -> None:
        self.send(p.Command.PROGRESS, p.Progress("running", done=done, total=total, elapsed=0.5).to_json(),
                  request_id=request_id)

    def fail(self, request_id: str, error: Any) -> None:
        self.sock.send_multipart(p.error_frames(p.WORKER, request_id, error))

    def reply(self, request_id: str) -> None:
        tensor = RawTensor("float32", (1,), struct.pack("<f", 1.0))
        self.sock.send_multipart(p.reply_frames(p.WORKER, request_id, {"tokens": ["a"]}, {"x": tensor}))

    def close(self) -> None:
        self.sock.close(linger=0)


class InProcessBroker:
    """The real broker loop in a thread; fake workers and clients around it."""

    def __init__(self, **settings: Any) -> None:
        self.context = zmq.Context()
        tag = uuid.uuid4().hex[:8]
        settings.setdefault("shutdown_grace", 0.2)
        self.settings = BrokerSettings(frontend=f"inproc://front-{tag}", backend=f"inproc://back-{tag}",
                                       **settings)
        self.broker = Broker(self.settings, self.context)
        self.broker.bind()  # before anyone connects: inproc needs the bind first
        self.exits: queue.Queue[WorkerExit] = queue.Queue()
        self.thread = threading.Thread(target=self.broker.run, kwargs={"on_tick": self._exits}, daemon=True)
        self.thread.start()
        self.client = BrokerClient(self.settings.frontend, context=self.context)
        self.workers: list[FakeWorker] = []

    def _exits(self) -> list[WorkerExit]:
        out = []
        while not self.exits.empty():
            out.append(self.exits.get_nowait())
        return out

    def worker(self, model: str = "m", name: str | None = None, *, ready: bool = True) -> FakeWorker:
        worker = FakeWorker(self.context, self.settings.backend, model, name or f"{model}-w{len(self.workers)}")
        self.workers.append(worker)
        if ready:
            worker.ready()
            wait_until(lambda: any(w["identity"].startswith(worker.name) for w in self.status()["workers"]))
        return worker

    def status(self) -> dict[str, Any]:
        return self.client.status()

    def outcome(self, request_id: str, timeout: float = 5.0) -> Any:
        return self.client.wait([request_id], timeout, margin=0.0)[request_id]

    def close(self) -> None:
        self.broker.request_stop()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive()
        for worker in self.workers:
            worker.close()
        self.client.close()
        self.context.destroy(linger=0)


@pytest.fixture
def make_broker():
    made: list[InProcessBroker] = []

    def make(**settings: Any) -> InProcessBroker:
        made.append(InProcessBroker(**settings))
        return made[-1]

    yield make
    for broker in made:
        broker.close()


# -- deadlines ----------------------------------------------------------------
def test_a_queued_request_past_its_deadline_is_answered_deadline_exceeded(make_broker):
    stack = make_broker(expected_models=("m",))  # expected, no worker yet: the request queues
    rid = stack.client.submit("text", timeout=0.05)
    assert isinstance(stack.outcome(rid), DeadlineExceeded)
    assert stack.status()["models"]["m"]["queued"] == 0


def test_a_running_request_past_its_deadline_is_answered_and_the_late_reply_dropped(make_broker):
    stack = make_broker()
    worker = stack.worker()
    rid = stack.client.submit("text", timeout=0.05)
    message = worker.next_request()
    assert isinstance(stack.outcome(rid), DeadlineExceeded)
    worker.next_message(p.Command.CANCEL)  # the worker is told to stop; the broker does not wait for it
    worker.reply(message.request_id)
    wait_until(lambda: stack.status()["counters"].get("late_replies_dropped") == 1)
    assert stack.status()["workers"][0]["state"] == "idle"


# -- retries --------------------------------------------------------------------
def test_a_request_is_redispatched_once_then_answered_worker_died(make_broker):
    stack = make_broker()
    first, second = stack.worker(name="m-a"), stack.worker(name="m-b")
    rid = stack.client.submit("poison")
    assert first.next_request().request_id == rid  # the longest-idle worker gets it
    stack.exits.put(WorkerExit("m-a", "m", -9))
    assert second.next_request().request_id == rid  # re-dispatched at once, no heartbeat wait
    stack.exits.put(WorkerExit("m-b", "m", -9))
    outcome = stack.outcome(rid)
    assert isinstance(outcome, WorkerDied) and "m-a" in outcome.description and "m-b" in outcome.description
    assert stack.status()["workers"] == []


def test_a_silent_worker_is_dropped_after_missed_heartbeats_and_its_request_served_elsewhere(make_broker):
    stack = make_broker(heartbeat_interval=0.1, heartbeat_liveness=3)
    silent = stack.worker(name="m-silent")
    rid = stack.client.submit("text")
    assert silent.next_request().request_id == rid  # from now on it never beats again
    live = stack.worker(name="m-live")
    message = live.next_request()  # it beats while it waits; the silent one expires
    assert message.request_id == rid
    live.reply(rid)
    assert isinstance(stack.outcome(rid), AttributionPayload)
    assert [w["identity"] for w in stack.status()["workers"]] == ["m-live.1"]
    assert stack.status()["counters"]["requests_redispatched"] == 1


def test_a_busy_worker_saying_goodbye_hands_its_request_on_without_using_an_attempt(make_broker):
    stack = make_broker()
    leaving, staying = stack.worker(name="m-leaving"), stack.worker(name="m-staying")
    rid = stack.client.submit("text")
    assert leaving.next_request().request_id == rid
    leaving.send(p.Command.DISCONNECT)
    assert staying.next_request().request_id == rid
    staying.send(p.Command.DISCONNECT)  # two goodbyes are still not a poison request
    third = stack.worker(name="m-third")
    assert third.next_request().request_id == rid
    third.reply(rid)
    assert isinstance(stack.outcome(rid), AttributionPayload)


# -- refusals -------------------------------------------------------------------
def test_a_full_queue_refuses_at_once_with_retry_after(make_broker):
    stack = make_broker(expected_models=("m",), queue_bound=2, retry_after=3.0)
    queued = [stack.client.submit("text") for _ in range(2)]
    extra = stack.client.submit("text")
    outcome = stack.outcome(extra)
    assert isinstance(outcome, QueueFull) and outcome.retry_after == 3.0 and outcome.status == 503
    assert stack.status()["models"]["m"]["queued"] == 2
    worker = stack.worker()
    for rid in queued:
        assert worker.next_request().request_id == rid  # oldest first
        worker.reply(rid)
        assert isinstance(stack.outcome(rid), AttributionPayload)


def test_an_unknown_model_is_404(make_broker):
    stack = make_broker()
    stack.worker()
    rid = stack.client.submit("text", model="nope")
    outcome = stack.outcome(rid)
    assert isinstance(outcome, UnknownModel) and outcome.status == 404 and "m" in outcome.description


def test_a_known_model_that_is_not_expected_and_has_no_worker_is_refused_at_once(make_broker):
    stack = make_broker()
    worker = stack.worker()
    worker.send(p.Command.DISCONNECT)
    wait_until(lambda: stack.status()["models"]["m"]["workers"] == 0)
    outcome = stack.outcome(stack.client.submit("text", timeout=30))
    assert isinstance(outcome, NoWorkers) and outcome.retry_after


# -- models whose workers are starting, or failed to start (A4) ------------------
def test_status_lists_an_expected_model_before_its_worker_registers(make_broker):
    stack = make_broker(expected_models=("m",), default_model="m")
    model = stack.status()["models"]["m"]
    assert (model["workers"], model["expected"], model["load_error"]) == (0, True, None)
    stack.worker()
    model = stack.status()["models"]["m"]
    assert model["workers"] == 1 and model["limits"] == LIMITS and model["defaults"] == DEFAULTS
    assert model["labels"] == ["neg", "pos"] and model["model"] == model["description"] == {"architecture": "Fake"}


def test_a_request_during_start_up_waits_for_the_first_worker(make_broker):
    stack = make_broker(expected_models=("m",), default_model="m")
    rid = stack.client.submit("text", timeout=30)
    wait_until(lambda: stack.status()["models"]["m"]["queued"] == 1)
    worker = stack.worker()
    assert worker.next_request().request_id == rid
    worker.reply(rid)
    assert isinstance(stack.outcome(rid), AttributionPayload)


def test_a_load_failure_answers_waiting_requests_and_refuses_new_ones_at_once(make_broker):
    stack = make_broker(expected_models=("m",), default_model="m")
    waiting = stack.client.submit("text", timeout=30)
    wait_until(lambda: stack.status()["models"]["m"]["queued"] == 1)
    failing = stack.worker(name="m-w0", ready=False)
    failing.send(p.Command.LOAD_FAILED, p.LoadFailure("m", "OSError: no weights in /models/m").to_json())
    first = stack.outcome(waiting)  # well before its 30 s deadline
    assert isinstance(first, NoWorkers) and "no weights in /models/m" in first.description
    assert first.status == 503 and first.retry_after
    later = stack.outcome(stack.client.submit("text", timeout=30))
    assert isinstance(later, NoWorkers) and "no weights" in later.description
    model = stack.status()["models"]["m"]
    assert model["workers"] == 0 and model["expected"] and "no weights" in model["load_error"]


def test_a_worker_that_exits_before_registering_is_a_load_failure(make_broker):
    stack = make_broker(expected_models=("m",), default_model="m")
    waiting = stack.client.submit("text", timeout=30)
    wait_until(lambda: stack.status()["models"]["m"]["queued"] == 1)
    stack.exits.put(WorkerExit("m-w0-abc", "m", EXIT_LOAD_FAILED))
    outcome = stack.outcome(waiting)
    assert isinstance(outcome, NoWorkers) and f"exited with code {EXIT_LOAD_FAILED}" in outcome.description
    assert "before it registered" in stack.status()["models"]["m"]["load_error"]


def test_a_registered_worker_exiting_is_not_a_load_failure(make_broker):
    stack = make_broker(expected_models=("m",), default_model="m")
    stack.worker(name="m-w0-abc")
    stack.exits.put(WorkerExit("m-w0-abc", "m", -9))
    wait_until(lambda: stack.status()["models"]["m"]["workers"] == 0)
    assert stack.status()["models"]["m"]["load_error"] is None
    rid = stack.client.submit("text", timeout=30)  # its replacement is starting: wait for it
    wait_until(lambda: stack.status()["models"]["m"]["queued"] == 1)
    replacement = stack.worker(name="m-w0-def")
    assert replacement.next_request().request_id == rid


def test_a_worker_registering_after_a_load_failure_clears_it(make_broker):
    stack = make_broker(expected_models=("m",), default_model="m")
    stack.exits.put(WorkerExit("m-w0-abc", "m", 1))
    wait_until(lambda: stack.status()["models"]["m"]["load_error"])
    worker = stack.worker(name="m-w0-def")
    assert stack.status()["models"]["m"]["load_error"] is None
    rid = stack.client.submit("text")
    worker.next_request()
    worker.reply(rid)
    assert isinstance(stack.outcome(rid), AttributionPayload)


# -- names outside ASCII (A5) -----------------------------------------------------
def test_a_worker_with_a_non_ascii_name_is_recognised_when_its_process_exits(make_broker):
    stack = make_broker()
    name = "modèle-é-w0-1a2b3c"
    doomed, spare = stack.worker("modèle-é", name=name), stack.worker("modèle-é", name="spare")
    assert stack.status()["workers"][0]["identity"] == f"{name}.1"
    rid = stack.client.submit("text", model="modèle-é")
    assert doomed.next_request().request_id == rid
    stack.exits.put(WorkerExit(name, "modèle-é", -9))
    assert spare.next_request().request_id == rid
    assert [w["identity"] for w in stack.status()["workers"]] == ["spare.1"]


def test_identities_are_utf8_and_fit_zeromq():
    assert p.worker_identity("é", 2) == "é.2".encode()
    long = p.worker_identity("é" * 300, 12)
    assert len(long) <= 255 and long.startswith(p.identity_prefix("é" * 300))
    long.decode("utf-8")  # cut at a character boundary


# -- cancellation ---------------------------------------------------------------
def test_a_cancelled_queued_request_leaves_the_queue_and_the_next_one_is_served(make_broker):
    stack = make_broker()
    worker = stack.worker()
    first = stack.client.submit("first")
    second = stack.client.submit("second")
    assert worker.next_request().request_id == first
    assert stack.status()["models"]["m"]["queued"] == 1
    stack.client.cancel([second])
    assert isinstance(stack.outcome(second), Cancelled)  # (a gone client never reads it)
    assert stack.status()["models"]["m"]["queued"] == 0
    worker.reply(first)
    assert isinstance(stack.outcome(first), AttributionPayload)


def test_a_cancelled_running_request_stops_its_worker_which_then_takes_the_next(make_broker):
    stack = make_broker()
    worker = stack.worker()
    running = stack.client.submit("running")
    waiting = stack.client.submit("waiting")
    assert worker.next_request().request_id == running
    stack.client.cancel([running])
    assert worker.next_message(p.Command.CANCEL).request_id == running
    assert stack.status()["workers"][0]["state"] == "busy"  # until the worker says it stopped
    worker.fail(running, Cancelled("stopped at a chunk boundary"))
    assert worker.next_request().request_id == waiting
    assert stack.status()["counters"]["requests_cancelled"] == 1


def test_a_cancel_only_reaches_the_senders_own_request_and_unknown_ids_are_a_no_op(make_broker):
    stack = make_broker()
    worker = stack.worker()
    other = BrokerClient(stack.settings.frontend, context=stack.context)
    try:
        rid = stack.client.submit("mine")
        assert worker.next_request().request_id == rid
        other.cancel([rid, "no-such-request"])  # someone else's id: ignored
        stack.client.cancel(["no-such-request"])
        time.sleep(0.05)
        assert stack.status()["counters"].get("requests_cancelled", 0) == 0
        worker.reply(rid)
        assert isinstance(stack.outcome(rid), AttributionPayload)
        stack.client.cancel([rid])  # answered already: a no-op
        assert stack.status()["counters"].get("requests_cancelled", 0) == 0
    finally:
        other.close()


# -- progress -------------------------------------------------------------------
def test_progress_reports_queue_position_then_the_workers_steps(make_broker):
    stack = make_broker()
    worker = stack.worker()
    busy = stack.client.submit("busy")
    assert worker.next_request().request_id == busy
    seen: list[tuple[str, p.Progress]] = []
    watched = stack.client.submit("watched", progress=True)

    def on_progress(request_id: str, progress: p.Progress) -> None:
        seen.append((request_id, progress))

    stack.client.wait([watched], 0.2, margin=0.0, on_progress=on_progress)
    assert [(s.state, s.position) for _, s in seen] == [("queued", 0)]
    worker.reply(busy)
    assert worker.next_request().request_id == watched
    worker.progress(watched, 4, 16)
    worker.progress(busy, 1, 1)  # not its current request: dropped
    worker.reply(watched)
    outcome = stack.client.wait([watched], 5.0, margin=0.0, on_progress=on_progress)[watched]
    assert isinstance(outcome, AttributionPayload)
    states = [(s.state, s.done, s.total) for _, s in seen]
    assert states == [("queued", 0, 0), ("running", 0, 0), ("running", 4, 16)]
    assert {rid for rid, _ in seen} == {watched}


def test_a_malformed_progress_is_dropped_and_counted(make_broker):
    stack = make_broker()
    worker = stack.worker()
    rid = stack.client.submit("text", progress=True)
    assert worker.next_request().request_id == rid
    worker.send(p.Command.PROGRESS, b'{"state": "running", "done": -1}', request_id=rid)
    wait_until(lambda: stack.status()["counters"].get("protocol_errors") == 1)
    worker.reply(rid)
    assert isinstance(stack.outcome(rid), AttributionPayload)


# -- jobs -------------------------------------------------------------------------
def test_a_job_runs_reports_progress_and_keeps_its_result_for_any_client(make_broker):
    stack = make_broker()
    worker = stack.worker()
    state = stack.client.submit_job("text", options={"n_steps": 8})
    job_id = state["job_id"]
    assert len(job_id) == 32 and int(job_id, 16) >= 0  # 128 random bits
    message = worker.next_request()
    assert message.request_id == job_id
    worker.progress(job_id, 3, 8)
    wait_until(lambda: stack.client.job_status(job_id)["done"] == 3)
    running = stack.client.job_status(job_id)
    assert (running["state"], running["total"]) == ("running", 8)
    with pytest.raises(JobNotFinished):
        stack.client.job_result(job_id)
    worker.reply(job_id)
    wait_until(lambda: stack.client.job_status(job_id)["state"] == "done")
    other = BrokerClient(stack.settings.frontend, context=stack.context)
    try:  # another frontend (process or host) reads the same job
        payload = other.job_result(job_id)
        assert payload.meta == {"tokens": ["a"]}
        assert other.job_result(job_id).tensors["x"].tolist() == [1.0]  # read again
    finally:
        other.close()
    done = stack.client.job_status(job_id)
    assert done["result_bytes"] > 0 and done["finished_at"] >= done["started_at"] >= done["created_at"]
    assert stack.status()["jobs"]["finished"] == 1


def test_cancelling_a_running_job_stops_its_worker_and_is_a_no_op_once_finished(make_broker):
    stack = make_broker()
    worker = stack.worker()
    job_id = stack.client.submit_job("text")["job_id"]
    assert worker.next_request().request_id == job_id
    assert stack.client.job_cancel(job_id)["state"] in ("running", "cancelled")
    assert worker.next_message(p.Command.CANCEL).request_id == job_id
    worker.fail(job_id, Cancelled("stopped"))
    state = stack.client.job_status(job_id)
    assert state["state"] == "cancelled" and state["error"]["code"] == "cancelled"
    with pytest.raises(Cancelled):
        stack.client.job_result(job_id)
    assert stack.client.job_cancel(job_id)["state"] == "cancelled"  # again: a no-op


def test_a_failed_job_keeps_its_error_and_unknown_ids_are_404_with_the_restart_note(make_broker):
    stack = make_broker()
    worker = stack.worker()
    job_id = stack.client.submit_job("text")["job_id"]
    worker.fail(worker.next_request().request_id, ComputeFailed("the model raised"))
    wait_until(lambda: stack.client.job_status(job_id)["state"] == "failed")
    with pytest.raises(ComputeFailed):
        stack.client.job_result(job_id)
    for call in (stack.client.job_status, stack.client.job_result, stack.client.job_cancel):
        with pytest.raises(UnknownJob, match="restarted"):
            call("0" * 32)


def test_a_job_whose_worker_dies_is_redispatched(make_broker):
    stack = make_broker()
    first, second = stack.worker(name="m-a"), stack.worker(name="m-b")
    job_id = stack.client.submit_job("text")["job_id"]
    assert first.next_request().request_id == job_id
    stack.exits.put(WorkerExit("m-a", "m", -9))
    assert second.next_request().request_id == job_id
    second.reply(job_id)
    wait_until(lambda: stack.client.job_status(job_id)["state"] == "done")


def test_finished_jobs_are_evicted_by_age_then_answer_410(make_broker):
    stack = make_broker(job_ttl=0.2)
    worker = stack.worker()
    job_id = stack.client.submit_job("text")["job_id"]
    worker.reply(worker.next_request().request_id)
    wait_until(lambda: stack.status()["jobs"]["evicted_ttl"] == 1)
    with pytest.raises(JobGone, match="0.2 s"):
        stack.client.job_result(job_id)
    with pytest.raises(JobGone):
        stack.client.job_status(job_id)


def test_finished_jobs_are_evicted_oldest_first_past_the_byte_bound(make_broker):
    stack = make_broker(job_store_bytes=2500)  # two jobs' overhead and small results fit, not three
    worker = stack.worker()
    ids = []
    for _ in range(3):
        ids.append(stack.client.submit_job("text")["job_id"])
        worker.reply(worker.next_request().request_id)
        wait_until(lambda: stack.client.job_status(ids[-1])["state"] == "done")
    with pytest.raises(JobGone, match="2500 bytes"):
        stack.client.job_result(ids[0])
    assert stack.client.job_result(ids[2]).meta == {"tokens": ["a"]}
    jobs = stack.status()["jobs"]
    assert jobs["evicted_bytes"] == 1 and jobs["bytes"] <= 2500


def test_malformed_job_messages_are_answered_bad_request_and_counted(make_broker):
    stack = make_broker()
    stack.worker()
    sock = stack.client.socket
    sock.send_multipart(p.envelope(p.CLIENT, p.Command.JOB_STATUS, "q1") + [b'{"job_id": 7}'])
    sock.send_multipart(p.envelope(p.CLIENT, p.Command.JOB_SUBMIT, "q2") + [b'{"sequence": 3}'])
    outcomes = stack.client.wait(["q1", "q2"], 5.0, margin=0.0)
    assert all(o.code == "bad_request" for o in outcomes.values())
    assert stack.status()["counters"]["protocol_errors"] == 2
    assert stack.status()["jobs"]["active"] == 0  # nothing was made


def test_a_waiting_client_hears_its_new_position_when_a_request_ahead_is_cancelled(make_broker):
    stack = make_broker()
    worker = stack.worker()
    busy = stack.client.submit("busy")
    assert worker.next_request().request_id == busy
    ahead = stack.client.submit("ahead")
    seen: list[p.Progress] = []
    watched = stack.client.submit("watched", progress=True)
    stack.client.wait([watched], 0.2, margin=0.0, on_progress=lambda _rid, u: seen.append(u))
    stack.client.cancel([ahead])
    stack.client.wait([watched], 0.2, margin=0.0, on_progress=lambda _rid, u: seen.append(u))
    assert [(u.state, u.position) for u in seen] == [("queued", 1), ("queued", 0)]


# -- draining ----------------------------------------------------------------------
def test_a_drained_busy_worker_finishes_its_request_and_the_queue_goes_to_the_other_worker(make_broker):
    stack = make_broker(expected_models=("m",))
    busy, other = stack.worker(name="m-busy"), stack.worker(name="m-other")
    first = stack.client.submit("running")
    assert busy.next_request().request_id == first
    second = stack.client.submit("next")
    assert other.next_request().request_id == second  # both busy now; two more wait
    queued = [stack.client.submit(f"queued {i}") for i in range(2)]
    assert stack.client.drain(worker="m-busy.1") == {"workers": ["m-busy.1"], "count": 1}
    busy.next_message(p.Command.DRAIN)
    states = {w["identity"]: w["state"] for w in stack.status()["workers"]}
    assert states == {"m-busy.1": "draining", "m-other.1": "busy"}
    assert stack.status()["models"]["m"]["draining"] == 1
    busy.reply(first)  # its running request completes and is answered
    assert isinstance(stack.outcome(first), AttributionPayload)
    other.reply(second)
    for rid in queued:  # the queue goes to the other worker, in order
        assert other.next_request().request_id == rid
        other.reply(rid)
        assert isinstance(stack.outcome(rid), AttributionPayload)
    with pytest.raises(TimeoutError):  # the draining worker was handed nothing new
        busy.next_message(p.Command.REQUEST, 0.1)
    busy.send(p.Command.DISCONNECT)
    wait_until(lambda: [w["identity"] for w in stack.status()["workers"]] == ["m-other.1"])
    stack.exits.put(WorkerExit("m-busy", "m", 0))  # its process exits 0: not a load failure
    wait_until(lambda: stack.exits.empty())
    model = stack.status()["models"]["m"]
    assert (model["workers"], model["draining"], model["load_error"]) == (1, 0, None)


def test_draining_an_idle_worker_and_a_whole_model(make_broker):
    stack = make_broker(expected_models=("m",))
    idle = stack.worker(name="m-idle")
    assert stack.client.drain(worker="m-idle")["workers"] == ["m-idle.1"]  # its name without ".N" works too
    idle.next_message(p.Command.DRAIN)
    assert stack.status()["models"]["m"]["idle"] == 0
    rid = stack.client.submit("waits")  # no serving worker left: an expected model's request waits
    late = stack.worker(name="m-late")
    assert late.next_request().request_id == rid
    late.reply(rid)
    assert isinstance(stack.outcome(rid), AttributionPayload)
    answer = stack.client.drain(model="m")
    assert sorted(answer["workers"]) == ["m-idle.1", "m-late.1"] and answer["count"] == 2
    late.next_message(p.Command.DRAIN)
    assert {w["state"] for w in stack.status()["workers"]} == {"draining"}
    assert stack.status()["counters"]["workers_drained"] == 2


def test_a_worker_announcing_its_own_drain_gets_no_new_request(make_broker):
    stack = make_broker()
    leaving, staying = stack.worker(name="m-leaving"), stack.worker(name="m-staying")
    leaving.send(p.Command.DRAIN)  # as after a SIGTERM
    wait_until(lambda: {w["identity"]: w["state"] for w in stack.status()["workers"]}["m-leaving.1"] == "draining")
    rid = stack.client.submit("text")
    assert staying.next_request().request_id == rid
    with pytest.raises(TimeoutError):
        leaving.next_message(p.Command.REQUEST, 0.1)


def test_draining_an_unknown_model_or_worker_is_404_and_a_malformed_drain_400(make_broker):
    stack = make_broker()
    stack.worker(name="m-a")
    with pytest.raises(UnknownModel):
        stack.client.drain(model="nope")
    with pytest.raises(UnknownWorker) as raised:
        stack.client.drain(worker="m-zzz.1")
    assert raised.value.status == 404 and "m-zzz.1" in raised.value.description
    request_id = p.new_request_id()
    stack.client._send(p.envelope(p.CLIENT, p.Command.DRAIN, request_id) + [b'{"model": "m", "worker": "m-a.1"}'])
    outcome = stack.outcome(request_id)
    assert isinstance(outcome, IntgradsError) and outcome.status == 400
    assert [w["state"] for w in stack.status()["workers"]] == ["idle"]


# -- batches: admitted whole or refused at once (issue 16.3) ----------------------------
def test_a_batch_bigger_than_the_queue_bound_is_refused_400_before_anything_is_queued(make_broker):
    stack = make_broker(queue_bound=3)
    stack.worker()  # idle: even with a free worker, a batch must be able to wait whole
    ids = stack.client.submit_batch(["a", "b", "c", "d"])
    outcomes = stack.client.wait(ids, 5.0, margin=0.0)
    first = outcomes[ids[0]]
    assert isinstance(first, BadRequest) and first.status == 400 and first.field == "sequences"
    assert "never" in first.description and "--queue-bound" in first.description
    assert all(outcomes[rid] is first for rid in ids) and refused_whole_batch(first)
    status = stack.status()
    assert status["queue_bound"] == 3
    assert status["counters"].get("requests_accepted", 0) == 0 and status["counters"]["batches_refused"] == 1
    assert status["workers"][0]["state"] == "idle" and status["workers"][0]["served"] == 0


def test_a_batch_that_does_not_fit_now_gets_503_and_nothing_of_it_is_queued(make_broker):
    stack = make_broker(queue_bound=3, retry_after=2.0)
    worker = stack.worker()
    running = stack.client.submit("running")
    assert worker.next_request().request_id == running
    queued = [stack.client.submit("queued") for _ in range(2)]
    wait_until(lambda: stack.status()["models"]["m"]["queued"] == 2)
    ids = stack.client.submit_batch(["x", "y"])  # one place left, two texts
    refusal = stack.client.wait(ids, 5.0, margin=0.0)[ids[0]]
    assert isinstance(refusal, QueueFull) and refusal.status == 503 and refusal.retry_after == 2.0
    assert "nothing of it was queued or computed" in refusal.description
    assert stack.status()["models"]["m"]["queued"] == 2
    fits = stack.client.submit_batch(["z"])  # one text fits: admitted
    wait_until(lambda: stack.status()["models"]["m"]["queued"] == 3)
    for rid in [running, *queued, *fits]:
        if rid != running:
            assert worker.next_request().request_id == rid  # in arrival order
        worker.reply(rid)
        assert isinstance(stack.outcome(rid), AttributionPayload)


def test_a_batch_is_answered_text_by_text_across_workers(make_broker):
    stack = make_broker(queue_bound=4)
    first, second = stack.worker(name="m-a"), stack.worker(name="m-b")
    ids = stack.client.submit_batch(["one", "two", "three", "four"], options={"n_steps": 3})  # 2 run, 2 wait
    on_first, on_second = first.next_request(), second.next_request()
    assert {on_first.request_id, on_second.request_id} == set(ids[:2])
    assert p.RequestBody.from_json(on_first.body[0]).options == {"n_steps": 3}
    first.reply(on_first.request_id)
    third = first.next_request()
    second.reply(on_second.request_id)
    fourth = second.next_request()
    assert [third.request_id, fourth.request_id] == ids[2:]  # the queue in order
    first.reply(third.request_id)
    second.reply(fourth.request_id)
    outcomes = stack.client.wait(ids, 5.0, margin=0.0)
    assert all(isinstance(outcomes[rid], AttributionPayload) for rid in ids)
    assert stack.status()["counters"]["requests_accepted"] == 4


def test_when_one_text_fails_its_running_and_queued_siblings_are_cancelled(make_broker):
    stack = make_broker()
    first, second = stack.worker(name="m-a"), stack.worker(name="m-b")
    ids = stack.client.submit_batch(["slow", "explodes", "waits", "waits too"])
    on_first, on_second = first.next_request(), second.next_request()
    running = {on_first.request_id: first, on_second.request_id: second}
    failing = ids[1]
    running[failing].fail(failing, ComputeFailed("the model raised"))
    sibling_worker = first if running[failing] is second else second
    cancel = sibling_worker.next_message(p.Command.CANCEL)
    assert cancel.request_id == ids[0]  # the running sibling is told to stop
    outcomes = stack.client.wait(ids, 5.0, margin=0.0)
    assert isinstance(outcomes[failing], ComputeFailed)
    for rid in (ids[0], ids[2], ids[3]):
        assert isinstance(outcomes[rid], Cancelled) and "sequences[1]" in outcomes[rid].description
    status = stack.status()
    assert status["counters"]["batch_siblings_cancelled"] == 3 and status["models"]["m"]["queued"] == 0
    sibling_worker.fail(ids[0], Cancelled("stopped"))  # its answer frees it; nothing else is sent to anyone
    wait_until(lambda: all(w["state"] == "idle" for w in stack.status()["workers"]))
    assert sum(w["served"] for w in stack.status()["workers"]) == 2


def test_a_reply_over_the_requests_max_reply_is_answered_413_not_relayed(make_broker):
    stack = make_broker()
    worker = stack.worker()
    rid = stack.client.submit("text", max_reply=3)  # the fake worker's reply holds 4 bytes of tensors
    worker.reply(worker.next_request().request_id)
    outcome = stack.outcome(rid)
    assert isinstance(outcome, PayloadTooLarge) and outcome.status == 413 and "4 bytes" in outcome.description
    assert stack.status()["counters"]["replies_too_large"] == 1
    ok = stack.client.submit("text", max_reply=4)
    worker.reply(worker.next_request().request_id)
    assert isinstance(stack.outcome(ok), AttributionPayload)


def test_a_batchs_max_reply_bounds_the_sum_of_its_replies_and_the_rest_is_cancelled(make_broker):
    """Every text's reply may fit while the batch's do not: they end up in one
    HTTP body, so the bound is on their sum (the frontend would hold them all)."""
    stack = make_broker()
    worker = stack.worker()
    ids = stack.client.submit_batch(["a", "b", "c"], max_reply=7)  # each fake reply holds 4 bytes
    worker.reply(worker.next_request().request_id)  # 4 bytes: fits
    worker.reply(worker.next_request().request_id)  # 8 bytes in all: over
    outcomes = stack.client.wait(ids, 5.0, margin=0.0)
    assert isinstance(outcomes[ids[0]], AttributionPayload)
    over = outcomes[ids[1]]
    assert isinstance(over, PayloadTooLarge) and "sequences[1]" in over.description and "8 bytes" in over.description
    assert outcomes[ids[2]].code == "cancelled"  # queued behind it: never computed
    assert stack.status()["counters"]["replies_too_large"] == 1


def test_batch_refusals_for_an_unknown_model_or_a_malformed_batch_answer_every_text(make_broker):
    stack = make_broker()
    stack.worker()
    ids = stack.client.submit_batch(["a", "b"], model="nope")
    outcomes = stack.client.wait(ids, 5.0, margin=0.0)
    assert all(isinstance(o, UnknownModel) for o in outcomes.values())
    batch_id = ids[0].rsplit(".", 1)[0]
    for bad in (b"{}", p.dumps({"sequences": []}), p.dumps({"sequences": ["a", 3]}),
                p.dumps({"sequences": ["a"], "progress": True}), p.dumps({"sequences": ["a"], "max_reply": -1})):
        stack.client.socket.send_multipart(p.envelope(p.CLIENT, p.Command.BATCH, batch_id) + [bad])
        refusal = stack.client.wait([p.batch_member_id(batch_id, 0)], 5.0, margin=0.0)
        assert isinstance(next(iter(refusal.values())), BadRequest)
    assert stack.status()["counters"]["protocol_errors"] == 5


def test_a_worker_announcing_a_big_reply_is_not_counted_dead_while_it_crosses(make_broker):
    stack = make_broker(heartbeat_interval=0.1, heartbeat_liveness=3)  # silent for 0.3 s: dead
    worker = stack.worker()
    rid = stack.client.submit("text")
    assert worker.next_request().request_id == rid
    worker.sock.send_multipart(p.envelope(p.WORKER, p.Command.SENDING, rid) + [p.dumps({"bytes": -1})])
    worker.sock.send_multipart(p.sending_frames("someone-else", 10**9))  # not its request: no effect
    worker.sock.send_multipart(p.sending_frames(rid, int(40e6)))  # 40 MB at the 20 MB/s floor: 2 s more
    time.sleep(1.0)  # nothing from the worker meanwhile, as while a big reply crosses
    status = stack.status()
    assert [w["state"] for w in status["workers"]] == ["busy"] and status["counters"]["protocol_errors"] == 1
    worker.reply(rid)
    assert isinstance(stack.outcome(rid), AttributionPayload)
    assert stack.status()["counters"].get("late_replies_dropped", 0) == 0
