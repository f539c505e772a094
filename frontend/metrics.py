"""Prometheus metrics: request counts and latency here, queue and workers
from the broker's status at scrape time.

Counters live in this process; run gunicorn with one worker process (many
threads, the default config) or scrape each process.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import falcon
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from intgrads_zmq.errors import IntgradsError

LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class BrokerCollector:
    """Reads queue depths and worker counts from the broker when scraped."""

    def __init__(self, status: Callable[[], dict[str, Any]]) -> None:
        self.status = status

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("intgrads_broker_up", "1 if the broker answered a status request")
        try:
            status = self.status()
        except IntgradsError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        queued = GaugeMetricFamily("intgrads_queue_depth", "Requests waiting per model", labels=["model"])
        ready = GaugeMetricFamily("intgrads_workers_ready", "Workers registered per model", labels=["model"])
        idle = GaugeMetricFamily("intgrads_workers_idle", "Idle workers per model", labels=["model"])
        for name, model in status.get("models", {}).items():
            queued.add_metric([name], model.get("queued", 0))
            ready.add_metric([name], model.get("workers", 0))
            idle.add_metric([name], model.get("idle", 0))
        events = CounterMetricFamily("intgrads_broker_events", "Broker events since it started", labels=["event"])
        for event, count in status.get("counters", {}).items():
            events.add_metric([event], count)
        yield from (queued, ready, idle, events)
        yield from _job_metrics(status.get("jobs") or {})


def _job_metrics(jobs: dict[str, Any]) -> Iterator[Metric]:
    """The broker's job store: jobs held, bytes held and allowed, evictions."""
    gauges = (("intgrads_jobs_active", "Jobs queued or running", "active"),
              ("intgrads_jobs_finished", "Finished jobs whose results are kept", "finished"),
              ("intgrads_job_store_bytes", "Bytes of kept job results", "bytes"),
              ("intgrads_job_store_max_bytes", "Bound on kept job results (--job-store-bytes)", "max_bytes"),
              ("intgrads_job_ttl_seconds", "Seconds a finished job is kept (--job-ttl)", "ttl_seconds"))
    for name, text, key in gauges:
        if isinstance(jobs.get(key), int | float):
            gauge = GaugeMetricFamily(name, text)
            gauge.add_metric([], jobs[key])
            yield gauge
    evicted = CounterMetricFamily("intgrads_jobs_evicted", "Job results evicted, by bound", labels=["bound"])
    for bound in ("ttl", "bytes"):
        evicted.add_metric([bound], jobs.get(f"evicted_{bound}", 0))
    yield evicted


class Metrics:
    """The registry plus a Falcon middleware that records every request."""

    def __init__(self, status: Callable[[], dict[str, Any]]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("intgrads_http_requests", "HTTP requests by route and status",
                                ["route", "status"], registry=self.registry)
        self.latency = Histogram("intgrads_http_request_seconds", "HTTP request latency",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.compute = Histogram("intgrads_compute_seconds", "Worker compute time per sequence",
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.registry.register(BrokerCollector(status))

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.started = time.perf_counter()

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource: Any,
                         req_succeeded: bool) -> None:
        route = req.uri_template or "unmatched"
        status = str(resp.status_code)
        self.requests.labels(route, status).inc()
        started = getattr(req.context, "started", None)
        if started is not None:
            self.latency.labels(route).observe(time.perf_counter() - started)
        for seconds in getattr(req.context, "compute_seconds", ()):
            self.compute.observe(seconds)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.data = generate_latest(self.registry)
        resp.content_type = CONTENT_TYPE_LATEST
