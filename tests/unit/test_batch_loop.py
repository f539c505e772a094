"""The run loop against a small HTTP peer in this process (stdlib http.server):
retries of 503 + Retry-After, failures recorded as rows, run-level failures
that stop before writing, cancellation of in-flight requests (the peer sees
the connection close), and tensors written to shards before their rows.

The real server is exercised end to end in tests/stack/test_batch_runner.py;
here the peer's answers are chosen per text so each branch is hit on purpose.
"""

from __future__ import annotations

import io
import json
import select
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from intgrads_zmq.batch.inputs import Example
from intgrads_zmq.batch.journal import recover
from intgrads_zmq.batch.progress import Progress, format_duration
from intgrads_zmq.batch.request import build_request
from intgrads_zmq.batch.resume import ROWS, TENSORS
from intgrads_zmq.batch.runner import Runner, RunSettings
from intgrads_zmq.batch.transport import Transport
from intgrads_zmq.encoding.safetensors_format import write_safetensors
from intgrads_zmq.payload import RawTensor
from intgrads_zmq.testing.stack import free_port


class Peer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.tries: dict[str, int] = {}
        self.disconnected: list[str] = []
        self.hanging = threading.Event()
        self.lock = threading.Lock()
        self.paths: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    server: Peer

    def log_message(self, *args):  # quiet
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        text = body["sequence"]
        with self.server.lock:
            self.server.tries[text] = self.server.tries.get(text, 0) + 1
            tries = self.server.tries[text]
            self.server.paths.append(self.path)
        if text.startswith("busy") and tries <= int(text.split(":")[1]):
            return self.error(503, "overloaded", "queue full", retry_after="0")
        if text == "bad":
            return self.error(400, "bad_request", "'sequence' is empty", field="sequence")
        if text == "opt":
            return self.error(400, "bad_request", "no label 'neutral'", field="target")
        if text == "boom":
            return self.error(500, "compute_failed", "the model raised")
        if text == "nomodel":
            return self.error(404, "unknown_model", "no model 'x'")
        if text.startswith("hang"):
            self.server.hanging.set()
            while True:  # until the client goes away
                readable, _, _ = select.select([self.connection], [], [], 0.05)
                if readable and not self.connection.recv(1, 2):  # MSG_PEEK: EOF
                    with self.server.lock:
                        self.server.disconnected.append(text)
                    return
        tokens = ["[CLS]", *text.split(), "[SEP]"]
        meta = {"tokens": tokens, "attributions": [0.25] * len(tokens), "labels": ["neg", "pos"],
                "probabilities": [0.25, 0.75], "target": 1, "target_label": "pos", "n_steps": 4,
                "completeness_error": 1e-7, "timings": {"compute_seconds": 0.01}, "alphas": [0.5]}
        if "format=safetensors" in self.path:
            data = b"".join((4 * i).to_bytes(4, "little") for i in range(len(tokens) * 4))
            tensor = RawTensor("int32", (1, len(tokens), 4), data)
            payload = write_safetensors({"integrated_gradients": tensor}, {"intgrads": json.dumps(meta)})
            return self.reply(200, payload, "application/octet-stream")
        return self.reply(200, json.dumps(meta).encode(), "application/json")

    def error(self, status, code, description, field=None, retry_after=None):
        body = {"code": code, "title": code, "description": description}
        if field:
            body["field"] = field
        self.reply(status, json.dumps(body).encode(), "application/json",
                   {"Retry-After": retry_after} if retry_after else {})

    def reply(self, status, data, media, headers=None):
        self.send_response(status)
        self.send_header("Content-Type", media)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def peer():
    server = Peer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def examples(*texts):
    return [Example(i + 1, text, None, i + 1) for i, text in enumerate(texts)]


def run(url, folder: Path, items, *, fields=None, concurrency=2, stop=None, retries=5, options=None, **settings):
    folder.mkdir(exist_ok=True)
    spec = build_request(n_steps="4", fields=fields, model="tiny", **(options or {}))
    stop = stop or threading.Event()
    progress = Progress(len(items), 0, io.StringIO(), tty=False)
    runner = Runner(Transport(url, timeout=30), spec, items, folder, [],
                    RunSettings(concurrency=concurrency, retries=retries, **settings), progress, stop)
    return runner.run(), recover(folder / ROWS).rows


def test_retry_503_and_record_failures(peer, tmp_path):
    result, rows = run(peer.url, tmp_path, examples("a good film", "busy:2", "bad", "boom", "a bad film"))
    assert result.error is None and not result.interrupted
    assert (result.written, result.failed) == (5, 2)
    by_id = {r["id"]: r for r in rows}
    assert sorted(by_id) == [1, 2, 3, 4, 5]
    assert by_id[2]["attempts"] == 3 and "error" not in by_id[2] and peer.tries["busy:2"] == 3
    assert by_id[3]["error"] == {"status": 400, "code": "bad_request", "description": "'sequence' is empty",
                                 "field": "sequence"}
    assert by_id[4]["error"]["status"] == 500 and by_id[4]["error"]["code"] == "compute_failed"
    ok = by_id[1]
    assert ok["tokens"] == ["[CLS]", "a", "good", "film", "[SEP]"] and ok["steps_used"] == 4
    assert ok["predicted_label"] == "pos" and "alphas" not in ok and ok["timings"]["request_seconds"] > 0
    assert all(p.startswith("/model/tiny/?format=json") for p in peer.paths)


def test_an_option_refused_on_the_first_example_stops_the_run(peer, tmp_path):
    result, rows = run(peer.url, tmp_path, examples("opt", "a film", "another film"),
                       options={"target": "neutral"})
    assert result.error and "refused the option 'target'" in result.error
    assert rows == [] and peer.tries == {"opt": 1}  # the others were never sent


def test_a_refusal_of_an_option_not_sent_is_the_examples_own(peer, tmp_path):
    """Without --target the class explained depends on the example (a contrast equal
    to the predicted class is refused for that example only): recorded, run goes on."""
    result, rows = run(peer.url, tmp_path, examples("opt", "a film"))
    assert result.error is None and [("error" in r) for r in rows] == [True, False]


def test_a_bad_first_text_is_only_that_examples_failure(peer, tmp_path):
    result, rows = run(peer.url, tmp_path, examples("bad", "a film"))
    assert result.error is None and [("error" in r) for r in rows] == [True, False]


def test_unknown_model_and_503_forever_stop_the_run(peer, tmp_path):
    result, rows = run(peer.url, tmp_path / "a", examples("a film", "nomodel", "x y"), concurrency=1)
    assert "404 (unknown_model)" in result.error and [r["id"] for r in rows] == [1]
    result, rows = run(peer.url, tmp_path / "b", examples("busy:99"), retries=2)
    assert "still 503" in result.error and "after 3 tries" in result.error and rows == []


def test_unreachable_server_stops_without_rows(tmp_path):
    result, rows = run(f"http://127.0.0.1:{free_port()}", tmp_path, examples("a film"), retries=1, max_wait=0.01)
    assert "no answer after 2 tries" in result.error and rows == []


def test_stop_cancels_requests_in_flight_and_keeps_whole_results(peer, tmp_path):
    stop = threading.Event()
    items = examples("a film", "hang one", "hang two", "never sent", "nor this")

    def stop_when_both_hang():
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and peer.tries.get("hang two") is None:
            time.sleep(0.01)
        stop.set()

    threading.Thread(target=stop_when_both_hang, daemon=True).start()
    result, rows = run(peer.url, tmp_path, items, stop=stop, concurrency=2)
    assert result.interrupted and result.error is None and result.discarded == 2
    assert [r["id"] for r in rows] == [1]
    deadline = time.monotonic() + 10  # the peer notices the closed connections
    while len(peer.disconnected) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sorted(peer.disconnected) == ["hang one", "hang two"]
    assert "never sent" not in peer.tries


def test_tensors_are_written_to_shards_before_their_rows(peer, tmp_path):
    from safetensors.numpy import load_file

    texts = ["a film", "a very good film", "bad", "the end", "one more film"]
    result, rows = run(peer.url, tmp_path, examples(*texts), fields="integrated_gradients", shard_examples=2)
    assert result.error is None and result.written == 5
    index = json.loads((tmp_path / TENSORS / "index.json").read_text())
    ok_rows = [r for r in rows if "error" not in r]
    assert len(ok_rows) == 4 and "tensors" not in next(r for r in rows if "error" in r)
    assert len(index["metadata"]["shards"]) == 2  # 2 + 2 examples (the failure has no tensors)
    for row in ok_rows:
        name = row["tensors"]["names"]["integrated_gradients"]
        assert name == f"{row['id']}/integrated_gradients" and index["weight_map"][name] == row["tensors"]["shard"]
        tensor = load_file(tmp_path / TENSORS / row["tensors"]["shard"])[name]
        assert tensor.shape == (1, len(row["tokens"]), 4)
        assert tensor.ravel().tolist() == [4 * i for i in range(tensor.size)]
    assert all("format=safetensors" in p for p in peer.paths)


def test_progress_line():
    stream = io.StringIO()
    progress = Progress(10, 4, stream, tty=False, interval=0.0)
    progress.advance()
    progress.advance(failed=True)
    line = stream.getvalue().strip().splitlines()[-1]
    assert line.startswith("6/10 (60%) ") and "ex/s" in line and "ETA 0:" in line and line.endswith("1 failed")
    assert format_duration(3725) == "1:02:05"
    tty = Progress(10, 0, io.StringIO(), tty=True)
    assert tty.line().startswith("[") and "0/10" in tty.line()
