"""The wire protocol: every frame, command and message body, in one place.

Two conversations, each over a DEALER -> ROUTER pair (the ROUTER adds the
peer's identity as the first frame on receive and consumes it on send):

Frontend (client) <-> broker, header ``CLIENT``::

    client -> broker  [CLIENT, REQUEST, request_id, RequestBody]
    client -> broker  [CLIENT, BATCH, batch_id, BatchBody]        (answered per text: "<batch_id>.<i>")
    client -> broker  [CLIENT, STATUS, request_id]
    client -> broker  [CLIENT, CANCEL, request_id]                (no answer)
    client -> broker  [CLIENT, JOB_SUBMIT, request_id, RequestBody]
    client -> broker  [CLIENT, JOB_STATUS, request_id, JobQuery]
    client -> broker  [CLIENT, JOB_RESULT, request_id, JobQuery]
    client -> broker  [CLIENT, JOB_CANCEL, request_id, JobQuery]
    broker -> client  [CLIENT, REPLY, request_id, ReplyHeader, *tensor_frames]
    broker -> client  [CLIENT, ERROR, request_id, error_json]
    broker -> client  [CLIENT, STATUS_REPLY, request_id, BrokerStatus]
    broker -> client  [CLIENT, PROGRESS, request_id, Progress]     (when RequestBody.progress)
    broker -> client  [CLIENT, JOB_STATE, request_id, JobState]

A CANCEL names one of the sender's own requests (a request id is matched
with the identity that sent it); one for an unknown or answered request is
a no-op. Jobs are named by a broker-made 128-bit random ``job_id``, which
is the only way to reach one (JobQuery).

A BATCH carries the texts of one HTTP request and is admitted whole or not
at all: text ``i`` becomes request :func:`batch_member_id` ``(batch_id, i)``
and is answered (REPLY or ERROR) under that id, as if sent alone; a batch
refused as a whole (malformed, unknown model, never or not now fitting the
queue bound) gets one ERROR under ``batch_id``, which stands for every text.
When one text fails, the broker cancels those of its siblings still queued
or running (they are answered ``cancelled``).

Worker <-> broker, header ``WORKER``::

    worker -> broker  [WORKER, READY, WorkerInfo]
    worker -> broker  [WORKER, LOAD_FAILED, LoadFailure]   (then the worker exits)
    worker -> broker  [WORKER, REPLY, request_id, ReplyHeader, *tensor_frames]
    worker -> broker  [WORKER, ERROR, request_id, error_json]
    both ways         [WORKER, HEARTBEAT]
    both ways         [WORKER, DISCONNECT]
    worker -> broker  [WORKER, PROGRESS, request_id, Progress]   (at most every PROGRESS_EVERY s)
    worker -> broker  [WORKER, SENDING, request_id, Sending]     (just before a big REPLY)
    broker -> worker  [WORKER, REQUEST, request_id, RequestBody]
    broker -> worker  [WORKER, CANCEL, request_id]   (stop at the next chunk; then answer as usual)

A big REPLY takes a while to cross (945 MB: 1.7 s over ipc on a busy
2-core host, 8 s over 1 Gbit/s), and everything the worker sends after it,
heartbeats included, arrives only once it has: without notice the broker
would count the worker dead mid-transfer and lose the reply. SENDING tells
the broker how many bytes follow, so it allows the time they take.

Each body is one JSON frame with one typed shape here (``from_json`` validates
what a peer sent, ``to_json`` encodes); ``error_json`` is
:meth:`IntgradsError.to_dict`. A :class:`ReplyHeader` describes the raw
little-endian tensor frames that follow it, in order. Headers are versioned
(``IGC1``/``IGW1``): a peer speaking another version is refused. Nothing is
ever unpickled: JSON and raw bytes only, with sizes checked before use.

A worker's ZeroMQ identity is :func:`worker_identity` (UTF-8 of its name plus
a per-connection suffix); whoever needs to recognise a worker by name (the
supervisor, the broker) matches :func:`identity_prefix`, so a name outside
ASCII is the same bytes everywhere.
"""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from .. import strict_json
from ..errors import IntgradsError
from ..payload import AttributionPayload, RawTensor

CLIENT = b"IGC1"
WORKER = b"IGW1"

MAX_JSON_BYTES = 8 << 20  # request texts and metadata; tensors travel as raw frames
MAX_REQUEST_ID_BYTES = 64
MAX_TIMEOUT_SECONDS = 1e9  # longer asked-for deadlines are clamped to this (the broker clamps further)
MAX_RETRY_AFTER = 86_400.0
MAX_MODEL_NAME = 200
MAX_NAME_BYTES = 200  # a worker's name in its identity; ZeroMQ allows 255 bytes in all
MAX_TEXT = 2000  # free text a peer reports (a load error, a placement) is cut to this
MAX_BATCH = 1024  # texts in one BATCH (the frontend allows far fewer; the queue bound decides)
MAX_REPLY_BYTES = 1 << 53  # a RequestBody's max_reply


class Command(bytes, Enum):
    """One-byte commands; the value goes on the wire as is."""

    REQUEST = b"\x01"
    REPLY = b"\x02"
    ERROR = b"\x03"
    STATUS = b"\x04"
    STATUS_REPLY = b"\x05"
    READY = b"\x06"
    HEARTBEAT = b"\x07"
    DISCONNECT = b"\x08"
    LOAD_FAILED = b"\x09"
    CANCEL = b"\x0a"
    PROGRESS = b"\x0b"
    JOB_SUBMIT = b"\x0c"
    JOB_STATUS = b"\x0d"
    JOB_RESULT = b"\x0e"
    JOB_CANCEL = b"\x0f"
    JOB_STATE = b"\x10"
    DRAIN = b"\x11"
    DRAIN_REPLY = b"\x12"
    BATCH = b"\x13"
    SENDING = b"\x14"


class ProtocolError(ValueError):
    """A message that does not follow this protocol (logged and dropped)."""


@dataclass(frozen=True)
class Message:
    """A parsed message: its command, request id (if any) and other frames."""

    command: Command
    request_id: str | None
    body: Sequence[Any]  # remaining frames (bytes or zmq.Frame)


def new_request_id() -> str:
    return uuid.uuid4().hex


def identity_prefix(name: str) -> bytes:
    """The bytes every identity of the worker called ``name`` starts with:
    UTF-8, cut (at a character boundary) to leave room for the suffix."""
    raw = name.encode("utf-8")[:MAX_NAME_BYTES].decode("utf-8", "ignore")
    return raw.encode("utf-8") + b"."


def worker_identity(name: str, generation: int) -> bytes:
    """The ZeroMQ identity of ``name``'s ``generation``-th connection."""
    return identity_prefix(name) + str(generation).encode("ascii")


def identity_text(identity: bytes, limit: int = 80) -> str:
    """A peer-chosen identity made safe for one log line or a status field."""
    return printable(identity.decode("utf-8", "replace"), limit)


def printable(text: str, limit: int = 80) -> str:
    return "".join(ch if ch.isprintable() else "?" for ch in text[:limit])


def _bytes(frame: Any) -> bytes:
    return frame.bytes if hasattr(frame, "bytes") else bytes(frame)


def _buffer(frame: Any) -> memoryview:
    return frame.buffer if hasattr(frame, "buffer") else memoryview(frame)


def dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()


def loads(frame: Any) -> Any:
    """Decode a JSON frame with a size bound; errors become ProtocolError.

    Strict (see :mod:`intgrads_zmq.strict_json`) because whatever is decoded
    here may be re-encoded later: a failure then, far from the peer that caused
    it, would stop the broker's loop. The RecursionError of absurdly nested
    arrays is a ProtocolError too.
    """
    data = _bytes(frame)
    if len(data) > MAX_JSON_BYTES:
        raise ProtocolError(f"JSON frame of {len(data)} bytes exceeds {MAX_JSON_BYTES}")
    try:
        return strict_json.loads(data)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError included
        raise ProtocolError(f"bad JSON frame: {str(exc)[:200]}") from None


def loads_object(frame: Any) -> dict[str, Any]:
    value = loads(frame)
    if not isinstance(value, dict):
        raise ProtocolError("JSON frame is not an object")
    return value


# Commands that carry a request id right after the command frame, per side.
_WITH_ID = {
    CLIENT: {Command.REQUEST, Command.STATUS, Command.REPLY, Command.ERROR, Command.STATUS_REPLY,
             Command.CANCEL, Command.PROGRESS, Command.JOB_SUBMIT, Command.JOB_STATUS, Command.JOB_RESULT,
             Command.JOB_CANCEL, Command.JOB_STATE, Command.DRAIN, Command.DRAIN_REPLY, Command.BATCH},
    WORKER: {Command.REQUEST, Command.REPLY, Command.ERROR, Command.CANCEL, Command.PROGRESS, Command.SENDING},
}
# Minimum number of body frames (after header, command and id) per command.
_MIN_BODY = {
    Command.REQUEST: 1,
    Command.REPLY: 1,
    Command.ERROR: 1,
    Command.STATUS_REPLY: 1,
    Command.READY: 1,
    Command.LOAD_FAILED: 1,
    Command.PROGRESS: 1,
    Command.JOB_SUBMIT: 1,
    Command.JOB_STATUS: 1,
    Command.JOB_RESULT: 1,
    Command.JOB_CANCEL: 1,
    Command.JOB_STATE: 1,
    Command.DRAIN_REPLY: 1,
    Command.BATCH: 1,
    Command.SENDING: 1,
}
# Per side: DRAIN carries a DrainTarget from a client; between broker and
# worker it is bare (broker -> worker: drain; worker -> broker: I am draining).
_MIN_BODY_FOR = {(CLIENT, Command.DRAIN): 1}


def parse(frames: Sequence[Any], header: bytes) -> Message:
    """Validate the envelope of a message for ``header``'s conversation."""
    if len(frames) < 2:
        raise ProtocolError("message too short")
    if _bytes(frames[0]) != header:
        raise ProtocolError(f"unexpected protocol header {_bytes(frames[0])[:8]!r}")
    try:
        command = Command(_bytes(frames[1]))
    except ValueError:
        raise ProtocolError(f"unknown command {_bytes(frames[1])[:4]!r}") from None
    rest = list(frames[2:])
    request_id = None
    if command in _WITH_ID[header]:
        if not rest:
            raise ProtocolError(f"{command.name} without a request id")
        raw_id = _bytes(rest.pop(0))
        if not raw_id or len(raw_id) > MAX_REQUEST_ID_BYTES:
            raise ProtocolError("bad request id")
        try:
            request_id = raw_id.decode("ascii")
        except UnicodeDecodeError:
            raise ProtocolError("request id is not ASCII") from None
    if len(rest) < _MIN_BODY_FOR.get((header, command), _MIN_BODY.get(command, 0)):
        raise ProtocolError(f"{command.name} is missing frames")
    return Message(command, request_id, rest)


def envelope(header: bytes, command: Command, request_id: str | None = None) -> list[bytes]:
    frames = [header, command.value]
    if request_id is not None:
        frames.append(request_id.encode("ascii"))
    return frames


# -- field checks shared by the bodies ------------------------------------
def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _model_name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_MODEL_NAME:
        raise ProtocolError(f"{what} needs a model name of 1 to {MAX_MODEL_NAME} characters")
    return value


def _flat(value: Any) -> bool:
    """Scalars or lists of scalars: anything nested is refused, so that
    re-encoding a peer's values can never recurse deeply."""
    if isinstance(value, list):
        return not any(isinstance(item, list | dict) for item in value)
    return not isinstance(value, dict)


def _flat_dict(value: Any) -> dict[str, Any]:
    """The flat entries of ``value`` (an empty dict if it is not an object)."""
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if _flat(v)}


def _text(value: Any) -> str | None:
    return printable(value, MAX_TEXT) if isinstance(value, str) else None


# -- requests -------------------------------------------------------------
@dataclass(frozen=True)
class RequestBody:
    """A validated request: which model, which text, which options, how long.

    ``max_reply``: the most bytes of tensor data the client will take (the
    frontend's reply bounds). A worker may refuse a request whose reply would
    be larger before computing it; the broker refuses to relay a larger reply
    (413 either way). Sent only when set, so older peers see the same bytes.
    """

    model: str | None
    sequence: str
    options: dict[str, Any]
    timeout: float | None
    progress: bool = False  # the client wants PROGRESS messages (queue position, steps done)
    max_reply: int | None = None

    def to_json(self) -> bytes:
        body = {"model": self.model, "sequence": self.sequence, "options": self.options, "timeout": self.timeout}
        if self.progress:
            body["progress"] = True
        if self.max_reply is not None:
            body["max_reply"] = self.max_reply
        return dumps(body)

    @classmethod
    def from_json(cls, frame: Any) -> RequestBody:
        body = loads_object(frame)
        model, sequence = body.get("model"), body.get("sequence")
        options, timeout = body.get("options", {}), body.get("timeout")
        if model is not None:
            _model_name(model, "'model'")
        if not isinstance(sequence, str):
            raise ProtocolError("'sequence' must be a string")
        if not isinstance(options, dict):
            raise ProtocolError("'options' must be an object")
        if not all(_flat(value) for value in options.values()):
            raise ProtocolError("'options' values must be scalars or lists of scalars")
        if timeout is not None and (not _is_number(timeout) or not timeout > 0):
            raise ProtocolError("'timeout' must be a positive number")
        if timeout is not None:  # min() first: float() of a 400-digit int raises OverflowError
            timeout = float(min(timeout, MAX_TIMEOUT_SECONDS))
        progress = body.get("progress", False)
        if not isinstance(progress, bool):
            raise ProtocolError("'progress' must be true or false")
        return cls(model, sequence, options, timeout, progress, _max_reply(body.get("max_reply")))


def _max_reply(value: Any) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_REPLY_BYTES:
        raise ProtocolError(f"'max_reply' must be a whole number of bytes from 0 to {MAX_REPLY_BYTES}")
    return value


@dataclass(frozen=True)
class BatchBody:
    """BATCH: several texts with the same options, admitted whole or not at all.

    Text ``i`` is answered as the request ``batch_member_id(batch_id, i)``;
    :meth:`member` is the RequestBody it stands for.
    """

    model: str | None
    sequences: tuple[str, ...]
    options: dict[str, Any]
    timeout: float | None
    max_reply: int | None = None

    def to_json(self) -> bytes:
        body = {"model": self.model, "sequences": list(self.sequences), "options": self.options,
                "timeout": self.timeout}
        if self.max_reply is not None:
            body["max_reply"] = self.max_reply
        return dumps(body)

    def member(self, index: int) -> RequestBody:
        return RequestBody(self.model, self.sequences[index], self.options, self.timeout, False, self.max_reply)

    @classmethod
    def from_json(cls, frame: Any) -> BatchBody:
        body = loads_object(frame)
        sequences = body.get("sequences")
        if not isinstance(sequences, list) or not 0 < len(sequences) <= MAX_BATCH:
            raise ProtocolError(f"'sequences' must be a list of 1 to {MAX_BATCH} texts")
        if not all(isinstance(text, str) for text in sequences):
            raise ProtocolError("'sequences' must hold strings")
        # The shared fields are checked exactly as a single request's are.
        single = RequestBody.from_json(dumps({**{k: v for k, v in body.items() if k != "sequences"},
                                              "sequence": ""}))
        if single.progress:
            raise ProtocolError("a batch carries no progress; send its texts one by one for that")
        return cls(single.model, tuple(sequences), single.options, single.timeout, single.max_reply)


def batch_member_id(batch_id: str, index: int) -> str:
    """The request id under which text ``index`` of batch ``batch_id`` is answered."""
    return f"{batch_id}.{index}"


def batch_frames(batch_id: str, body: BatchBody) -> list[bytes]:
    if len(batch_member_id(batch_id, len(body.sequences) - 1)) > MAX_REQUEST_ID_BYTES:
        raise ValueError("batch id too long for its members' ids")
    return envelope(CLIENT, Command.BATCH, batch_id) + [body.to_json()]


def request_frames(header: bytes, request_id: str, body: RequestBody) -> list[bytes]:
    return envelope(header, Command.REQUEST, request_id) + [body.to_json()]


# -- progress and jobs ----------------------------------------------------
PROGRESS_STATES = ("queued", "running")
JOB_STATES = ("queued", "running", "done", "failed", "cancelled")
MAX_STEPS_REPORTED = 1 << 40
JOB_ID_BYTES = 16  # 128 random bits, hex-encoded: 32 characters


def new_job_id() -> str:
    """An unguessable job id: the id is the only key to a job and its result."""
    return secrets.token_hex(JOB_ID_BYTES)


def _count(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_STEPS_REPORTED:
        raise ProtocolError(f"'{what}' must be a whole number from 0 to {MAX_STEPS_REPORTED}")
    return value


def _seconds(value: Any, what: str) -> float:
    if not _is_number(value) or not 0 <= value <= MAX_TIMEOUT_SECONDS:
        raise ProtocolError(f"'{what}' must be a number of seconds")
    return float(value)


@dataclass(frozen=True)
class Progress:
    """PROGRESS: where a request is. ``queued``: ``position`` requests are
    ahead of it (0: next). ``running``: ``done`` of ``total`` path steps were
    paid ``elapsed`` seconds into the computation (``total`` may grow between
    the rounds of an adaptive integration)."""

    state: str
    position: int | None = None
    done: int = 0
    total: int = 0
    elapsed: float = 0.0

    def to_json(self) -> bytes:
        return dumps(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        return {"state": self.state, "position": self.position, "done": self.done, "total": self.total,
                "elapsed": round(self.elapsed, 3)}

    @classmethod
    def from_json(cls, frame: Any) -> Progress:
        data = loads_object(frame)
        state, position = data.get("state"), data.get("position")
        if state not in PROGRESS_STATES:
            raise ProtocolError(f"progress 'state' must be one of {', '.join(PROGRESS_STATES)}")
        return cls(state, None if position is None else _count(position, "position"),
                   _count(data.get("done", 0), "done"), _count(data.get("total", 0), "total"),
                   _seconds(data.get("elapsed", 0.0), "elapsed"))


def progress_frames(header: bytes, request_id: str, progress: Progress) -> list[bytes]:
    return envelope(header, Command.PROGRESS, request_id) + [progress.to_json()]


@dataclass(frozen=True)
class Sending:
    """SENDING: the REPLY that follows carries ``bytes`` bytes (all its frames)."""

    bytes: int

    def to_json(self) -> bytes:
        return dumps({"bytes": self.bytes})

    @classmethod
    def from_json(cls, frame: Any) -> Sending:
        size = loads_object(frame).get("bytes")
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_REPLY_BYTES:
            raise ProtocolError(f"'bytes' must be a whole number from 0 to {MAX_REPLY_BYTES}")
        return cls(size)


def sending_frames(request_id: str, size: int) -> list[bytes]:
    """What a worker sends just before a REPLY of ``size`` bytes."""
    return envelope(WORKER, Command.SENDING, request_id) + [Sending(size).to_json()]


@dataclass(frozen=True)
class JobQuery:
    """Which job a JOB_STATUS / JOB_RESULT / JOB_CANCEL is about."""

    job_id: str

    def to_json(self) -> bytes:
        return dumps({"job_id": self.job_id})

    @classmethod
    def from_json(cls, frame: Any) -> JobQuery:
        job_id = loads_object(frame).get("job_id")
        if not isinstance(job_id, str) or not 0 < len(job_id) <= MAX_REQUEST_ID_BYTES or not job_id.isascii():
            raise ProtocolError("'job_id' must be 1 to 64 ASCII characters")
        return cls(job_id)


@dataclass(frozen=True)
class DrainTarget:
    """What a DRAIN from a client drains: every worker of ``model``, or the
    one ``worker`` (its identity as the status shows it). Exactly one is set."""

    model: str | None = None
    worker: str | None = None

    def to_json(self) -> bytes:
        return dumps({"model": self.model} if self.model is not None else {"worker": self.worker})

    @classmethod
    def from_json(cls, frame: Any) -> DrainTarget:
        data = loads_object(frame)
        model, worker = data.get("model"), data.get("worker")
        if (model is None) == (worker is None):
            raise ProtocolError("a drain names exactly one of 'model' and 'worker'")
        if model is not None:
            return cls(model=_model_name(model, "model"))
        if not isinstance(worker, str) or not 0 < len(worker.encode("utf-8")) <= MAX_NAME_BYTES + 16:
            raise ProtocolError("'worker' must be a worker identity of 1 to 216 bytes")
        return cls(worker=worker)


@dataclass(frozen=True)
class DrainReply:
    """DRAIN_REPLY: the workers told to drain (identities as in the status)."""

    workers: list[str]

    def to_json(self) -> bytes:
        return dumps({"workers": self.workers, "count": len(self.workers)})

    @classmethod
    def from_json(cls, frame: Any) -> DrainReply:
        workers = loads_object(frame).get("workers")
        if not isinstance(workers, list) or not all(isinstance(w, str) for w in workers):
            raise ProtocolError("'workers' must be a list of strings")
        return cls(list(workers))

    def to_dict(self) -> dict[str, Any]:
        return {"workers": list(self.workers), "count": len(self.workers)}


def drain_frames(request_id: str, target: DrainTarget) -> list[bytes]:
    return envelope(CLIENT, Command.DRAIN, request_id) + [target.to_json()]


@dataclass(frozen=True)
class JobState:
    """JOB_STATE: a job as the broker's job store sees it (GET /jobs/{id}).

    Times are wall-clock Unix seconds (the broker's clock), so frontends on
    other hosts can show them; ``error`` is the failed or cancelled job's
    ``IntgradsError.to_dict()``.
    """

    job_id: str
    state: str
    model: str
    position: int | None = None
    done: int = 0
    total: int = 0
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    result_bytes: int = 0
    expires_at: float | None = None
    error: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def to_json(self) -> bytes:
        return dumps(self.to_dict())

    @classmethod
    def from_json(cls, frame: Any) -> JobState:
        data = loads_object(frame)
        state, error = data.get("state"), data.get("error")
        if state not in JOB_STATES:
            raise ProtocolError(f"job 'state' must be one of {', '.join(JOB_STATES)}")
        position = data.get("position")
        return cls(
            job_id=JobQuery.from_json(dumps({"job_id": data.get("job_id")})).job_id,
            state=state, model=_model_name(data.get("model"), "JOB_STATE"),
            position=None if position is None else _count(position, "position"),
            done=_count(data.get("done", 0), "done"), total=_count(data.get("total", 0), "total"),
            created_at=_wall_time(data.get("created_at"), "created_at") or 0.0,
            started_at=_wall_time(data.get("started_at"), "started_at"),
            finished_at=_wall_time(data.get("finished_at"), "finished_at"),
            result_bytes=_count(data.get("result_bytes", 0), "result_bytes"),
            expires_at=_wall_time(data.get("expires_at"), "expires_at"),
            error=_flat_dict(error) if isinstance(error, dict) else None,
        )


def _wall_time(value: Any, what: str) -> float | None:
    if value is None:
        return None
    if not _is_number(value) or not 0 <= value < 1e11:
        raise ProtocolError(f"'{what}' must be a Unix time")
    return float(value)


def job_frames(header: bytes, command: Command, request_id: str, job_id: str) -> list[bytes]:
    return envelope(header, command, request_id) + [JobQuery(job_id).to_json()]


# -- a worker describing itself --------------------------------------------
@dataclass(frozen=True)
class WorkerInfo:
    """READY: which model a worker serves, with what, and with which settings.

    Only ``model`` decides anything (where requests go); the rest describes the
    worker for status pages. A peer's description is therefore taken leniently:
    a field of the wrong type becomes empty, never a crash. ``limits`` and
    ``defaults`` are the request bounds and defaults the worker enforces
    (keys of :class:`intgrads_zmq.options.Limits` and ``AttributionOptions``).
    """

    model: str
    description: dict[str, Any] = field(default_factory=dict)  # the adapter's describe()
    labels: list[str] = field(default_factory=list)
    defaults: dict[str, Any] = field(default_factory=dict)
    limits: dict[str, Any] = field(default_factory=dict)
    dtype: str | None = None
    device: str | None = None
    placement: str | None = None
    host: str | None = None
    pid: int | None = None
    load_seconds: float = 0.0
    capabilities: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return dumps(self.__dict__)

    @classmethod
    def from_json(cls, frame: Any) -> WorkerInfo:
        data = loads_object(frame)
        pid, seconds, labels = data.get("pid"), data.get("load_seconds"), data.get("labels")
        return cls(
            model=_model_name(data.get("model"), "READY"),
            description=_flat_dict(data.get("description")),
            labels=[printable(x) for x in labels if isinstance(x, str)] if isinstance(labels, list) else [],
            defaults=_flat_dict(data.get("defaults")),
            limits=_flat_dict(data.get("limits")),
            dtype=_text(data.get("dtype")),
            device=_text(data.get("device")),
            placement=_text(data.get("placement")),
            host=_text(data.get("host")),
            pid=pid if isinstance(pid, int) and not isinstance(pid, bool) and 0 < pid < 1 << 32 else None,
            load_seconds=float(seconds) if _is_number(seconds) and 0 <= seconds < 1e9 else 0.0,
            capabilities=_flat_dict(data.get("capabilities")),
        )


@dataclass(frozen=True)
class LoadFailure:
    """LOAD_FAILED: the worker could not load its model and is exiting."""

    model: str
    error: str

    def to_json(self) -> bytes:
        return dumps({"model": self.model, "error": self.error[:MAX_TEXT]})

    @classmethod
    def from_json(cls, frame: Any) -> LoadFailure:
        data = loads_object(frame)
        error = _text(data.get("error"))
        if not error:
            raise ProtocolError("LOAD_FAILED needs an 'error' string")
        return cls(_model_name(data.get("model"), "LOAD_FAILED"), error)


# -- replies with tensors -------------------------------------------------
@dataclass(frozen=True)
class TensorSpec:
    """How to read one raw tensor frame."""

    name: str
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ReplyHeader:
    """The first frame of a REPLY: metadata, then one spec per tensor frame."""

    meta: dict[str, Any]
    tensors: tuple[TensorSpec, ...]

    def to_json(self) -> bytes:
        return dumps({"meta": self.meta, "tensors": [
            {"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in self.tensors]})

    @classmethod
    def from_json(cls, frame: Any) -> ReplyHeader:
        head = loads_object(frame)
        meta, tensors = head.get("meta"), head.get("tensors")
        if not isinstance(meta, dict) or not isinstance(tensors, list):
            raise ProtocolError("reply header needs 'meta' and 'tensors'")
        specs = []
        for item in tensors:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise ProtocolError("bad tensor description")
            shape = item.get("shape")
            if not isinstance(shape, list) or not all(isinstance(n, int) for n in shape):
                raise ProtocolError("bad tensor shape")
            specs.append(TensorSpec(item["name"], str(item.get("dtype")), tuple(shape)))
        return cls(meta, tuple(specs))


def reply_frames(
    header: bytes, request_id: str, meta: dict[str, Any], tensors: dict[str, RawTensor]
) -> list[Any]:
    """[header, REPLY, id, ReplyHeader, *raw tensor buffers] (buffers not copied)."""
    head = ReplyHeader(meta, tuple(TensorSpec(name, t.dtype, tuple(t.shape)) for name, t in tensors.items()))
    return envelope(header, Command.REPLY, request_id) + [head.to_json(), *(t.data for t in tensors.values())]


def parse_reply(body: Sequence[Any]) -> AttributionPayload:
    """Rebuild a payload from a REPLY's frames, checking every size."""
    head = ReplyHeader.from_json(body[0])
    frames = body[1:]
    if len(frames) != len(head.tensors):
        raise ProtocolError(f"reply describes {len(head.tensors)} tensors but has {len(frames)} frames")
    tensors: dict[str, RawTensor] = {}
    for spec, frame in zip(head.tensors, frames, strict=True):
        try:
            tensors[spec.name] = RawTensor(spec.dtype, spec.shape, _buffer(frame))
        except ValueError as exc:
            raise ProtocolError(f"tensor {spec.name!r}: {exc}") from None
    return AttributionPayload(meta=head.meta, tensors=tensors)


# -- errors ---------------------------------------------------------------
def error_frames(header: bytes, request_id: str, error: IntgradsError) -> list[bytes]:
    return envelope(header, Command.ERROR, request_id) + [dumps(error.to_dict())]


def parse_error_strict(body: Sequence[Any]) -> IntgradsError:
    """An ERROR's typed error; ProtocolError if it is not a JSON object.

    A ``retry_after`` that is not a number of seconds in [0, a day] is dropped:
    it becomes a Retry-After header, and ``float()`` of a huge integer raises.
    """
    data = loads_object(body[0])
    retry = data.get("retry_after")
    if not _is_number(retry) or not 0 <= retry <= MAX_RETRY_AFTER:
        data.pop("retry_after", None)
    return IntgradsError.from_dict(data)


def parse_error(body: Sequence[Any]) -> IntgradsError:
    try:
        return parse_error_strict(body)
    except ProtocolError:
        return IntgradsError("malformed error reply")


# -- status -----------------------------------------------------------------
@dataclass(frozen=True)
class ModelStatus:
    """One model as the broker sees it (``status["models"][name]``).

    ``expected``: the broker was started to serve it (its workers are local).
    ``load_error``: why it has no worker, when a worker failed to load it.
    ``model`` in the JSON repeats ``description`` for frontends written
    before the rename (to be dropped once none reads it).
    """

    workers: int
    idle: int
    queued: int
    labels: list[str]
    defaults: dict[str, Any]
    limits: dict[str, Any]
    description: dict[str, Any]
    dtype: str | None
    expected: bool
    load_error: str | None
    draining: int = 0  # of ``workers``, told to drain: they take no new request

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "model": self.description}


@dataclass(frozen=True)
class WorkerStatus:
    """One registered worker (``status["workers"][i]``)."""

    identity: str
    model: str
    state: str  # "idle", "busy" or "draining" (finishing its request, then leaving)
    device: str | None
    placement: str | None
    host: str | None
    pid: int | None
    served: int
    up_seconds: float


@dataclass(frozen=True)
class BrokerStatus:
    """STATUS_REPLY: models, workers, counters (for /models, /readyz, /metrics)."""

    default_model: str | None
    models: dict[str, ModelStatus]
    workers: list[WorkerStatus]
    counters: dict[str, int]
    stopping: bool
    jobs: dict[str, Any] = field(default_factory=dict)  # JobStore.stats(): stored, bytes, bounds
    # Requests that may wait per model (--queue-bound): also the most texts one BATCH may hold.
    queue_bound: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "default_model": self.default_model,
            "models": {name: m.to_dict() for name, m in self.models.items()},
            "workers": [dict(w.__dict__) for w in self.workers],
            "counters": dict(self.counters),
            "stopping": self.stopping,
            "jobs": dict(self.jobs),
            "queue_bound": self.queue_bound,
        }

    def to_json(self) -> bytes:
        return dumps(self.to_dict())

    @staticmethod
    def dict_from_json(frame: Any) -> dict[str, Any]:
        """The status as plain data, checked for the shape readers rely on."""
        data = loads_object(frame)
        models, workers = data.get("models"), data.get("workers")
        if not isinstance(models, dict) or not all(isinstance(m, dict) for m in models.values()):
            raise ProtocolError("status needs 'models', an object of objects")
        if not isinstance(workers, list) or not all(isinstance(w, dict) for w in workers):
            raise ProtocolError("status needs 'workers', a list of objects")
        if not isinstance(data.get("counters"), dict):
            raise ProtocolError("status needs 'counters', an object")
        return data
