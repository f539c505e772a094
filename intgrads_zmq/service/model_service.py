"""The broker's state for one model: its queue, its workers, what is known of it.

Like Majordomo's ``Service``: the broker keeps one :class:`ModelService` per
model name and asks it small questions (is a worker free? which requests are
past their deadline?). Nothing here sends a message or reads a clock; the
broker's loop thread is its only user.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from . import protocol as p
from .job_store import JobRecord


@dataclass(eq=False)  # compared by identity: two requests are never the same one
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
    job: JobRecord | None = None  # a job's answer goes to the job store, not to ``client``
    position: int | None = None  # last queue position reported
    group: BatchGroup | None = None  # the batch this text belongs to, if any
    index: int = 0  # its place in the batch

    @property
    def wants_progress(self) -> bool:
        return self.body.progress or self.job is not None


@dataclass(eq=False)
class BatchGroup:
    """The texts of one BATCH: admitted together; when one fails, the others
    still queued or running are cancelled (``failed`` makes that happen once)."""

    batch_id: str
    members: list[Pending] = field(default_factory=list)
    failed: bool = False
    tensor_bytes: int = 0  # relayed so far: the client's max_reply bounds the whole batch


DESCRIBING_FIELDS = ("description", "labels", "defaults", "limits", "dtype")


def differing_keys(theirs: Any, ours: Any) -> list[str]:
    """What differs between two values of a WorkerInfo field: for dicts, the
    keys both have with different values; otherwise [""] when the values differ."""
    if isinstance(theirs, dict) and isinstance(ours, dict):
        return [str(key) for key in sorted(set(theirs) & set(ours), key=str) if theirs[key] != ours[key]]
    return [""] if theirs != ours else []


@dataclass
class ModelService:
    """One model's queue and workers.

    ``expected``: the broker was started to serve this model (its workers are
    local and supervised), so a request may wait for a worker that is still
    loading. ``load_error``: why the latest attempt to start a worker for it
    failed; cleared when a worker registers. ``draining``: workers told to
    drain; they finish what they hold but never go back to ``idle``.
    """

    name: str
    expected: bool = False
    info: p.WorkerInfo | None = None
    load_error: str | None = None
    queue: deque[Pending] = field(default_factory=deque)
    workers: set[bytes] = field(default_factory=set)
    idle: deque[bytes] = field(default_factory=deque)
    draining: set[bytes] = field(default_factory=set)

    # -- workers --------------------------------------------------------------
    def add_worker(self, identity: bytes, info: p.WorkerInfo) -> list[str]:
        """Add a worker; returns [] when it was added. While the model has
        workers its description is fixed: a worker describing it otherwise is
        not added, and the names of the fields that differ are returned. (A
        worker announcing other labels or limits for a model others serve is
        either misconfigured or an impostor; either way /models must not
        change under the clients' feet.) Where workers run (device, host,
        pid) may differ, and so may keys only one side knows (a newer version
        of the package adds a limit: a rolling upgrade must not stall)."""
        others = self.workers - {identity}
        if others and self.info is not None:
            differ = [name for name in DESCRIBING_FIELDS
                      if differing_keys(getattr(info, name), getattr(self.info, name))]
            if differ:
                return differ
        else:
            self.info = info
        self.workers.add(identity)
        self.idle.append(identity)
        self.load_error = None
        return []

    def remove_worker(self, identity: bytes) -> None:
        self.workers.discard(identity)
        self.draining.discard(identity)
        if identity in self.idle:
            self.idle.remove(identity)

    def drain_worker(self, identity: bytes) -> None:
        """No new request for ``identity``, from now on."""
        if identity in self.workers:
            self.draining.add(identity)
            if identity in self.idle:
                self.idle.remove(identity)

    def worker_free(self, identity: bytes) -> None:
        if identity in self.workers and identity not in self.draining and identity not in self.idle:
            self.idle.append(identity)

    def has_workers(self) -> bool:
        """Whether a worker that takes new requests is registered (draining
        ones do not count)."""
        return len(self.workers) > len(self.draining)

    def load_failed(self, error: str) -> None:
        self.load_error = error

    def waits_for_workers(self) -> bool:
        """Whether a request with no worker to take it may queue: only for an
        expected model whose workers are starting and have not failed."""
        return self.has_workers() or (self.expected and self.load_error is None)

    # -- requests -------------------------------------------------------------
    def full(self, bound: int) -> bool:
        return len(self.queue) >= bound

    def room(self, bound: int) -> int:
        """How many requests may arrive now without the queue passing ``bound``:
        the free places in the queue plus the idle workers that take one each."""
        return max(0, bound - len(self.queue)) + len(self.idle)

    def enqueue(self, pending: Pending) -> None:
        self.queue.append(pending)

    def requeue(self, pending: Pending) -> None:
        """Back to the front: a re-dispatched request keeps its place."""
        self.queue.appendleft(pending)

    def next_assignment(self) -> tuple[bytes, Pending] | None:
        """The oldest request and the longest-idle worker, if both exist."""
        if not self.queue or not self.idle:
            return None
        return self.idle.popleft(), self.queue.popleft()

    def remove(self, pending: Pending) -> bool:
        """Take a queued request out (cancelled); False if it is not queued."""
        try:
            self.queue.remove(pending)
        except ValueError:
            return False
        return True

    def take_expired(self, now: float) -> list[Pending]:
        expired = [q for q in self.queue if q.deadline < now]
        for pending in expired:
            self.queue.remove(pending)
        return expired

    def take_all(self) -> list[Pending]:
        taken = list(self.queue)
        self.queue.clear()
        return taken

    def status(self) -> p.ModelStatus:
        info = self.info or p.WorkerInfo(self.name)
        return p.ModelStatus(
            workers=len(self.workers), idle=len(self.idle), queued=len(self.queue), draining=len(self.draining),
            labels=info.labels, defaults=info.defaults, limits=info.limits, description=info.description,
            dtype=info.dtype, expected=self.expected, load_error=self.load_error,
        )
