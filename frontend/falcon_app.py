"""The Falcon application: routes, error mapping, metrics, static page.

Errors are data: every failure is an :class:`IntgradsError` (or one of
Falcon's own HTTP errors) and leaves as JSON ``{"title", "description", ...}``
with its one status code; 503s carry ``Retry-After``. Unexpected exceptions
are logged here and answered with a plain 500, never a traceback.
"""

from __future__ import annotations

import logging
import math
from http import HTTPStatus
from pathlib import Path
from typing import Any

import falcon

from intgrads_zmq.errors import IntgradsError
from intgrads_zmq.options import Limits

from .broker_pool import BrokerPool
from .host_check import RequireHost
from .jobs import JobResource, JobResultResource, JobsResource
from .metrics import Metrics
from .model_limits import ModelLimits, StatusCache
from .openapi import openapi_document
from .resources import (
    AttributionResource,
    HealthResource,
    ModelsResource,
    ReadyResource,
)
from .settings import FrontendSettings

log = logging.getLogger("intgrads.frontend")
STATIC = Path(__file__).parent / "static"


# Statuses outside the standard list, with the reason phrase they are known by.
EXTRA_STATUS_LINES = {499: "499 Client Closed Request"}


def _intgrads_error(req: falcon.Request, resp: falcon.Response, exc: IntgradsError, params: Any) -> None:
    resp.status = EXTRA_STATUS_LINES.get(exc.status) or falcon.code_to_http_status(exc.status)
    resp.media = exc.to_dict()
    if exc.retry_after is not None:
        resp.set_header("Retry-After", str(max(1, math.ceil(exc.retry_after))))


def _unexpected(req: falcon.Request, resp: falcon.Response, exc: Exception, params: Any) -> None:
    if isinstance(exc, falcon.HTTPError):  # Falcon's own 404/405/...: keep, as JSON
        _http_error(req, resp, exc, params)
        return
    log.exception("unexpected error on %s %s", req.method, req.path)
    resp.status = falcon.HTTP_500
    resp.media = {"code": "internal_error", "title": "Internal error",
                  "description": "an unexpected error occurred; the server log has the details"}


def _http_error(req: falcon.Request, resp: falcon.Response, exc: falcon.HTTPError, params: Any) -> None:
    resp.status = exc.status
    code = _code(exc.status_code)
    body = {"code": code, "title": exc.title,
            "description": exc.description or _describe(req, exc)}
    resp.media = body
    for name, value in (exc.headers or {}).items():
        resp.set_header(name, value)


def _code(status: int) -> str:
    """``not_found`` for 404: from the status code, not Falcon's title, which is
    not always "NNN Reason" (an unknown method's is "Bad request")."""
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "http_error"


def _describe(req: falcon.Request, exc: falcon.HTTPError) -> str:
    if exc.status_code == 404:
        return f"no resource at {req.path}; try POST /model/ or GET /models"
    if exc.status_code == 405:
        return f"{req.method} is not allowed on {req.path}"
    return exc.title


class StaticPage:
    """GET /: the web page (no build step, no CDN)."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = falcon.MEDIA_HTML
        resp.data = (STATIC / "index.html").read_bytes()


class RevalidatePage:
    """Middleware: the page and its scripts are revalidated on every load, so
    a browser never runs an old app.js against a newer API after an upgrade."""

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource: Any,
                         req_succeeded: bool) -> None:
        if req.path == "/" or req.path.startswith("/static/"):
            resp.set_header("Cache-Control", "no-cache")


class OpenAPIResource:
    """GET /openapi.json, with the bounds the default model's workers enforce."""

    def __init__(self, limits: ModelLimits) -> None:
        self.limits = limits
        self._documents: dict[Limits, dict[str, Any]] = {}

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        limits = self.limits.for_model(None)
        if limits not in self._documents:
            self._documents[limits] = openapi_document(limits)
        resp.media = self._documents[limits]


def create_app(settings: FrontendSettings | None = None, pool: BrokerPool | None = None) -> falcon.App:
    """Build the app; broker sockets are opened lazily, per thread, after fork.

    ``pool`` hands each thread its broker client; tests pass an in-process one
    (anything with ``client()`` returning an object with submit/wait/status).
    """
    settings = settings or FrontendSettings.from_env()
    pool = pool or BrokerPool(settings.broker, settings.connect_wait, curve=settings.curve)

    def status() -> dict[str, Any]:
        return pool.client().status(timeout=settings.status_timeout)

    # One cached status per process: the limits requests are checked against,
    # and the model sizes that bound their replies before anything is computed.
    cached = StatusCache(status)
    limits = ModelLimits(cached, settings.limits)
    metrics = Metrics(status)
    # RequireHost first: a request without a valid Host is refused before anything runs.
    app = falcon.App(middleware=[RequireHost(), metrics, RevalidatePage()])
    app.req_options.strip_url_path_trailing_slash = False
    attribution = AttributionResource(pool, settings, limits, cached)
    for route in ("/model", "/model/"):
        app.add_route(route, attribution)
    for route in ("/model/{name}", "/model/{name}/"):
        app.add_route(route, attribution)
    jobs = JobsResource(pool, settings, limits)
    for route in ("/jobs", "/jobs/"):
        app.add_route(route, jobs)
    app.add_route("/jobs/{job_id}", JobResource(pool, settings))
    app.add_route("/jobs/{job_id}/result", JobResultResource(pool, settings))
    app.add_route("/models", ModelsResource(pool, settings))
    app.add_route("/healthz", HealthResource())
    app.add_route("/readyz", ReadyResource(pool, settings))
    app.add_route("/metrics", metrics)
    app.add_route("/openapi.json", OpenAPIResource(limits))
    app.add_route("/", StaticPage())
    if STATIC.is_dir():
        app.add_static_route("/static", str(STATIC))
    app.add_error_handler(Exception, _unexpected)
    app.add_error_handler(falcon.HTTPError, _http_error)
    app.add_error_handler(IntgradsError, _intgrads_error)
    return app
