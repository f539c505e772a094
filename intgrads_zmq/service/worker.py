"""A model worker: loads one model once, then serves requests from the broker.

Two threads, each with its own sockets:

* the link thread owns the DEALER to the broker: it announces the worker
  (READY), sends heartbeats every ``heartbeat_interval`` even while a long
  request computes, re-registers when the broker says it does not know us,
  reconnects when the broker falls silent, and forwards replies;
* the main thread computes: it takes one job at a time from a queue and
  pushes the reply frames to the link thread over an inproc socket, with
  PROGRESS messages (at most every :data:`PROGRESS_EVERY` seconds) before it.

A CANCEL from the broker for the running job sets the job's ``cancelled``
event (link thread); the engine's ``before_chunk`` hook (compute thread)
raises :class:`~intgrads_zmq.errors.Cancelled` at the next chunk boundary,
which is answered as an error like any other, so the broker frees the worker.

Draining: a DRAIN from the broker, or SIGTERM (the worker then tells the
broker DRAIN itself, so nothing new is dispatched to it), makes the worker
finish the request(s) it already accepted, say goodbye (DISCONNECT) and exit
0. Exit 0 means "drained": the supervisor does not restart it. Any other end
(the link thread failing: 1, a failed load: 3, a signal) is restarted.

A worker that cannot load its model tells the broker why (LOAD_FAILED, so
requests for the model are refused at once instead of waiting for it) and
exits with :data:`~.processes.EXIT_LOAD_FAILED`.

This module imports torch only inside :func:`run_worker`, after the device
group has been made visible through ``CUDA_VISIBLE_DEVICES``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import socket as pysocket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq

from ..errors import BadRequest, Cancelled, ComputeFailed, IntgradsError
from ..models.spec import ModelSpec
from ..options import (
    AGGREGATES,
    BASELINES,
    METHODS,
    METRICS,
    TENSOR_FIELDS,
    AttributionOptions,
    Limits,
)
from . import protocol as p
from .devices import Placement
from .processes import EXIT_LOAD_FAILED, die_with_parent
from .security import CurveClient

log = logging.getLogger("intgrads.worker")
PROGRESS_EVERY = 0.25  # seconds between two PROGRESS messages of one request
BIG_REPLY_BYTES = 8 << 20  # replies from this size on are announced (SENDING) before they go
FLUSH_WAIT = 3.0  # seconds an exiting worker waits for the broker to take its last answers


@dataclass
class WorkerConfig:
    """Everything a worker process needs; crosses the spawn boundary."""

    connect: str
    model: ModelSpec = field(default_factory=ModelSpec)
    placement: Placement = field(default_factory=lambda: Placement("cpu"))
    dtype: str = "float32"
    defaults: dict[str, Any] = field(default_factory=dict)
    limits: dict[str, Any] = field(default_factory=dict)
    memory_budget: int | None = None
    identity: str | None = None
    heartbeat_interval: float = 1.0
    heartbeat_liveness: int = 3
    curve: CurveClient | None = None
    parent_pid: int | None = None

    def attribution_defaults(self) -> AttributionOptions:
        return AttributionOptions(**self.defaults)

    def attribution_limits(self) -> Limits:
        return Limits(**self.limits)

    def worker_name(self) -> str:
        """The name this worker's ZeroMQ identities start with (see
        protocol.worker_identity); unique per process unless given."""
        return self.identity or f"{pysocket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass
class Job:
    request_id: str
    body: p.RequestBody
    deadline: float
    cancelled: threading.Event = field(default_factory=threading.Event)
    cancelled_at: float | None = None  # monotonic time the CANCEL arrived

    def cancel(self) -> None:
        self.cancelled_at = time.monotonic()
        self.cancelled.set()


class BrokerLink(threading.Thread):
    """The link thread: the only user of the DEALER socket."""

    def __init__(self, config: WorkerConfig, info: p.WorkerInfo, context: zmq.Context,
                 replies_endpoint: str, draining: threading.Event | None = None) -> None:
        super().__init__(name="broker-link", daemon=True)
        self.config = config
        self.info = info
        self.context = context
        self.replies_endpoint = replies_endpoint
        self.jobs: queue.Queue[Job] = queue.Queue()
        self.stopping = threading.Event()
        self.parent_gone = threading.Event()
        self.draining = draining or threading.Event()  # set by SIGTERM or the broker's DRAIN
        self._drain_announced = False
        self._busy = False
        self._current: Job | None = None
        self._must_register = True
        self._generation = 0
        self._name = config.worker_name()
        self._replies = context.socket(zmq.PULL)
        self._replies.bind(replies_endpoint)
        self._unsent: list[Any] | None = None  # an answer the broker could not take yet

    # the thread ------------------------------------------------------------
    def run(self) -> None:
        interval = self.config.heartbeat_interval
        silence_limit = interval * self.config.heartbeat_liveness
        dealer = self._connect()
        poller = zmq.Poller()
        poller.register(self._replies, zmq.POLLIN)
        poller.register(dealer, zmq.POLLIN)
        heard = last_beat = time.monotonic()
        try:
            while not self.stopping.is_set():
                # While an answer waits for the broker, take nothing more from
                # the compute thread (its readable socket would wake us at once).
                poller.register(self._replies, zmq.POLLIN if self._unsent is None else 0)
                events = dict(poller.poll(int(interval * 500)))
                now = time.monotonic()
                if dealer in events:
                    heard = now
                    self._from_broker(dealer)
                if self._unsent is None and self._replies in events:
                    self._unsent = self._replies.recv_multipart(copy=False)
                    self._announce_big_reply(dealer, self._unsent)
                if self._unsent is not None:
                    self._forward_unsent(dealer)
                if self.draining.is_set() and not self._drain_announced:
                    self._announce_drain(dealer)
                    log.info("draining: finishing the accepted request, then exiting")
                elif self._must_register and not self._busy and not self.draining.is_set():
                    self._send_ready(dealer)
                if now - last_beat >= interval:
                    with contextlib.suppress(zmq.Again):  # no broker connected: nothing to tell
                        dealer.send_multipart(p.envelope(p.WORKER, p.Command.HEARTBEAT), zmq.NOBLOCK)
                    last_beat = now
                if now - heard > silence_limit:
                    log.warning("broker silent for %.1f s; reconnecting", now - heard)
                    poller.unregister(dealer)
                    dealer.close(linger=0)
                    dealer = self._connect()
                    poller.register(dealer, zmq.POLLIN)
                    heard = now
                if self._parent_died():
                    self.parent_gone.set()
                    break
        finally:
            self._flush_replies(dealer)
            try:
                dealer.send_multipart(p.envelope(p.WORKER, p.Command.DISCONNECT), zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
            dealer.close(linger=200)
            self._replies.close(linger=0)

    def _forward_unsent(self, dealer: zmq.Socket) -> None:
        """Send the held answer without blocking: with no broker connected a
        blocking send would stop heartbeats, reconnection and drains; the
        answer waits here instead and goes out on a later turn. A PROGRESS
        that cannot go now is dropped (the next one says more)."""
        frames = self._unsent
        assert frames is not None
        try:
            dealer.send_multipart(frames, zmq.NOBLOCK, copy=False)
        except zmq.Again:
            if frames[1].bytes == p.Command.PROGRESS.value:
                self._unsent = None
            return
        self._unsent = None
        if frames[1].bytes != p.Command.PROGRESS.value:
            self._busy, self._current = False, None

    @staticmethod
    def _announce_big_reply(dealer: zmq.Socket, frames: list[Any]) -> None:
        """Tell the broker a big REPLY follows: while it crosses, heartbeats
        queue behind it, and the broker allows its transfer time instead of
        counting this worker dead."""
        if frames[1].bytes != p.Command.REPLY.value:
            return
        size = sum(len(frame) for frame in frames[3:])
        if size >= BIG_REPLY_BYTES:
            with contextlib.suppress(zmq.Again):
                dealer.send_multipart(p.sending_frames(frames[2].bytes.decode("ascii"), size), zmq.NOBLOCK)

    def _flush_replies(self, dealer: zmq.Socket) -> None:
        """Forward answers computed just before stopping, so none is lost; a
        broker that cannot take them within FLUSH_WAIT does not hold the exit."""
        deadline = time.monotonic() + FLUSH_WAIT
        while True:
            if self._unsent is None:
                try:
                    self._unsent = self._replies.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    return
                self._announce_big_reply(dealer, self._unsent)
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not dealer.poll(int(remaining * 1000), zmq.POLLOUT):
                log.warning("the broker could not take the last answer within %.0f s; dropped it", FLUSH_WAIT)
                return
            self._forward_unsent(dealer)

    def _connect(self) -> zmq.Socket:
        self._generation += 1
        dealer = self.context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.IDENTITY, p.worker_identity(self._name, self._generation))
        dealer.setsockopt(zmq.LINGER, 0)
        if self.config.curve is not None:
            self.config.curve.apply(dealer)
        dealer.connect(self.config.connect)
        self._must_register = True
        return dealer

    def _announce_drain(self, dealer: zmq.Socket) -> None:
        """Tell the broker to send nothing new (best effort: a broker that
        misses it still learns of the drain from the goodbye)."""
        try:
            dealer.send_multipart(p.envelope(p.WORKER, p.Command.DRAIN), zmq.NOBLOCK)
        except zmq.ZMQError:
            pass
        self._drain_announced = True

    def _send_ready(self, dealer: zmq.Socket) -> None:
        """Register; never block: with no broker connected (down, or refusing this
        worker's key) a blocking send would hang this thread, and with it
        heartbeats, reconnects and a drain. Unsent, it is tried again next turn."""
        try:
            dealer.send_multipart(p.envelope(p.WORKER, p.Command.READY) + [self.info.to_json()], zmq.NOBLOCK)
        except zmq.Again:
            return
        self._must_register = False

    def _from_broker(self, dealer: zmq.Socket) -> None:
        frames = dealer.recv_multipart(copy=False)
        try:
            message = p.parse(frames, p.WORKER)
        except p.ProtocolError as exc:
            log.warning("dropped a malformed message from the broker: %s", exc)
            return
        if message.command == p.Command.DISCONNECT:
            self._must_register = True
        elif message.command == p.Command.DRAIN:
            log.info("the broker asked this worker to drain")
            self._drain_announced = True  # the broker knows already
            self.draining.set()
        elif message.command == p.Command.REQUEST:
            self._accept(dealer, message)
        elif message.command == p.Command.CANCEL:
            job = self._current
            if job is not None and job.request_id == message.request_id:
                log.info("request %s cancelled by the broker; stopping at the next chunk", job.request_id)
                job.cancel()

    def _accept(self, dealer: zmq.Socket, message: p.Message) -> None:
        request_id = message.request_id or "-"
        try:
            body = p.RequestBody.from_json(message.body[0])
        except p.ProtocolError as exc:
            dealer.send_multipart(p.error_frames(p.WORKER, request_id, ComputeFailed(f"malformed request: {exc}")))
            return
        if self._busy:
            log.error("broker sent %s while busy; refusing it", request_id)
            dealer.send_multipart(p.error_frames(p.WORKER, request_id, ComputeFailed("worker was busy")))
            return
        self._busy = True
        deadline = time.monotonic() + (body.timeout or 600.0)
        self._current = Job(request_id, body, deadline)
        self.jobs.put(self._current)

    @property
    def idle(self) -> bool:
        """No accepted request is waiting for its reply to be forwarded."""
        return not self._busy

    def _parent_died(self) -> bool:
        parent = self.config.parent_pid
        return parent is not None and os.getppid() != parent


class Computer:
    """Turns jobs into reply frames with the engine (main thread only)."""

    def __init__(self, adapter: Any, config: WorkerConfig) -> None:
        from ..engine import ChunkPlanner
        from .faults import Faults

        self.adapter = adapter
        self.config = config
        self.defaults = config.attribution_defaults()
        self.limits = config.attribution_limits()
        self.planner = ChunkPlanner.for_device(adapter.device.type, config.dtype, config.memory_budget)
        self.faults = Faults.from_env()

    def handle(self, job: Job, send: Callable[[list[Any]], None] | None = None) -> list[Any]:
        """The answer frames for ``job``; ``send`` (optional) carries PROGRESS."""
        from ..engine import attribute
        from ..engine.path import PathProgress
        from ..options import check_sequence, resolve_options

        progress = PathProgress()
        try:
            # Every limit is the worker's own to enforce (a peer on the broker's
            # frontend port may send anything the protocol admits): the text's
            # length before any tokenising, then the options.
            check_sequence(job.body.sequence, self.limits)
            options = resolve_options(job.body.options, self.defaults, self.limits)
            self._check_classes(options)
            self._check_reply_size(job, options)
            if self.faults is not None:
                self.faults.before_request(job.body.sequence, job.cancelled)
            result = attribute(
                self.adapter, job.body.sequence, options, planner=self.planner,
                dtype=self.config.dtype, deadline=job.deadline,
                before_chunk=self._chunk_hook(job, progress, send), progress=progress,
                max_kept_token_steps=self.limits.max_steps * self.limits.max_length,
            )
            # Encoded inside the try: metadata the wire refuses (a NaN from a
            # diverging model) must become an answer, not end the worker.
            return p.reply_frames(p.WORKER, job.request_id, result.meta, raw_tensors(result.tensors))
        except IntgradsError as exc:
            return p.error_frames(p.WORKER, job.request_id, exc)
        except Exception as exc:
            log.exception("request %s failed", job.request_id)
            return p.error_frames(
                p.WORKER, job.request_id, ComputeFailed(f"the model raised {type(exc).__name__}: {exc}")
            )


    def _check_classes(self, options: AttributionOptions) -> None:
        """``target: "all"`` pays a backward per class and multiplies the per-class
        tensors by the class count: refused past ``max_target_classes``."""
        classes = len(self.adapter.labels)
        if options.every_class and classes > self.limits.max_target_classes:
            raise BadRequest(
                f"'target' \"all\" would explain {classes} classes; this server explains at most "
                f"{self.limits.max_target_classes} at once: ask for one target",
                field="target",
            )

    def _check_reply_size(self, job: Job, options: AttributionOptions) -> None:
        """Refuse, before computing, a reply the client said it cannot take
        (``max_reply``): the frontend only had a lower bound of the token
        count; the tokenizer knows it. (``n_steps: "auto"`` decides its size
        while it runs: the broker checks that reply when it arrives.)"""
        if job.body.max_reply is None or options.adaptive:
            return
        from ..encoding.reply_size import reply_too_large, tensor_bytes_for

        hidden = self.adapter.size_hints()["hidden"]
        per_class_fields = set(options.fields) & {"integrated_gradients", "intermediate_gradients"}
        extra_classes = len(self.adapter.labels) - 1 if options.every_class else 0

        def size_for(tokens: int) -> int:  # the per-class tensors gain a class axis for "all"
            steps = int(options.n_steps)
            return (tensor_bytes_for(tokens, steps, hidden, options.fields)
                    + extra_classes * tensor_bytes_for(tokens, steps, hidden, per_class_fields))

        if size_for(options.max_length) <= job.body.max_reply:
            return  # fits even at the longest: no need to tokenise twice
        size = size_for(self.adapter.encode(job.body.sequence, options.max_length).length)
        if size > job.body.max_reply:
            raise reply_too_large(size, job.body.max_reply, exact=True)

    def _chunk_hook(self, job: Job, progress: Any, send: Callable[[list[Any]], None] | None
                    ) -> Callable[[int], None]:
        """Called before every chunk: stop if cancelled, report progress
        (rate-limited), then the injected faults, if any."""
        started = time.monotonic()
        last_sent = [float("-inf")]

        def before_chunk(steps: int) -> None:
            if job.cancelled.is_set():
                waited = time.monotonic() - (job.cancelled_at or time.monotonic())
                log.info("request %s stopped %.3f s after its cancel, after %d of %d steps",
                         job.request_id, waited, progress.done, progress.total)
                raise Cancelled(f"cancelled after {progress.done} of {progress.total} steps")
            now = time.monotonic()
            if send is not None and now - last_sent[0] >= PROGRESS_EVERY:
                last_sent[0] = now
                report = p.Progress("running", done=progress.done, total=progress.total, elapsed=now - started)
                send(p.progress_frames(p.WORKER, job.request_id, report))
            if self.faults is not None:
                self.faults.before_chunk(steps)

        return before_chunk


def raw_tensors(tensors: dict[str, Any]) -> dict[str, Any]:
    """Torch CPU tensors as zero-copy RawTensors for the wire."""
    from ..payload import RawTensor

    out = {}
    for name, tensor in tensors.items():
        array = tensor.detach().contiguous().numpy()
        out[name] = RawTensor(str(array.dtype), tuple(array.shape), memoryview(array).cast("B"))
    return out


def _prepare_process(config: WorkerConfig) -> None:
    """Before torch loads: device visibility, cores, and dying with the parent."""
    placement = config.placement
    if placement.device == "cuda":
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(placement.gpus)
    else:
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    if placement.threads:
        os.environ["OMP_NUM_THREADS"] = str(placement.threads)
    if placement.cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, placement.cores)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if config.parent_pid is not None:
        die_with_parent()


def load_adapter(config: WorkerConfig) -> tuple[Any, float]:
    import torch

    from ..models.loader import load_model
    from .tuning import tune_malloc

    tune_malloc()
    if config.placement.threads:
        torch.set_num_threads(config.placement.threads)
    started = time.perf_counter()
    gpus = len(config.placement.gpus)
    device = torch.device("cuda:0" if config.placement.device == "cuda" else "cpu")
    device_map = "auto" if gpus > 1 else None
    adapter = load_model(config.model, device, device_map=device_map)
    return adapter, time.perf_counter() - started


def describe_worker(config: WorkerConfig, adapter: Any, load_seconds: float) -> p.WorkerInfo:
    """The READY announcement: model, device group, capabilities, settings."""
    return p.WorkerInfo(
        model=config.model.name,
        description=adapter.describe(),
        labels=list(adapter.labels),
        defaults=config.attribution_defaults().to_dict(),
        limits=config.attribution_limits().to_dict(),
        dtype=config.dtype,
        device=config.placement.device,
        placement=config.placement.describe(),
        host=pysocket.gethostname(),
        pid=os.getpid(),
        load_seconds=round(load_seconds, 2),
        capabilities={"methods": list(METHODS), "baselines": available_baselines(adapter), "fields": list(TENSOR_FIELDS),
                      "aggregates": list(AGGREGATES), "metrics": list(METRICS)},
    )


TOKEN_BASELINES = ("pad", "unk", "period", "mask")  # need that token in the model's vocabulary


def available_baselines(adapter: Any) -> list[str]:
    """The baselines this model can use: a token-id baseline needs its token
    (a model without a mask token must not advertise ``mask``)."""
    usable = []
    for name in BASELINES:
        if name in TOKEN_BASELINES:
            try:
                adapter.special_token_id(name)
            except IntgradsError:
                continue
        usable.append(name)
    return usable


def report_load_failure(config: WorkerConfig, error: str, wait_ms: int = 2000) -> None:
    """Tell the broker this worker's model failed to load (best effort: a
    broker that cannot be reached within ``wait_ms`` learns it from the
    supervisor, or not at all for a remote worker)."""
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    try:
        dealer.setsockopt(zmq.IDENTITY, p.worker_identity(config.worker_name(), 0))
        if config.curve is not None:
            config.curve.apply(dealer)
        dealer.connect(config.connect)
        failure = p.LoadFailure(config.model.name, error)
        dealer.send_multipart(p.envelope(p.WORKER, p.Command.LOAD_FAILED) + [failure.to_json()], zmq.NOBLOCK)
    except zmq.ZMQError as exc:
        log.warning("could not report the load failure to the broker: %s", exc)
    finally:
        dealer.close(linger=wait_ms)
        context.term()


def worker_process(config: WorkerConfig) -> None:
    """Target of a spawned worker process: its exit code is run_worker's."""
    sys.exit(run_worker(config))


def run_worker(config: WorkerConfig) -> int:
    """Entry point of a worker process (spawned or run from the CLI)."""
    _prepare_process(config)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s[%(process)d] %(message)s")
    stop = threading.Event()  # drain: finish what was accepted, then exit 0
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    # A supervised worker leaves Ctrl-C to its supervisor, which stops it last.
    supervised = config.parent_pid is not None
    signal.signal(signal.SIGINT, signal.SIG_IGN if supervised else (lambda *_: stop.set()))
    try:
        adapter, load_seconds = load_adapter(config)
    except Exception as exc:  # any load failure is reported, then the process ends
        log.exception("could not load model %s", config.model.name)
        reason = exc.description if isinstance(exc, IntgradsError) else f"{type(exc).__name__}: {exc}"
        report_load_failure(config, reason)
        return EXIT_LOAD_FAILED
    computer = Computer(adapter, config)
    context = zmq.Context()
    endpoint = f"inproc://replies-{uuid.uuid4().hex}"
    link = BrokerLink(config, describe_worker(config, adapter, load_seconds), context, endpoint, draining=stop)
    replies = context.socket(zmq.PUSH)
    replies.connect(endpoint)
    link.start()
    try:
        while not link.parent_gone.is_set() and link.is_alive():
            if stop.is_set() and link.idle and link.jobs.empty():
                break  # drained: every accepted request is answered
            try:
                job = link.jobs.get(timeout=0.2)
            except queue.Empty:
                continue
            replies.send_multipart(computer.handle(job, replies.send_multipart), copy=False)
    finally:
        link.stopping.set()
        link.join(timeout=5)
        replies.close(linger=1000)
        context.term()
    if stop.is_set() or link.parent_gone.is_set():
        return 0
    log.error("the broker link thread ended unexpectedly")
    return 1
