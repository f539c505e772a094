"""The broker's jobs: state while they run, results for a while after.

A job is a request nobody waits on: its answer is kept here until a client
fetches it (as often as it likes) or it is evicted. Results are bounded in
time (``ttl`` seconds after the job finished) and in bytes (``max_bytes``
over all kept results; each job also counts :data:`JOB_OVERHEAD` so the
bound caps the number of jobs too). Past either bound the oldest finished
jobs go first; their ids are remembered (boundedly) so a late reader gets
410 Gone rather than 404.

Everything lives in the broker's memory: a restarted broker knows no job.
Only the broker's loop thread uses a :class:`JobStore`; nothing here sends
a message.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from ..errors import IntgradsError, JobGone, JobNotFinished, UnknownJob
from . import protocol as p

JOB_OVERHEAD = 1024  # bytes counted per kept job beside its result frames
MAX_REMEMBERED_GONE = 100_000
RESTART_NOTE = ("jobs live in the broker's memory, so a job made before the broker last restarted "
                "is unknown too")


@dataclass
class JobRecord:
    """One job from submission to eviction."""

    job_id: str
    model: str
    created_at: float  # wall clock, for readers on other hosts
    state: str = "queued"
    position: int | None = None
    done: int = 0
    total: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    finished_mono: float | None = None
    command: p.Command | None = None  # REPLY or ERROR once finished
    # The answer's frames as the broker received them (zmq.Frame or bytes): a
    # reply of hundreds of MB is kept once, and sent to readers by reference.
    body: list[Any] = field(default_factory=list)
    error: dict[str, Any] | None = None

    @property
    def size(self) -> int:
        return JOB_OVERHEAD + sum(len(frame) for frame in self.body)

    def to_state(self, ttl: float) -> p.JobState:
        expires = self.finished_at + ttl if self.finished_at is not None else None
        return p.JobState(
            job_id=self.job_id, state=self.state, model=self.model, position=self.position,
            done=self.done, total=self.total, created_at=self.created_at, started_at=self.started_at,
            finished_at=self.finished_at, result_bytes=self.size - JOB_OVERHEAD if self.command else 0,
            expires_at=expires, error=self.error,
        )


class JobStore:
    """Jobs by id, with results bounded by age and bytes."""

    def __init__(self, ttl: float, max_bytes: int) -> None:
        self.ttl = ttl
        self.max_bytes = max_bytes
        self.jobs: dict[str, JobRecord] = {}
        self.finished: OrderedDict[str, None] = OrderedDict()  # oldest first
        self.gone: OrderedDict[str, str] = OrderedDict()  # evicted id -> why
        self.bytes = 0
        self.evicted = {"ttl": 0, "bytes": 0}

    def add(self, job_id: str, model: str) -> JobRecord:
        record = JobRecord(job_id, model, created_at=time.time())
        self.jobs[job_id] = record
        return record

    def forget(self, job_id: str) -> None:
        """Drop a job that was refused before it was accepted (never reported)."""
        self.jobs.pop(job_id, None)

    def get(self, job_id: str) -> JobRecord:
        """The job, or the error a reader gets: JobGone (evicted) or UnknownJob."""
        record = self.jobs.get(job_id)
        if record is not None:
            return record
        why = self.gone.get(job_id)
        if why is not None:
            raise JobGone(f"job {job_id} finished but its result was evicted ({why})")
        raise UnknownJob(f"no job {p.printable(job_id, 64)} is known to this broker; {RESTART_NOTE}")

    def result(self, job_id: str) -> JobRecord:
        """The finished job whose answer a reader wants (JobNotFinished before)."""
        record = self.get(job_id)
        if record.command is None:
            raise JobNotFinished(f"job {job_id} is {record.state}; ask again later", retry_after=1.0)
        return record

    def started(self, record: JobRecord) -> None:
        record.state, record.position = "running", None
        if record.started_at is None:
            record.started_at = time.time()

    def requeued(self, record: JobRecord) -> None:
        record.state, record.done = "queued", 0

    def finish(self, job_id: str, command: p.Command, body: list[Any], error: IntgradsError | None,
               now: float) -> None:
        """Keep a job's answer (REPLY frames, or an ERROR), then enforce the bounds."""
        record = self.jobs.get(job_id)
        if record is None or record.command is not None:
            return
        record.command, record.body = command, body
        record.finished_at, record.finished_mono, record.position = time.time(), now, None
        if error is None:
            record.state = "done"
            record.done = record.total = max(record.done, record.total)  # the last chunk ran unreported
        else:
            record.state = "cancelled" if error.code == "cancelled" else "failed"
            record.error = error.to_dict()
        self.finished[job_id] = None
        self.bytes += record.size
        self._evict_for_bytes()

    def expire(self, now: float) -> None:
        """Evict finished jobs older than the TTL (oldest first)."""
        while self.finished:
            job_id = next(iter(self.finished))
            record = self.jobs[job_id]
            if record.finished_mono is None or now - record.finished_mono <= self.ttl:
                return
            self._evict(job_id, "ttl", f"kept {self.ttl:g} s after it finished")

    def _evict_for_bytes(self) -> None:
        while self.bytes > self.max_bytes and self.finished:
            job_id = next(iter(self.finished))
            self._evict(job_id, "bytes", f"the job store holds at most {self.max_bytes} bytes")

    def _evict(self, job_id: str, bound: str, why: str) -> None:
        self.finished.pop(job_id, None)
        record = self.jobs.pop(job_id)
        self.bytes -= record.size
        self.evicted[bound] += 1
        if len(self.gone) >= MAX_REMEMBERED_GONE:
            self.gone.popitem(last=False)
        self.gone[job_id] = why

    def stats(self) -> dict[str, Any]:
        """For the broker's status and /metrics."""
        active = sum(1 for r in self.jobs.values() if r.command is None)
        return {"active": active, "finished": len(self.finished), "bytes": self.bytes,
                "max_bytes": self.max_bytes, "ttl_seconds": self.ttl,
                "evicted_ttl": self.evicted["ttl"], "evicted_bytes": self.evicted["bytes"]}
