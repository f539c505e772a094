"""A batch is admitted whole or refused at once (issue 16.3), with real processes.

Reported: /models advertised 64 texts per request, but with the default queue
bound of 32 the 33rd text of a 64-text batch got 503 after the first 33 had
been queued and computed, and thrown away; a client obeying Retry-After
retried for ever. Here the queue bound is 3 (two tiny-BERT workers) and every
refusal is checked to come before anything was queued or computed (the
broker's counters and the workers' served counts do not move); a batch whose
text fails has its running and queued siblings cancelled.
"""

from __future__ import annotations

import json
import socket

import pytest

from intgrads_zmq.testing.stack import start_broker, start_frontend, wait_until

QUEUE_BOUND = 3
FAULTS = {"raise_on": "EXPLODE", "sleep_on": "SLOW", "sleep_seconds": 120}
QUICK = {"n_steps": 2, "fields": []}


@pytest.fixture(scope="module")
def stack(tiny_bert_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("batches")
    broker = start_broker(["--model", str(tiny_bert_dir), "--name", "tiny"], workers=2, folder=folder,
                          env={"INTGRADS_FAULTS": json.dumps(FAULTS)},
                          extra_args=["--queue-bound", str(QUEUE_BOUND)])
    frontend = None
    try:
        broker.wait_ready(timeout=120)
        frontend = start_frontend(broker.frontend, folder=folder)
        yield broker, frontend
    finally:
        if frontend is not None:
            frontend.stop()
        broker.stop()


def work_done(broker) -> tuple[int, int]:
    """(requests the broker accepted, requests its workers answered)."""
    status = broker.status()
    return status["counters"].get("requests_accepted", 0), sum(w["served"] for w in status["workers"])


def idle(broker) -> bool:
    workers = broker.status()["workers"]
    return len(workers) == 2 and all(w["state"] == "idle" for w in workers)


def open_request(url: str, body: dict) -> socket.socket:
    """Send a whole POST and leave the connection open, unread (a client waiting)."""
    port = int(url.rsplit(":", 1)[1])
    data = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(b"POST /model/?format=json HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: " + str(len(data)).encode() + b"\r\nConnection: close\r\n\r\n" + data)
    return sock


def test_models_advertises_only_batches_the_queue_can_hold(stack):
    _, frontend = stack
    status, _, body = frontend.get("/models")
    models = json.loads(body)
    assert status == 200
    assert models["limits"]["max_sequences"] == QUEUE_BOUND
    assert [m["limits"]["max_sequences"] for m in models["models"]] == [QUEUE_BOUND]


def test_a_batch_that_can_never_fit_is_400_at_once_and_nothing_is_computed(stack):
    broker, frontend = stack
    wait_until(lambda: idle(broker), 60, "idle workers")
    before = work_done(broker)
    texts = [f"a fine film number {i}" for i in range(QUEUE_BOUND + 1)]
    status, _, body = frontend.post("/model/?format=json", {"sequences": texts, **QUICK})
    error = json.loads(body)
    assert status == 400 and error["field"] == "sequences", body
    assert f"at most {QUEUE_BOUND}" in error["description"]
    assert work_done(broker) == before  # nothing queued, nothing computed
    # The frontend's own limit follows the broker's queue bound, so the batch
    # never reached the broker (whose own 400 for a peer that skips the
    # frontend is tests/unit/test_broker_logic.py's).
    assert "batches_refused" not in broker.status()["counters"]


def test_a_batch_that_does_not_fit_now_is_503_at_once_then_fits_later(stack):
    broker, frontend = stack
    wait_until(lambda: idle(broker), 60, "idle workers")
    slow = [open_request(frontend.url, {"sequence": f"SLOW film {i}", **QUICK}) for i in range(2)]
    waiting = None
    try:
        wait_until(lambda: all(w["state"] == "busy" for w in broker.status()["workers"]), 30, "both workers busy")
        waiting = open_request(frontend.url, {"sequence": "a queued film", **QUICK})
        wait_until(lambda: broker.status()["models"]["tiny"]["queued"] == 1, 30, "one request queued")
        before = work_done(broker)
        batch = {"sequences": ["one film", "two films", "three films"], **QUICK}  # 2 places are left
        status, headers, body = frontend.post("/model/?format=json", batch)
        assert status == 503 and headers.get("retry-after") == "1", body
        assert "nothing of it was queued or computed" in json.loads(body)["description"]
        assert work_done(broker) == before
        assert broker.status()["models"]["tiny"]["queued"] == 1
    finally:
        for sock in [*slow, *([waiting] if waiting else [])]:
            sock.close()  # the clients leave: their requests are cancelled
    wait_until(lambda: idle(broker) and broker.status()["models"]["tiny"]["queued"] == 0, 60,
               "the abandoned requests to be cancelled")
    status, _, body = frontend.post("/model/?format=json", batch)
    assert status == 200, body
    assert len(json.loads(body)["results"]) == 3


def test_a_failing_text_cancels_its_running_and_queued_siblings(stack):
    broker, frontend = stack
    wait_until(lambda: idle(broker), 60, "idle workers")
    counters = broker.status()["counters"]
    _, served = work_done(broker)
    # Two workers: the slow text (120 s) and the exploding one run, the third waits.
    batch = {"sequences": ["SLOW a long film", "EXPLODE a film", "a fine film"], **QUICK}
    status, _, body = frontend.post("/model/?format=json", batch)
    error = json.loads(body)
    assert status == 500 and error["code"] == "compute_failed" and error["field"] == "sequences[1]", body
    after = broker.status()["counters"]
    assert after["batch_siblings_cancelled"] - counters.get("batch_siblings_cancelled", 0) == 2
    assert after["cancels_sent"] - counters.get("cancels_sent", 0) == 1  # the running slow text
    # The slow text stops at once (its 120 s sleep is cut by the cancel); the queued one never runs.
    wait_until(lambda: idle(broker), 60, "the running sibling to stop")
    assert work_done(broker)[1] == served + 2
