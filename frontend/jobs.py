"""HTTP resources for jobs: requests that outlive the HTTP connection.

``POST /jobs/`` takes the body of ``POST /model/`` (one ``sequence``; a
batch is refused with 400) and answers 202 with the job's id and URLs;
``GET /jobs/{id}`` gives its state and progress, ``GET /jobs/{id}/result``
its reply in any output format, ``DELETE /jobs/{id}`` cancels it.

Nothing about a job is kept in this process: the broker's job store holds
states and results, so any frontend process or host can answer for any job.
The job id (128 random bits, made by the broker) is the only key to a job.
"""

from __future__ import annotations

import time
from typing import Any

import falcon

from intgrads_zmq.encoding import encode, negotiate
from intgrads_zmq.errors import BadRequest, UnknownJob
from intgrads_zmq.options import parse_request

from .body import read_json_body
from .broker_pool import BrokerPool
from .model_limits import ModelLimits
from .resources import request_options, respond
from .settings import FrontendSettings

JOB_ID_CHARS = frozenset("0123456789abcdef")
RESULT_WAIT = 30.0  # seconds for the broker to send a kept result


def job_links(job_id: str) -> dict[str, str]:
    return {"status_url": f"/jobs/{job_id}", "result_url": f"/jobs/{job_id}/result"}


def _checked_id(job_id: str) -> str:
    """Refuse what cannot be a job id before asking the broker."""
    if not 0 < len(job_id) <= 64 or not set(job_id) <= JOB_ID_CHARS:
        raise UnknownJob(f"{job_id[:64]!r} is not a job id (32 hexadecimal characters)")
    return job_id


def _state_body(state: dict[str, Any]) -> dict[str, Any]:
    """The broker's JobState plus links, progress with an ETA, and timings."""
    body = {**state, **job_links(state["job_id"])}
    done, total = state.get("done", 0), state.get("total", 0)
    created, started, finished = state.get("created_at"), state.get("started_at"), state.get("finished_at")
    eta = None
    if state.get("state") == "running" and done and started is not None and total >= done:
        eta = round(max(0.0, time.time() - started) * (total - done) / done, 2)
    body["progress"] = {"done": done, "total": total, "eta_seconds": eta}
    body["timings"] = {
        "queued_seconds": round(started - created, 3) if started is not None and created else None,
        "run_seconds": round(finished - started, 3) if finished is not None and started is not None else None,
    }
    return body


class JobsResource:
    """POST /jobs/: start a job (``?model=NAME`` picks a model other than the default)."""

    def __init__(self, pool: BrokerPool, settings: FrontendSettings, limits: ModelLimits) -> None:
        self.pool = pool
        self.settings = settings
        self.limits = limits

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        name = req.get_param("model") or None
        # ?format=json asks for a summary-only job; otherwise all four tensors are
        # kept, so the result can be read later in any format.
        fmt = negotiate(req.get_param("format"), None)
        body = read_json_body(req, self.settings.max_body_bytes, self.settings.body_timeout)
        parsed = parse_request(body, self.limits.for_model(name))
        if parsed.batch:
            raise BadRequest("a job holds one text: send 'sequence' (one job per text), not 'sequences'",
                             field="sequences")
        # The result may be read later in any format: bounded as a binary reply.
        state = self.pool.client().submit_job(
            parsed.sequences[0], model=name, options=request_options(parsed.options, fmt),
            timeout=self.settings.timeout, wait=self.settings.status_timeout,
            max_reply=self.settings.reply_limits.tensor_bound("torch"))
        resp.status = falcon.HTTP_202
        resp.set_header("Location", f"/jobs/{state['job_id']}")
        resp.media = _state_body(state)


class JobResource:
    """GET /jobs/{id}: state, progress, timings; DELETE /jobs/{id}: cancel."""

    def __init__(self, pool: BrokerPool, settings: FrontendSettings) -> None:
        self.pool = pool
        self.settings = settings

    def on_get(self, req: falcon.Request, resp: falcon.Response, job_id: str) -> None:
        state = self.pool.client().job_status(_checked_id(job_id), wait=self.settings.status_timeout)
        resp.media = _state_body(state)

    def on_delete(self, req: falcon.Request, resp: falcon.Response, job_id: str) -> None:
        state = self.pool.client().job_cancel(_checked_id(job_id), wait=self.settings.status_timeout)
        resp.media = _state_body(state)


class JobResultResource:
    """GET /jobs/{id}/result: the reply, in the format asked for (like /model/)."""

    def __init__(self, pool: BrokerPool, settings: FrontendSettings) -> None:
        self.pool = pool
        self.settings = settings

    def on_get(self, req: falcon.Request, resp: falcon.Response, job_id: str) -> None:
        fmt = negotiate(req.get_param("format"), req.get_header("Accept"))
        payload = self.pool.client().job_result(_checked_id(job_id), wait=RESULT_WAIT)
        respond(resp, encode([payload], fmt, batch=False, limits=self.settings.reply_limits))
