"""HTTP resources: POST /model/, GET /models, health, readiness.

Handlers validate, forward to the broker over ZeroMQ and encode the answer in
the format the client asked for. They never import torch or touch a model.
While a request waits, its client's socket is watched: a client that
disconnects has its requests cancelled at the broker (the worker stops at
its next chunk). ``Accept: text/event-stream`` streams progress (see sse.py).
"""

from __future__ import annotations

from typing import Any

import falcon

from intgrads_zmq.encoding import FORMATS, encode, negotiate
from intgrads_zmq.errors import BadRequest, IntgradsError, NotReady
from intgrads_zmq.options import TENSOR_FIELDS, parse_request

from . import sse
from .body import read_json_body
from .broker_pool import BrokerPool
from .disconnect import client_gone_check
from .model_limits import ModelLimits, limits_in_status
from .settings import FrontendSettings


class AttributionResource:
    """POST /model/ and /model/{name}/: explain one or several texts."""

    def __init__(self, pool: BrokerPool, settings: FrontendSettings, limits: ModelLimits) -> None:
        self.pool = pool
        self.settings = settings
        self.limits = limits

    def on_post(self, req: falcon.Request, resp: falcon.Response, name: str | None = None) -> None:
        streaming = sse.wants_event_stream(req.get_header("Accept"))
        fmt = "json" if streaming else negotiate(req.get_param("format"), req.get_header("Accept"))
        body = read_json_body(req, self.settings.max_body_bytes, self.settings.body_timeout)
        parsed = parse_request(body, self.limits.for_model(name))
        options = request_options(parsed.options, fmt)
        client = self.pool.client()
        if streaming:
            self._stream(req, resp, parsed, name, options)
            return
        ids = [
            client.submit(text, model=name, options=options, timeout=self.settings.timeout)
            for text in parsed.sequences
        ]
        outcomes = client.wait(ids, self.settings.timeout, stop_if=client_gone_check(req.env))
        payloads = []
        for index, request_id in enumerate(ids):
            outcome = outcomes[request_id]
            if isinstance(outcome, IntgradsError):
                if parsed.batch and outcome.field in (None, "sequence"):
                    outcome.field = f"sequences[{index}]"
                raise outcome
            payloads.append(outcome)
        req.context.compute_seconds = [
            p.meta.get("timings", {}).get("compute_seconds", 0.0) for p in payloads
        ]
        # Standard Server-Timing: lets a client split its wait into the model's
        # compute and everything else (queueing, transfers, encoding).
        resp.set_header("Server-Timing", f"compute;dur={1000 * sum(req.context.compute_seconds):.1f}")
        body = encode(payloads, fmt, batch=parsed.batch)
        resp.data = body.body
        resp.content_type = body.media_type
        if body.filename:
            resp.set_header("Content-Disposition", f'attachment; filename="{body.filename}"')


    def _stream(self, req: falcon.Request, resp: falcon.Response, parsed: Any, name: str | None,
                options: dict[str, Any]) -> None:
        if parsed.batch:
            raise BadRequest("an event stream carries one text: send 'sequence', not 'sequences'",
                             field="sequences")
        client = self.pool.client()

        def submit() -> str:
            return client.submit(parsed.sequences[0], model=name, options=options,
                                 timeout=self.settings.timeout, progress=True)

        resp.content_type = sse.MEDIA_TYPE
        resp.set_header("Cache-Control", "no-cache")
        resp.set_header("X-Accel-Buffering", "no")  # nginx: pass events on as they come
        resp.stream = sse.stream_attribution(client, submit, self.settings.timeout, client_gone_check(req.env))


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
                "limits": model.get("limits", {}),
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
                       "max_body_bytes": self.settings.max_body_bytes,
                       "timeout_seconds": self.settings.timeout},
        }


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
        missing = [_missing(name, models[name]) for name in sorted(workers) if workers[name] < 1]
        if workers and not missing:
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
