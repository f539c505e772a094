"""Handler-level tests of the Falcon app, in process (falcon.testing).

The app is given an in-process stand-in for OUR broker client (submit, wait,
status returning canned data), so error mapping, format negotiation, limits
and the probes are checked in milliseconds. The real processes are exercised
by tests/stack/test_frontend.py and tests/stack/test_gunicorn_launch.py.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import falcon
import falcon.testing
import pytest

from frontend.falcon_app import create_app
from frontend.model_limits import ModelLimits, StatusCache
from frontend.settings import FrontendSettings
from intgrads_zmq import errors
from intgrads_zmq.encoding import FORMATS
from intgrads_zmq.options import TENSOR_FIELDS, Limits
from intgrads_zmq.payload import AttributionPayload, RawTensor
from intgrads_zmq.service import protocol as p

JOB_ID = "0123456789abcdef0123456789abcdef"
SETTINGS = FrontendSettings(broker="inproc://unused", timeout=5.0, max_body_bytes=4096)


def _model(workers: int = 1, max_steps: int = 300, **extra: Any) -> dict[str, Any]:
    return {"workers": workers, "idle": workers, "queued": 0, "labels": ["negative", "positive"],
            "defaults": {"n_steps": 50}, "dtype": "float32", "expected": True,
            "limits": {**Limits().to_dict(), "max_steps": max_steps}, "model": {"architecture": "bert"},
            **extra}


def _status(**models: dict[str, Any]) -> dict[str, Any]:
    return {"default_model": next(iter(models), None), "models": models, "workers": [],
            "counters": {"requests": 3}, "stopping": False}


def _payload(options: dict[str, Any]) -> AttributionPayload:
    tensor = RawTensor("float32", (2,), b"\x00\x00\x80\x3f\x00\x00\x00\x40")  # [1.0, 2.0]
    return AttributionPayload(
        meta={"model": "tiny", "tokens": ["[CLS]", "[SEP]"], "target": 1, "n_steps": options.get("n_steps", 50)},
        tensors={name: tensor for name in options.get("fields", ())},
    )


class FakeClient:
    """Answers like BrokerClient: ``outcome`` (a payload or an IntgradsError)
    for every request, ``status`` (or raises it, if it is an exception)."""

    def __init__(self, status: dict[str, Any] | Exception, outcome: errors.IntgradsError | None = None) -> None:
        self.status_answer = status
        self.outcome = outcome
        self.submitted: list[tuple[str, str | None, dict[str, Any]]] = []
        self.status_calls = 0
        self.cancelled: list[str] = []
        self.job_state = "running"

    def submit(self, sequence: str, *, model: str | None = None, options: dict[str, Any] | None = None,
               timeout: float | None = None, progress: bool = False, max_reply: int | None = None) -> str:
        self.submitted.append((sequence, model, dict(options or {})))
        return f"id-{len(self.submitted)}"

    def submit_batch(self, sequences: list[str], *, model: str | None = None, options: dict[str, Any] | None = None,
                     timeout: float | None = None, max_reply: int | None = None) -> list[str]:
        return [self.submit(text, model=model, options=options, timeout=timeout) for text in sequences]

    def wait(self, request_ids: list[str], timeout: float, **_watchers: Any) -> dict[str, Any]:
        by_id = {f"id-{i + 1}": options for i, (_, _, options) in enumerate(self.submitted)}
        return {rid: self.outcome or _payload(by_id[rid]) for rid in request_ids}

    def wait_some(self, request_ids: list[str], seconds: float, *, on_progress: Any = None) -> dict[str, Any]:
        """The stream's view: a queue position, two progress reports, then the answer."""
        for update in (p.Progress("queued", position=1), p.Progress("running"),
                       p.Progress("running", done=5, total=20, elapsed=1.0)):
            on_progress(request_ids[0], update)
        return self.wait(request_ids, seconds)

    def cancel(self, request_ids: list[str]) -> None:
        self.cancelled.extend(request_ids)

    # jobs: one job, JOB_ID, whose state and outcome the test sets
    def submit_job(self, sequence: str, **kwargs: Any) -> dict[str, Any]:
        self.submitted.append((sequence, kwargs.get("model"), dict(kwargs.get("options") or {})))
        return self.job_status(JOB_ID)

    def job_status(self, job_id: str, **_: Any) -> dict[str, Any]:
        if job_id != JOB_ID:
            raise errors.UnknownJob(f"no job {job_id}")
        if isinstance(self.outcome, errors.JobGone):
            raise self.outcome
        return {"job_id": job_id, "state": self.job_state, "model": "tiny", "done": 5, "total": 20,
                "created_at": 100.0, "started_at": 101.0, "finished_at": None, "position": None}

    def job_cancel(self, job_id: str, **kwargs: Any) -> dict[str, Any]:
        self.cancelled.append(job_id)
        return self.job_status(job_id, **kwargs)

    def job_result(self, job_id: str, **_: Any) -> AttributionPayload:
        self.job_status(job_id)
        if self.outcome is not None:
            raise self.outcome
        return _payload(self.submitted[-1][2])

    def status(self, timeout: float = 2.0) -> dict[str, Any]:
        self.status_calls += 1
        if isinstance(self.status_answer, Exception):
            raise self.status_answer
        return self.status_answer


class FakePool:
    def __init__(self, client: FakeClient) -> None:
        self._client = client

    def client(self) -> FakeClient:
        return self._client


def _app(status: dict[str, Any] | Exception, outcome: errors.IntgradsError | None = None,
         settings: FrontendSettings = SETTINGS) -> tuple[falcon.testing.TestClient, FakeClient]:
    fake = FakeClient(status, outcome)
    return falcon.testing.TestClient(create_app(settings, pool=FakePool(fake))), fake


def _error_body(result: falcon.testing.Result) -> dict[str, Any]:
    body = result.json
    assert set(body) >= {"code", "title", "description"} and body["description"]
    return body


ERROR_CLASSES = sorted((cls for cls in errors.IntgradsError._registry.values() if cls is not errors.IntgradsError),
                       key=lambda cls: cls.code)


@pytest.mark.parametrize("kind", ERROR_CLASSES, ids=lambda cls: cls.code)
def test_each_error_type_maps_to_its_one_status_with_a_json_body(kind):
    web, _ = _app(_status(tiny=_model()), outcome=kind("what went wrong", field="sequence"))
    result = web.simulate_post("/model/", json={"sequence": "a film"})
    assert result.status_code == kind.status
    body = _error_body(result)
    assert body["code"] == kind.code and body["title"] == kind.title
    assert body["description"] == "what went wrong" and body["field"] == "sequence"


@pytest.mark.parametrize(("status", "kind"), [(400, errors.BadRequest), (404, errors.UnknownModel),
                                              (413, errors.PayloadTooLarge), (503, errors.QueueFull),
                                              (503, errors.NoWorkers), (503, errors.BrokerUnavailable),
                                              (504, errors.DeadlineExceeded)])
def test_the_documented_statuses(status, kind):
    assert kind.status == status


def test_a_503_carries_retry_after_and_a_batch_error_names_the_text():
    web, _ = _app(_status(tiny=_model()), outcome=errors.QueueFull("queue full", retry_after=2.5))
    result = web.simulate_post("/model/", json={"sequences": ["a", "b"]})
    assert result.status_code == 503 and result.headers["retry-after"] == "3"
    assert _error_body(result)["field"] == "sequences[0]"


def test_a_body_over_the_limit_is_413_and_bad_json_is_400():
    web, fake = _app(_status(tiny=_model()))
    result = web.simulate_post("/model/", body=b'{"sequence": "' + b"x" * 5000 + b'"}')
    assert result.status_code == 413 and _error_body(result)["code"] == "payload_too_large"
    for body in (b'{"sequence": NaN}', b'{"sequence": 1e400}', b"{", b"\xff\xfe"):
        result = web.simulate_post("/model/", body=body)
        assert result.status_code == 400 and _error_body(result)["code"] == "bad_request", body
    assert fake.submitted == []


def test_invalid_options_are_400_naming_the_field_before_reaching_the_broker():
    web, fake = _app(_status(tiny=_model()))
    result = web.simulate_post("/model/", json={"sequence": "a film", "method": "simpson"})
    assert result.status_code == 400 and _error_body(result)["field"] == "method"
    assert fake.submitted == []


def test_unknown_routes_and_methods_are_json():
    web, _ = _app(_status(tiny=_model()))
    result = web.simulate_get("/nowhere")
    assert result.status_code == 404 and _error_body(result)["code"] == "not_found"
    result = web.simulate_get("/model/")
    assert result.status_code == 405 and _error_body(result)["code"] == "method_not_allowed"


@pytest.mark.parametrize(("query", "accept", "fmt"), [
    (None, None, "torch"),
    ("json", None, "json"),
    ("gzip", None, "torch"),
    ("safetensors", None, "safetensors"),
    (None, "application/json", "json"),
    (None, "application/gzip", "torch"),
    (None, "application/safetensors", "safetensors"),
    ("json", "application/safetensors", "json"),  # the query wins
])
def test_format_negotiation(query, accept, fmt):
    web, fake = _app(_status(tiny=_model()))
    result = web.simulate_post("/model/", json={"sequence": "a film"}, params={"format": query} if query else None,
                               headers={"Accept": accept} if accept else None)
    assert result.status_code == 200
    assert result.headers["content-type"] == FORMATS[fmt].media_type
    # JSON is a summary unless tensors are asked for; the binary formats carry all four.
    assert fake.submitted[0][2]["fields"] == ([] if fmt == "json" else list(TENSOR_FIELDS))
    if fmt == "json":
        assert result.json["tokens"] == ["[CLS]", "[SEP]"]
    assert "compute;dur=" in result.headers["server-timing"]


def test_an_unservable_format_is_refused():
    web, _ = _app(_status(tiny=_model()))
    result = web.simulate_post("/model/", json={"sequence": "a film"}, params={"format": "xml"})
    assert result.status_code == 400 and _error_body(result)["field"] == "format"


def test_limits_come_from_the_workers_the_broker_reports():
    web, fake = _app(_status(tiny=_model(max_steps=1000), small=_model(max_steps=20)))
    assert web.simulate_post("/model/", json={"sequence": "a", "n_steps": 500, "fields": []}).status_code == 200
    result = web.simulate_post("/model/", json={"sequence": "a", "n_steps": 1001})
    assert result.status_code == 400 and _error_body(result)["field"] == "n_steps" and "1000" in result.json[
        "description"]
    assert web.simulate_post("/model/small/", json={"sequence": "a", "n_steps": 21}).status_code == 400
    assert web.simulate_post("/model/small/", json={"sequence": "a", "n_steps": 20}).status_code == 200
    models = web.simulate_get("/models").json
    assert models["limits"]["max_steps"] == 1000
    assert {m["name"]: m["limits"]["max_steps"] for m in models["models"]} == {"tiny": 1000, "small": 20}
    schema = web.simulate_get("/openapi.json").json
    assert '"maximum": 1000' in json.dumps(schema)
    assert [s[1] for s in fake.submitted] == [None, "small"]


def test_without_a_broker_the_frontend_defaults_apply():
    settings = replace(SETTINGS, limits=Limits(max_steps=40))
    web, fake = _app(errors.BrokerUnavailable("no broker"), settings=settings)
    result = web.simulate_post("/model/", json={"sequence": "a", "n_steps": 41})
    assert result.status_code == 400 and _error_body(result)["field"] == "n_steps" and not fake.submitted
    assert web.simulate_post("/model/", json={"sequence": "a", "n_steps": 40}).status_code == 200


def test_the_broker_status_is_asked_once_per_cache_period():
    now = [0.0]
    fake = FakeClient(_status(tiny=_model(max_steps=1000)))
    limits = ModelLimits(StatusCache(fake.status, ttl=3.0, clock=lambda: now[0]), Limits())
    assert limits.for_model("tiny").max_steps == 1000 and limits.for_model(None).max_steps == 1000
    assert limits.for_model("unknown").max_steps == Limits().max_steps
    assert fake.status_calls == 1
    fake.status_answer = _status(tiny=_model(max_steps=7))
    now[0] = 2.9
    assert limits.for_model("tiny").max_steps == 1000
    now[0] = 3.1
    assert limits.for_model("tiny").max_steps == 7 and fake.status_calls == 2


def test_models_and_health():
    web, _ = _app(_status(tiny=_model()))
    body = web.simulate_get("/models").json
    assert body["default_model"] == "tiny" and body["models"][0]["labels"] == ["negative", "positive"]
    assert body["formats"] == {name: f.media_type for name, f in FORMATS.items()}
    assert body["limits"]["max_body_bytes"] == SETTINGS.max_body_bytes
    assert web.simulate_get("/healthz").json == {"status": "ok"}
    web, _ = _app(errors.BrokerUnavailable("no broker"))
    assert web.simulate_get("/healthz").status_code == 200
    assert web.simulate_get("/models").status_code == 503


def test_ready_when_every_model_has_a_worker():
    web, _ = _app(_status(tiny=_model(), other=_model(workers=2)))
    result = web.simulate_get("/readyz")
    assert result.status_code == 200 and result.json == {"ready": True, "workers": {"tiny": 1, "other": 2}}


def test_not_ready_names_the_missing_model_and_why():
    web, _ = _app(_status(tiny=_model(), xlnet=_model(workers=0, load_error="OSError: no config.json in /m")))
    result = web.simulate_get("/readyz")
    assert result.status_code == 503 and result.headers["retry-after"] == "1"
    body = _error_body(result)
    assert body["code"] == "not_ready"
    assert "xlnet" in body["description"] and "no config.json" in body["description"]
    assert body["missing"] == [{"model": "xlnet", "expected": True, "load_error": "OSError: no config.json in /m"}]


def test_not_ready_without_a_load_error_or_any_model_or_a_broker():
    web, _ = _app(_status(tiny=_model(workers=0)))
    body = web.simulate_get("/readyz").json
    assert body["missing"] == [{"model": "tiny", "expected": True, "load_error": None}]
    web, _ = _app(_status())
    result = web.simulate_get("/readyz")
    assert result.status_code == 503 and "no model" in result.json["description"]
    web, _ = _app(errors.BrokerUnavailable("no broker"))
    result = web.simulate_get("/readyz")
    assert result.status_code == 503 and result.json["code"] == "broker_unavailable"


def test_openapi_document():
    web, _ = _app(_status(tiny=_model()))
    document = web.simulate_get("/openapi.json").json
    assert document["openapi"].startswith("3.") and "/model/" in document["paths"]


# -- progress as Server-Sent Events ---------------------------------------------------
def _events(text: str) -> list[tuple[str, Any]]:
    events = []
    for block in text.strip().split("\n\n"):
        lines = block.split("\n")
        name = lines[0].removeprefix("event: ")
        events.append((name, json.loads("\n".join(line.removeprefix("data: ") for line in lines[1:]))))
    return events


def test_an_event_stream_sends_queued_then_progress_then_the_json_result():
    web, fake = _app(_status(tiny=_model()))
    result = web.simulate_post("/model/", json={"sequence": "a film"}, headers={"Accept": "text/event-stream"})
    assert result.status_code == 200 and result.headers["content-type"].startswith("text/event-stream")
    events = _events(result.text)
    assert [name for name, _ in events] == ["queued", "progress", "progress", "result"]
    assert events[0][1] == {"position": 1}
    assert events[2][1] == {"done": 5, "total": 20, "elapsed": 1.0, "eta_seconds": 3.0}
    assert events[3][1]["tokens"] == ["[CLS]", "[SEP]"] and events[3][1]["tensors"] == {}  # as format json
    assert fake.submitted[0][2]["fields"] == [] and fake.cancelled == []


def test_an_event_stream_ends_with_the_error_body_and_refuses_batches():
    web, _ = _app(_status(tiny=_model()), outcome=errors.ComputeFailed("the model raised"))
    result = web.simulate_post("/model/", json={"sequence": "a film"}, headers={"Accept": "text/event-stream"})
    name, body = _events(result.text)[-1]
    assert name == "error" and body["code"] == "compute_failed" and body["status"] == 500
    batch = web.simulate_post("/model/", json={"sequences": ["a", "b"]}, headers={"Accept": "text/event-stream"})
    assert batch.status_code == 400 and _error_body(batch)["field"] == "sequences"


def test_an_abandoned_event_stream_cancels_its_request():
    from frontend import sse

    fake = FakeClient(_status(tiny=_model()))
    stream = sse.stream_attribution(fake, lambda: fake.submit("a film"), 5.0, client_gone=lambda: False)
    assert next(stream).startswith(b"event: queued")
    stream.close()  # what the server does when the client's socket is gone
    assert fake.cancelled == ["id-1"]


# -- jobs ---------------------------------------------------------------------------------
def test_posting_a_job_answers_202_with_its_urls_and_keeps_all_tensors_by_default():
    web, fake = _app(_status(tiny=_model()))
    result = web.simulate_post("/jobs/", json={"sequence": "a film", "n_steps": 20})
    assert result.status_code == 202 and result.headers["location"] == f"/jobs/{JOB_ID}"
    body = result.json
    assert body["job_id"] == JOB_ID and body["status_url"] == f"/jobs/{JOB_ID}"
    assert body["result_url"] == f"/jobs/{JOB_ID}/result" and body["progress"]["done"] == 5
    assert fake.submitted[-1][2]["fields"] == list(TENSOR_FIELDS)
    web.simulate_post("/jobs/", params={"format": "json"}, json={"sequence": "a film"})
    assert fake.submitted[-1][2]["fields"] == []


def test_a_job_batch_is_refused_with_400():
    web, _ = _app(_status(tiny=_model()))
    result = web.simulate_post("/jobs/", json={"sequences": ["a", "b"]})
    assert result.status_code == 400 and _error_body(result)["field"] == "sequences"


def test_a_jobs_result_comes_in_any_format_and_delete_cancels():
    web, fake = _app(_status(tiny=_model()))
    web.simulate_post("/jobs/", json={"sequence": "a film"})
    as_json = web.simulate_get(f"/jobs/{JOB_ID}/result", params={"format": "json"})
    assert as_json.status_code == 200 and set(as_json.json["tensors"]) == set(TENSOR_FIELDS)
    binary = web.simulate_get(f"/jobs/{JOB_ID}/result", headers={"Accept": "application/safetensors"})
    assert binary.headers["content-type"] == FORMATS["safetensors"].media_type
    assert web.simulate_delete(f"/jobs/{JOB_ID}").status_code == 200 and fake.cancelled == [JOB_ID]


@pytest.mark.parametrize(("error", "status"), [
    (errors.JobGone("evicted"), "410 Gone"), (errors.JobNotFinished("running"), "409 Conflict"),
    (errors.Cancelled("cancelled"), "499 Client Closed Request"), (errors.DeadlineExceeded("late"), "504 Gateway Timeout"),
])
def test_a_jobs_result_errors_keep_their_one_status(error, status):
    web, _ = _app(_status(tiny=_model()), outcome=error)
    result = web.simulate_get(f"/jobs/{JOB_ID}/result")
    assert result.status == status and _error_body(result)["code"] == error.code


def test_a_malformed_or_unknown_job_id_is_404():
    web, _ = _app(_status(tiny=_model()))
    for job_id in ("not-an-id", "f" * 32, "A" * 32):
        result = web.simulate_get(f"/jobs/{job_id}")
        assert result.status_code == 404 and _error_body(result)["code"] == "unknown_job"


def test_openapi_documents_jobs_and_the_new_statuses():
    web, _ = _app(_status(tiny=_model()))
    document = web.simulate_get("/openapi.json").json
    assert {"/jobs/", "/jobs/{job_id}", "/jobs/{job_id}/result"} <= set(document["paths"])
    responses = document["paths"]["/jobs/{job_id}/result"]["get"]["responses"]
    assert {"404", "409", "410", "499"} <= set(responses)
    assert "text/event-stream" in document["paths"]["/model/"]["post"]["responses"]["200"]["content"]


def test_metrics_expose_the_job_store():
    status = {**_status(tiny=_model()), "jobs": {"active": 1, "finished": 2, "bytes": 4096, "max_bytes": 8192,
                                                 "ttl_seconds": 60.0, "evicted_ttl": 3, "evicted_bytes": 4}}
    web, _ = _app(status)
    text = web.simulate_get("/metrics").text
    assert "intgrads_job_store_bytes 4096.0" in text and "intgrads_jobs_finished 2.0" in text
    assert 'intgrads_jobs_evicted_total{bound="bytes"} 4.0' in text


def test_a_batch_larger_than_the_brokers_queue_bound_is_refused_by_the_frontend_itself():
    """The broker queues a batch whole or not at all: the frontend's own
    max_sequences follows its queue bound, so such a batch never reaches it."""
    from frontend.model_limits import limits_in_status

    status = {**_status(tiny=_model()), "queue_bound": 3}
    assert limits_in_status(status, "tiny", Limits()).max_sequences == 3
    assert limits_in_status({**status, "queue_bound": 500}, "tiny", Limits()).max_sequences == Limits().max_sequences
    assert limits_in_status({**status, "queue_bound": True}, "tiny", Limits()).max_sequences == Limits().max_sequences


def test_a_remote_model_drained_away_does_not_keep_the_frontend_unready():
    """After a roll-out (`intgrads-broker drain sst2-v1`), the old model is still
    listed with no worker: readiness must not fail for good because of it."""
    web, _ = _app(_status(v2=_model(), v1=_model(workers=0, expected=False)))
    result = web.simulate_get("/readyz")
    assert result.status_code == 200 and result.json["workers"] == {"v2": 1, "v1": 0}
    web, _ = _app(_status(v1=_model(workers=0, expected=False)))  # nothing served at all
    assert web.simulate_get("/readyz").status_code == 503
