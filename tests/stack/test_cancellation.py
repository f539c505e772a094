"""Cancellation with real processes: a client that goes away, and a deadline
that passes, stop the worker at its next chunk; a queued request whose client
left is taken out of the queue.

The worker runs with a small memory budget, so a long request is hundreds of
short chunks (tens of milliseconds each on the tiny model): "stopped at the
next chunk" is then visibly different from "ran to the end". Times are
measured and printed, not asserted (the machine is shared).
"""

from __future__ import annotations

import json
import socket
import time

import pytest

from intgrads_zmq.testing.stack import running_stack, start_frontend, wait_until

LONG_TEXT = " ".join(["a great film with wonderful acting"] * 40)
# Riemann nodes cost nothing to make (Gauss-Legendre nodes for 3000 steps take seconds
# before the first chunk), so the time is all in chunks.
SLOW = {"sequence": LONG_TEXT, "n_steps": 3000, "method": "riemann_trapezoid", "fields": []}
QUICK = {"sequence": "a fine film", "n_steps": 8}


@pytest.fixture(scope="module")
def stack(tiny_bert_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("cancel")
    with running_stack(["--model", str(tiny_bert_dir), "--name", "tiny", "--max-steps", "5000",
                        "--memory-budget", "4MiB"], folder=folder) as running:
        yield running


def open_request(url: str, body: dict, path: str = "/model/?format=json") -> socket.socket:
    """Send a whole POST and leave the connection open, unread (a client waiting)."""
    port = int(url.rsplit(":", 1)[1])
    data = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: " + str(len(data)).encode() + b"\r\nConnection: close\r\n\r\n" + data)
    return sock


def worker_idle(broker) -> bool:
    workers = broker.status()["workers"]
    return bool(workers) and all(w["state"] == "idle" for w in workers)


def counter(broker, name: str) -> int:
    return broker.status()["counters"].get(name, 0)


def chunk_seconds(frontend) -> float:
    """One chunk's time on this machine now, from a short request's own timings."""
    status, _, body = frontend.post("/model/?format=json", {**SLOW, "n_steps": 40})
    assert status == 200
    timings = json.loads(body)["timings"]
    return timings["compute_seconds"] / max(1, timings["chunks"])


def test_a_client_that_disconnects_frees_the_worker_for_the_next_request(stack):
    broker, frontend = stack
    wait_until(lambda: worker_idle(broker), 60, "an idle worker")
    chunk = chunk_seconds(frontend)
    cancels = counter(broker, "requests_cancelled")
    sock = open_request(frontend.url, SLOW)
    broker.busy_worker_pid()
    time.sleep(1.0)  # well into its chunks
    sock.close()  # the client gives up (Ctrl-C in curl)
    gone = time.monotonic()
    status, _, _ = frontend.post("/model/?format=json", QUICK)
    freed = time.monotonic() - gone
    assert status == 200
    assert counter(broker, "requests_cancelled") == cancels + 1
    assert "cancelled by the broker" in broker.log_text()
    print(f"\nclient gone -> next request answered in {freed:.2f} s (one chunk here: {chunk * 1000:.0f} ms; "
          f"the abandoned request had minutes of chunks left)")


def test_a_queued_request_whose_client_left_leaves_the_queue(stack):
    broker, frontend = stack
    wait_until(lambda: worker_idle(broker), 60, "an idle worker")
    running = open_request(frontend.url, SLOW)
    broker.busy_worker_pid()
    queued = open_request(frontend.url, QUICK)
    wait_until(lambda: broker.status()["models"]["tiny"]["queued"] == 1, 30, "the second request to queue")
    queued.close()
    wait_until(lambda: broker.status()["models"]["tiny"]["queued"] == 0, 30, "the queue to empty")
    assert broker.status()["workers"][0]["state"] == "busy"  # the first request still runs
    running.close()
    wait_until(lambda: worker_idle(broker), 60, "the worker to stop the first request")


def test_a_deadline_that_passes_stops_the_worker(stack, tmp_path):
    broker, _ = stack
    wait_until(lambda: worker_idle(broker), 60, "an idle worker")
    # SLOW takes about 2 s on a quiet machine: a 1 s deadline passes well before it ends.
    short = start_frontend(broker.frontend, env={"INTGRADS_TIMEOUT": "1"}, folder=tmp_path)
    try:
        started = time.monotonic()
        status, _, body = short.post("/model/?format=json", SLOW)
        assert status == 504, body
        wait_until(lambda: worker_idle(broker), 60, "the worker to stop at the deadline")
        # Stopped by the broker's CANCEL or by the worker's own deadline check,
        # whichever comes first: both act at a chunk boundary.
        print(f"\ndeadline 1 s -> worker idle after {time.monotonic() - started:.2f} s")
    finally:
        short.stop()
