"""Jobs with real processes: state and results live in the broker, so any
gunicorn process can answer for a job another one started; DELETE stops the
worker; results are evicted by age and by bytes (410); a restarted broker
knows no job (404, saying why)."""

from __future__ import annotations

import gzip
import io
import json
import time

import pytest
import torch

from intgrads_zmq.testing.stack import http, running_stack, start_broker, start_frontend, wait_until

TEXT = " ".join(["a great film with wonderful acting"] * 3)
SLOW = {"sequence": " ".join([TEXT] * 12), "n_steps": 3000, "method": "riemann_trapezoid", "fields": []}


@pytest.fixture(scope="module")
def stack(tiny_bert_dir, tmp_path_factory):
    """One broker, two gunicorn processes (as two frontend hosts would be)."""
    folder = tmp_path_factory.mktemp("jobs")
    broker = start_broker(["--model", str(tiny_bert_dir), "--name", "tiny", "--max-steps", "5000",
                           "--memory-budget", "4MiB"], workers=1, folder=folder)
    frontends = []
    try:
        broker.wait_ready()
        frontends = [start_frontend(broker.frontend, folder=folder) for _ in range(2)]
        yield broker, frontends
    finally:
        for frontend in frontends:
            frontend.stop()
        broker.stop()


def call(frontend, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    status, _, raw = http(method, frontend.url + path, data=data, timeout=60,
                          headers={"Content-Type": "application/json"} if data else None)
    return status, json.loads(raw)


def finished(frontend, job_id: str, timeout: float = 120) -> dict:
    def state() -> dict | None:
        status, body = call(frontend, "GET", f"/jobs/{job_id}")
        assert status == 200, body
        return body if body["state"] not in ("queued", "running") else None

    return wait_until(state, timeout, f"job {job_id} to finish", interval=0.2)


def worker_idle(broker) -> bool:
    workers = broker.status()["workers"]
    return bool(workers) and all(w["state"] == "idle" for w in workers)


def test_a_job_started_on_one_frontend_is_read_on_another_in_any_format(stack):
    _, (first, second) = stack
    status, accepted = call(first, "POST", "/jobs/", {"sequence": TEXT, "n_steps": 20})
    assert status == 202 and len(accepted["job_id"]) == 32
    job_id = accepted["job_id"]
    done = finished(second, job_id)
    assert done["state"] == "done" and done["progress"]["done"] == done["progress"]["total"] == 20
    assert done["timings"]["run_seconds"] is not None and done["result_bytes"] > 0
    status, _, raw = http("GET", f"{second.url}/jobs/{job_id}/result?format=json", timeout=30)
    assert status == 200
    summary = json.loads(raw)
    status, headers, raw = http("GET", f"{first.url}/jobs/{job_id}/result", timeout=30)
    assert status == 200 and headers["content-type"] == "application/gzip"
    tensors = torch.load(io.BytesIO(gzip.decompress(raw)))
    assert tensors["tokens"] == summary["tokens"]
    assert tensors["integrated_gradients"].shape[1] == len(summary["tokens"])
    # the same reply as POST /model/ gives for the same request
    status, _, direct = http("POST", f"{first.url}/model/?format=json", timeout=60,
                             data=json.dumps({"sequence": TEXT, "n_steps": 20, "fields": []}).encode())
    assert json.loads(direct)["attributions"] == pytest.approx(summary["attributions"], rel=1e-5, abs=1e-6)


def test_deleting_a_running_job_stops_its_worker(stack):
    broker, (first, second) = stack
    wait_until(lambda: worker_idle(broker), 60, "an idle worker")
    status, accepted = call(first, "POST", "/jobs/", SLOW)
    job_id = accepted["job_id"]
    wait_until(lambda: call(second, "GET", f"/jobs/{job_id}")[1]["progress"]["done"] > 0, 60,
               "the job to report progress")
    status, state = call(second, "DELETE", f"/jobs/{job_id}")
    assert status == 200 and state["state"] == "cancelled"
    stopped = time.monotonic()
    wait_until(lambda: worker_idle(broker), 60, "the worker to stop the cancelled job")
    print(f"\nDELETE -> worker idle in {time.monotonic() - stopped:.2f} s")
    status, error = call(first, "GET", f"/jobs/{job_id}/result")
    assert status == 499 and error["code"] == "cancelled"
    assert call(first, "DELETE", f"/jobs/{job_id}")[1]["state"] == "cancelled"  # again: a no-op


def test_unknown_ids_and_finished_jobs_are_left_alone(stack):
    _, (first, _) = stack
    status, error = call(first, "DELETE", "/jobs/" + "0" * 32)
    assert status == 404 and error["code"] == "unknown_job"
    status, accepted = call(first, "POST", "/jobs/?format=json", {"sequence": TEXT, "n_steps": 8})
    job_id = accepted["job_id"]
    assert finished(first, job_id)["state"] == "done"
    status, state = call(first, "DELETE", f"/jobs/{job_id}")
    assert status == 200 and state["state"] == "done"
    assert http("GET", f"{first.url}/jobs/{job_id}/result?format=json", timeout=30)[0] == 200


def test_a_batch_job_is_refused(stack):
    _, (first, _) = stack
    status, error = call(first, "POST", "/jobs/", {"sequences": ["a", "b"]})
    assert status == 400 and error["field"] == "sequences"


@pytest.fixture
def small_store(tiny_bert_dir, tmp_path):
    """A broker that keeps results 6 s and 400 KiB at most, and its frontend."""
    with running_stack(["--model", str(tiny_bert_dir), "--name", "tiny", "--job-ttl", "6",
                        "--job-store-bytes", "400KiB"], folder=tmp_path) as running:
        yield running


def test_results_are_evicted_by_bytes_then_by_age_and_answer_410(small_store):
    broker, frontend = small_store
    big = {"sequence": TEXT, "n_steps": 50}  # all four tensors: about 260 KB
    first = call(frontend, "POST", "/jobs/", big)[1]["job_id"]
    size = finished(frontend, first)["result_bytes"]
    assert 200 * 1024 < size < 400 * 1024  # one fits, two do not
    second = call(frontend, "POST", "/jobs/", big)[1]["job_id"]
    finished(frontend, second)
    status, error = call(frontend, "GET", f"/jobs/{first}/result")
    assert status == 410 and "409600 bytes" in error["description"] and error["code"] == "job_gone"
    assert call(frontend, "GET", f"/jobs/{second}")[0] == 200
    wait_until(lambda: call(frontend, "GET", f"/jobs/{second}")[0] == 410, 30, "the TTL to evict the result")
    status, error = call(frontend, "GET", f"/jobs/{second}/result")
    assert status == 410 and "6 s" in error["description"]
    jobs = broker.status()["jobs"]
    assert (jobs["evicted_bytes"], jobs["evicted_ttl"]) == (1, 1)
    _, _, metrics = http("GET", frontend.url + "/metrics", timeout=10)
    assert b'intgrads_jobs_evicted_total{bound="bytes"} 1.0' in metrics


def test_a_restarted_broker_answers_404_saying_jobs_were_in_its_memory(tiny_bert_dir, tmp_path):
    broker = start_broker(["--model", str(tiny_bert_dir), "--name", "tiny"], folder=tmp_path)
    frontend = None
    try:
        broker.wait_ready()
        frontend = start_frontend(broker.frontend, folder=tmp_path)
        job_id = call(frontend, "POST", "/jobs/?format=json", {"sequence": TEXT, "n_steps": 8})[1]["job_id"]
        finished(frontend, job_id)
        broker.stop()
        broker = start_broker(["--model", str(tiny_bert_dir), "--name", "tiny"], folder=tmp_path)  # same endpoints
        broker.wait_ready()
        status, error = wait_until(lambda: (r := call(frontend, "GET", f"/jobs/{job_id}"))[0] != 503 and r,
                                   30, "the frontend to reach the new broker")
        assert status == 404 and error["code"] == "unknown_job"
        assert "restarted" in error["description"]
    finally:
        if frontend:
            frontend.stop()
        broker.stop()
