"""HTTP resources: POST /model/, GET /models, health, readiness.

Handlers validate, forward to the broker over ZeroMQ and encode the answer in
the format the client asked for. They never import torch or touch a model.
While a request waits, its client's socket is watched: a client that
disconnects has its requests cancelled at the broker (the worker stops at
its next chunk). ``Accept: text/event-stream`` streams progress (see sse.py).

Replies are streamed from the tensor frames as they arrived (a reply of
hundreds of MB is never joined in this process) and bounded: a request
whose reply would certainly pass ``INTGRADS_MAX_REPLY`` (or, as JSON,
``INTGRADS_MAX_JSON_TENSORS``) is refused with 413 before anything is
computed, from a lower bound of its size; the exact size is checked again
before the first byte is encoded. The texts of a batch go to the broker as
one BATCH, admitted whole or refused at once.
"""

from __future__ import annotations

from typing import Any

import falcon

from intgrads_zmq.encoding import FORMATS, EncodedBody, ReplyLimits, encode, negotiate
from intgrads_zmq.encoding.reply_size import json_too_large, min_tensor_bytes, reply_too_large
from intgrads_zmq.errors import BadRequest, IntgradsError, NotReady
from intgrads_zmq.options import TENSOR_FIELDS, ParsedRequest, parse_request
from intgrads_zmq.service.broker_client import refused_whole_batch

from . import sse
from .body import read_json_body
from .broker_pool import BrokerPool
from .disconnect import client_gone_check
from .model_limits import ModelLimits, StatusCache, limits_in_status
from .settings import FrontendSettings


class AttributionResource:
    """POST /model/ and /model/{name}/: explain one or several texts."""

    def __init__(self, pool: BrokerPool, settings: FrontendSettings, limits: ModelLimits,
                 models: StatusCache | None = None) -> None:
        self.pool = pool
        self.settings = settings
        self.limits = limits
        self.models = models

    def on_post(self, req: falcon.Request, resp: falcon.Response, name: str | None = None) -> None:
        streaming = sse.wants_event_stream(req.get_header("Accept"))
        fmt = "json" if streaming else negotiate(req.get_param("format"), req.get_header("Accept"))
        body = read_json_body(req, self.settings.max_body_bytes, self.settings.body_timeout)
        parsed = parse_request(body, self.limits.for_model(name))
        options = request_options(parsed.options, fmt)
        bounds = self.settings.reply_limits
        if self.models is not None:
            check_reply_size(parsed, options, fmt, self.models.model(name), bounds)
        max_reply = bounds.tensor_bound(fmt)
        client = self.pool.client()
        if streaming:
            self._stream(req, resp, parsed, name, options)
            return
        timeout = self.settings.timeout
        if parsed.batch:
            ids = client.submit_batch(parsed.sequences, model=name, options=options, timeout=timeout,
                                      max_reply=max_reply)
        else:
            ids = [client.submit(parsed.sequences[0], model=name, options=options, timeout=timeout,
                                 max_reply=max_reply)]
        outcomes = client.wait(ids, timeout, stop_if=client_gone_check(req.env))
        failure = first_failure([outcomes[rid] for rid in ids], parsed.batch)
        if failure is not None:
            raise failure
        payloads = [outcomes[rid] for rid in ids]
        req.context.compute_seconds = [
            p.meta.get("timings", {}).get("compute_seconds", 0.0) for p in payloads
        ]
        # Standard Server-Timing: lets a client split its wait into the model's
        # compute and everything else (queueing, transfers, encoding).
        resp.set_header("Server-Timing", f"compute;dur={1000 * sum(req.context.compute_seconds):.1f}")
        respond(resp, encode(payloads, fmt, batch=parsed.batch, limits=bounds))

    def _stream(self, req: falcon.Request, resp: falcon.Response, parsed: Any, name: str | None,
                options: dict[str, Any]) -> None:
        if parsed.batch:
            raise BadRequest("an event stream carries one text: send 'sequence', not 'sequences'",
                             field="sequences")
        client = self.pool.client()
        bounds = self.settings.reply_limits

        def submit() -> str:
            return client.submit(parsed.sequences[0], model=name, options=options,
                                 timeout=self.settings.timeout, progress=True, max_reply=bounds.tensor_bound("json"))

        resp.content_type = sse.MEDIA_TYPE
        resp.set_header("Cache-Control", "no-cache")
        resp.set_header("X-Accel-Buffering", "no")  # nginx: pass events on as they come
        resp.stream = sse.stream_attribution(client, submit, self.settings.timeout, client_gone_check(req.env),
                                             limits=bounds)


def respond(resp: falcon.Response, encoded: EncodedBody) -> None:
    """Send ``encoded`` as the response body, streamed (with its length when known)."""
    resp.content_type = encoded.media_type
    if encoded.filename:
        resp.set_header("Content-Disposition", f'attachment; filename="{encoded.filename}"')
    if encoded.length is not None:
        resp.content_length = encoded.length
    resp.stream = encoded.chunks()


def first_failure(outcomes: list[Any], batch: bool) -> IntgradsError | None:
    """The error to answer with, if any text failed: the first one that is
    not the cancellation of a sibling (which the failure itself caused),
    named ``sequences[i]`` in a batch unless it refused the whole batch."""
    failed = [(index, outcome) for index, outcome in enumerate(outcomes) if isinstance(outcome, IntgradsError)]
    if not failed:
        return None
    index, error = next(((i, e) for i, e in failed if e.code != "cancelled"), failed[0])
    if batch and not refused_whole_batch(error) and error.field in (None, "sequence"):
        error.field = f"sequences[{index}]"
    return error


def check_reply_size(parsed: ParsedRequest, options: dict[str, Any], fmt: str, model: dict[str, Any] | None,
                     bounds: ReplyLimits) -> None:
    """413 before anything is computed when the replies would certainly pass
    a bound: their size from below (each word of a text is at least one
    token; the hidden size is the model's, as its workers describe it)."""
    fields = options.get("fields") or ()
    if not fields or model is None:
        return
    description = model.get("description") or model.get("model") or {}
    defaults, limits = model.get("defaults") or {}, model.get("limits") or {}
    hidden = description.get("hidden")
    length = options.get("max_length", defaults.get("max_length"))
    caps = [c for c in (length, limits.get("max_length"), description.get("max_positions")) if _positive(c)]
    if not _positive(hidden) or not caps:
        return
    steps = options.get("n_steps", defaults.get("n_steps", 1))
    at_least = min_tensor_bytes(parsed.sequences, fields=fields, n_steps=steps, hidden=hidden,
                                max_tokens=min(caps))
    if fmt == "json" and bounds.max_json_tensors is not None and at_least > bounds.max_json_tensors:
        raise json_too_large(at_least, bounds.max_json_tensors, binary_size=None, exact=False)
    if bounds.max_reply is not None and at_least > bounds.max_reply:
        raise reply_too_large(at_least, bounds.max_reply, exact=False)


def _positive(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def request_options(options: Any, fmt: str) -> dict[str, Any]:
    """The options sent to the broker: JSON is a summary unless tensors are
    asked for; the binary formats carry all four tensors by default."""
    out = dict(options)
    if "fields" not in out:
        out["fields"] = [] if fmt == "json" else list(TENSOR_FIELDS)
    else:
        out["fields"] = list(out["fields"])
    return out


class ModelsResource:
    """GET /models: what is served, with labels, workers, defaults and limits."""

    def __init__(self, pool: BrokerPool, settings: FrontendSettings) -> None:
        self.pool = pool
        self.settings = settings

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        status = self.pool.client().status(timeout=self.settings.status_timeout)
        max_sequences = batch_limit(self.settings.limits.max_sequences, status)
        models = []
        for model_name, model in status.get("models", {}).items():
            described = model.get("model", {})
            models.append({
                "name": model_name,
                "labels": model.get("labels", []),
                "workers": model.get("workers", 0),
                "idle": model.get("idle", 0),
                "queued": model.get("queued", 0),
                "defaults": model.get("defaults", {}),
                "limits": {**model.get("limits", {}), "max_sequences": max_sequences},
                "dtype": model.get("dtype"),
                "architecture": described.get("architecture"),
                "hidden_size": described.get("hidden"),
                "max_positions": described.get("max_positions"),
            })
        resp.media = {
            "default_model": status.get("default_model"),
            "models": models,
            "formats": {name: f.media_type for name, f in FORMATS.items()},
            # What POST /model/ (the default model) accepts; each model's own are above.
            "limits": {**limits_in_status(status, None, self.settings.limits).to_dict(),
                       "max_sequences": max_sequences,
                       "max_body_bytes": self.settings.max_body_bytes,
                       "max_reply_bytes": self.settings.max_reply_bytes,
                       "max_json_tensor_bytes": self.settings.max_json_tensor_bytes,
                       "timeout_seconds": self.settings.timeout},
        }


def batch_limit(max_sequences: int, status: dict[str, Any]) -> int:
    """The most texts one request may carry: the frontend's limit, but no more
    than the broker's queue bound (a batch is queued whole, or refused)."""
    bound = status.get("queue_bound")
    return min(max_sequences, bound) if _positive(bound) else max_sequences


class HealthResource:
    """GET /healthz: this process is alive (nothing else is checked)."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"status": "ok"}


class ReadyResource:
    """GET /readyz: the broker answers and every model has a ready worker.

    When a model has none, the 503 names it, says whether the broker was told
    to expect it, and carries the reason its workers could not load it (the
    broker's ``load_error``) so an operator need not read the worker logs.
    """

    def __init__(self, pool: BrokerPool, settings: FrontendSettings) -> None:
        self.pool = pool
        self.settings = settings

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        status = self.pool.client().status(timeout=self.settings.status_timeout)
        models = status.get("models", {})
        workers = {name: m.get("workers", 0) for name, m in models.items()}
        # A model the broker was started to serve (or whose workers failed to
        # load) must have a worker; one that only remote workers served and
        # that was drained away (a finished roll-out) must not keep every
        # frontend out of its Service for good.
        missing = [_missing(name, models[name]) for name in sorted(workers)
                   if workers[name] < 1 and (models[name].get("expected") or models[name].get("load_error"))]
        if any(count > 0 for count in workers.values()) and not missing:
            resp.media = {"ready": True, "workers": workers}
            return
        if missing:
            reasons = "; ".join(_reason(m) for m in missing)
            error = NotReady(f"no worker ready for {reasons}", retry_after=1.0)
        else:
            error = NotReady("no model is served yet", retry_after=1.0)
        resp.status = falcon.code_to_http_status(error.status)
        resp.set_header("Retry-After", "1")
        resp.media = {**error.to_dict(), "missing": missing, "workers": workers}


def _missing(name: str, model: dict[str, Any]) -> dict[str, Any]:
    return {"model": name, "expected": bool(model.get("expected", False)), "load_error": model.get("load_error")}


def _reason(missing: dict[str, Any]) -> str:
    error = missing["load_error"]
    return f"{missing['model']} (load error: {error})" if error else missing["model"]
