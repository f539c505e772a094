"""Progress as Server-Sent Events through real gunicorn, broker and worker:
queued -> progress* -> result, the result equal to the plain JSON reply, and
a stream the client closes cancels its request."""

from __future__ import annotations

import http.client
import json
import time

import pytest

from intgrads_zmq.testing.stack import http as http_call
from intgrads_zmq.testing.stack import running_stack, wait_until

TEXT = " ".join(["a great film with wonderful acting"] * 6)
BODY = {"sequence": TEXT, "n_steps": 400, "method": "riemann_trapezoid", "fields": []}


@pytest.fixture(scope="module")
def stack(tiny_bert_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("sse")
    with running_stack(["--model", str(tiny_bert_dir), "--name", "tiny", "--max-steps", "5000",
                        "--memory-budget", "4MiB"], folder=folder) as running:
        yield running


def open_stream(url: str, body: dict) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=120)
    connection.request("POST", "/model/", json.dumps(body),
                       {"Accept": "text/event-stream", "Content-Type": "application/json"})
    return connection, connection.getresponse()


def next_event(response: http.client.HTTPResponse) -> tuple[str, dict] | None:
    """The next event (comments skipped), or None at the end of the stream."""
    name, data = None, []
    while True:
        line = response.readline()
        if not line:
            return None
        line = line.decode().rstrip("\n")
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data.append(line.removeprefix("data: "))
        elif not line and name:
            return name, json.loads("\n".join(data))


def test_events_come_in_order_queued_progress_result(stack):
    _, frontend = stack
    connection, response = open_stream(frontend.url, BODY)
    try:
        assert response.status == 200 and response.getheader("Content-Type").startswith("text/event-stream")
        events = []
        while (item := next_event(response)) is not None:
            events.append(item)
    finally:
        connection.close()
    names = [name for name, _ in events]
    assert names[0] == "queued" and events[0][1]["position"] == 0
    assert names[-1] == "result" and set(names[1:-1]) == {"progress"} and len(names) >= 4, names
    done = [data["done"] for name, data in events if name == "progress"]
    assert done == sorted(done) and events[-2][1]["total"] == 400
    # the first progress is the broker's "started" (no total yet); the worker's say 400
    assert all(data["total"] == 400 for _, data in events[2:-1]) and events[1][1]["total"] in (0, 400)
    print(f"\n{len(names) - 2} progress events; last: {events[-2][1]}")
    status, _, plain = http_call("POST", frontend.url + "/model/?format=json", data=json.dumps(BODY).encode(),
                                 timeout=120)
    assert status == 200
    assert events[-1][1]["attributions"] == pytest.approx(json.loads(plain)["attributions"], rel=1e-5, abs=1e-6)


def test_an_error_ends_the_stream_as_an_error_event(stack):
    _, frontend = stack
    connection, response = open_stream(frontend.url, {"sequence": TEXT, "target": 7})
    try:
        events = []
        while (item := next_event(response)) is not None:
            events.append(item)
    finally:
        connection.close()
    name, body = events[-1]
    assert name == "error" and body["status"] == 400 and body["field"] == "target"


def test_closing_the_stream_cancels_the_request(stack):
    broker, frontend = stack
    slow = {**BODY, "n_steps": 4000}
    connection, response = open_stream(frontend.url, slow)
    while (item := next_event(response)) is not None and item[0] != "progress":
        pass
    cancels = broker.status()["counters"].get("requests_cancelled", 0)
    connection.close()
    closed = time.monotonic()
    wait_until(lambda: broker.status()["workers"][0]["state"] == "idle", 60, "the worker to stop")
    print(f"\nstream closed -> worker idle in {time.monotonic() - closed:.2f} s")
    assert broker.status()["counters"].get("requests_cancelled", 0) == cancels + 1
