"""Typed errors that cross process boundaries as plain data.

Every failure a client can see is one of these classes. Each carries a stable
``code`` (what travels on the wire), the HTTP ``status`` the frontend answers
with, and a human ``title``; the instance adds a ``description`` and, for
validation errors, the ``field`` at fault. Nothing here imports torch or zmq,
so the frontend, the broker and the workers all share it.
"""

from __future__ import annotations

from typing import Any, ClassVar


class IntgradsError(Exception):
    """Base of every error that is reported to a client."""

    code: ClassVar[str] = "internal_error"
    status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal error"
    _registry: ClassVar[dict[str, type[IntgradsError]]] = {}

    def __init__(
        self,
        description: str,
        *,
        field: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(description)
        self.description = description
        self.field = field
        self.retry_after = retry_after

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        IntgradsError._registry[cls.code] = cls

    def to_dict(self) -> dict[str, Any]:
        """The JSON body a client receives (and the broker forwards)."""
        body: dict[str, Any] = {
            "code": self.code,
            "title": self.title,
            "description": self.description,
        }
        if self.field is not None:
            body["field"] = self.field
        if self.retry_after is not None:
            body["retry_after"] = self.retry_after
        return body

    @classmethod
    def from_dict(cls, data: Any) -> IntgradsError:
        """Rebuild the typed error from wire data; unknown codes become 500s."""
        if not isinstance(data, dict):
            return IntgradsError("malformed error from a peer")
        kind = cls._registry.get(str(data.get("code")), IntgradsError)
        retry = data.get("retry_after")
        return kind(
            str(data.get("description", "")),
            field=data.get("field") if isinstance(data.get("field"), str) else None,
            retry_after=float(retry) if isinstance(retry, (int, float)) else None,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.description!r})"


IntgradsError._registry[IntgradsError.code] = IntgradsError


class BadRequest(IntgradsError):
    """The request is malformed or names an invalid option."""

    code = "bad_request"
    status = 400
    title = "Bad request"


class UnknownModel(IntgradsError):
    """The request names a model that no worker serves."""

    code = "unknown_model"
    status = 404
    title = "Unknown model"


class PayloadTooLarge(IntgradsError):
    """The HTTP body exceeds the configured limit."""

    code = "payload_too_large"
    status = 413
    title = "Payload too large"


class BodyTimeout(IntgradsError):
    """The request body did not arrive within INTGRADS_BODY_TIMEOUT seconds
    (the frontend's alone: brokers and workers never send it)."""

    code = "body_timeout"
    status = 408
    title = "Request timeout"


class QueueFull(IntgradsError):
    """The model's queue is at its bound; try again shortly."""

    code = "overloaded"
    status = 503
    title = "Server overloaded"


class NoWorkers(IntgradsError):
    """No worker for the model is alive right now."""

    code = "no_workers"
    status = 503
    title = "No worker available"


class BrokerUnavailable(IntgradsError):
    """The frontend cannot reach the broker."""

    code = "broker_unavailable"
    status = 503
    title = "Broker unavailable"


class NotReady(IntgradsError):
    """A model has no ready worker yet (readiness probe)."""

    code = "not_ready"
    status = 503
    title = "Not ready"


class ShuttingDown(IntgradsError):
    """The broker is stopping and takes no new requests."""

    code = "shutting_down"
    status = 503
    title = "Shutting down"


class DeadlineExceeded(IntgradsError):
    """The request's deadline passed before an answer was ready."""

    code = "deadline_exceeded"
    status = 504
    title = "Deadline exceeded"


class WorkerDied(IntgradsError):
    """The request's worker died twice; it is likely a poison request."""

    code = "worker_died"
    status = 500
    title = "Worker died"


class ComputeFailed(IntgradsError):
    """The model raised while computing the attributions."""

    code = "compute_failed"
    status = 500
    title = "Computation failed"


class OutOfMemory(IntgradsError):
    """Even the smallest chunk of steps did not fit in memory."""

    code = "out_of_memory"
    status = 507
    title = "Out of memory"


class ModelLoadError(IntgradsError):
    """A model or checkpoint could not be loaded (start-up time only)."""

    code = "model_load_error"
    status = 500
    title = "Model could not be loaded"



class Cancelled(IntgradsError):
    """The request was cancelled: its client went away, asked to cancel
    (DELETE /jobs/{id}), or its deadline passed while it ran. 499 is the
    conventional "client closed request" status (nginx); a client that is
    gone never sees it, a job's result answers with it."""

    code = "cancelled"
    status = 499
    title = "Cancelled"


class UnknownJob(IntgradsError):
    """No job with this id is known to the broker (never made, or made before
    the broker last restarted: jobs live in its memory)."""

    code = "unknown_job"
    status = 404
    title = "Unknown job"


class JobGone(IntgradsError):
    """The job finished, but its result was evicted (older than the job TTL,
    or the job store was over its byte bound)."""

    code = "job_gone"
    status = 410
    title = "Job result gone"


class JobNotFinished(IntgradsError):
    """The job's result was asked for before the job finished."""

    code = "job_not_finished"
    status = 409
    title = "Job not finished"


class UnknownWorker(IntgradsError):
    """A drain names a worker the broker does not have (not registered, or gone)."""

    code = "unknown_worker"
    status = 404
    title = "Unknown worker"
