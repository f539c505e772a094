"""A broker on a network-facing CURVE backend: intruders, a crash, a shutdown.

Its own stack (named to run before the shared one starts): the broker binds
its backend on tcp://0.0.0.0 with ``--keys``, runs no worker of its own
(``--workers 0``), and serves a remote worker started with
``intgrads-broker worker --connect ... --server-key ... --client-key ...``,
which is not the broker's child and so outlives it (supervised workers die
with their broker through PR_SET_PDEATHSIG). In order:

1. peers without an authorised key, or not speaking ZMTP at all, never
   register; each refusal is logged; service goes on;
2. the broker is SIGKILLed: the frontend answers 503 at once; a new broker
   at the same endpoints is found by the same frontend (not restarted) and by
   the remote worker, which registers again by itself;
3. SIGTERM while requests run and wait: every one is answered (a result or
   503 shutting_down) and no process is left behind.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import zmq
import zmq.auth

from intgrads_zmq.service import protocol as p
from intgrads_zmq.service.security import make_keys
from intgrads_zmq.testing.stack import (
    Broker,
    Frontend,
    RemoteWorker,
    descendants,
    free_port,
    start_broker,
    start_frontend,
    start_remote_worker,
    wait_until,
)

TEXT = "a great film with wonderful acting ."
GOOD = {"sequence": TEXT, "n_steps": 4}
JSON = {"Content-Type": "application/json"}
FAULTS = {"INTGRADS_FAULTS": json.dumps({"sleep_on": "SLOW", "sleep_seconds": 2})}
MODEL = ["--name", "tiny", "--n-steps", "16"]


@dataclass
class CurveStack:
    folder: Path
    keys: Path
    port: int
    model_dir: Path
    broker: Broker
    worker: RemoteWorker
    http: Frontend

    def start_broker(self, extra: list[str] | None = None, model: list[str] | None = None,
                     workers: int = 0) -> Broker:
        return start_broker(model or [], workers=workers, folder=self.folder,
                            extra_args=["--keys", str(self.keys), *(extra or [])],
                            frontend=f"ipc://{self.folder}/frontend", backend=f"tcp://0.0.0.0:{self.port}",
                            env=FAULTS)

    def post(self, body=None, timeout=120.0):
        return self.http.post("/model/", json.dumps(body or GOOD).encode(), headers=JSON, timeout=timeout)


@pytest.fixture(scope="module")
def curve_stack(tiny_bert_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("curve")
    keys = folder / "keys"
    make_keys(keys, workers=1)  # what `intgrads-broker keys --dir keys --workers 1` runs
    port = free_port()
    stack = CurveStack(folder, keys, port, Path(tiny_bert_dir), None, None, None)  # type: ignore[arg-type]
    stack.broker = stack.start_broker()
    stack.worker = start_remote_worker(
        f"tcp://127.0.0.1:{port}", ["--model", str(tiny_bert_dir), *MODEL],
        folder=folder, env=FAULTS,
        extra_args=["--server-key", str(keys / "broker.key"), "--client-key", str(keys / "worker0.key_secret")])
    try:
        stack.http = start_frontend(stack.broker.frontend, folder=folder)
        stack.broker.wait_ready(workers=1, model="tiny", timeout=120)
        yield stack
    finally:
        if stack.http is not None:
            stack.http.stop()
        stack.worker.stop()
        if stack.broker.process.poll() is None:
            stack.broker.stop()


def test_peers_without_an_authorised_key_never_register_and_are_logged(curve_stack, record):
    stack = curve_stack
    endpoint = f"tcp://127.0.0.1:{stack.port}"
    ctx = zmq.Context()
    try:
        peers = []
        plain = ctx.socket(zmq.DEALER)  # no CURVE at all
        peers.append(plain)
        rogue_public, rogue_secret = zmq.curve_keypair()  # CURVE, with a key nobody authorised
        rogue = ctx.socket(zmq.DEALER)
        rogue.curve_secretkey, rogue.curve_publickey = rogue_secret, rogue_public
        rogue.curve_serverkey = zmq.auth.load_certificate(str(stack.keys / "broker.key"))[0]
        peers.append(rogue)
        confused = ctx.socket(zmq.DEALER)  # an authorised key, but the wrong server key
        public, secret = zmq.auth.load_certificate(str(stack.keys / "worker0.key_secret"))
        confused.curve_secretkey, confused.curve_publickey, confused.curve_serverkey = secret, public, rogue_public
        peers.append(confused)
        for index, sock in enumerate(peers):
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDTIMEO, 2000)  # a refused handshake leaves no pipe: send would wait for ever
            sock.connect(endpoint)
            try:
                sock.send_multipart(p.envelope(p.WORKER, p.Command.READY) + [p.dumps({"model": f"intruder{index}"})])
            except zmq.Again:
                pass  # refused before the message could even be queued: refused all the same
        for payload in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", os.urandom(1 << 16)):  # not ZMTP at all
            with socket.create_connection(("127.0.0.1", stack.port), timeout=5) as raw:
                try:
                    raw.sendall(payload)
                    raw.recv(1024)
                except OSError:
                    pass
        wait_until(lambda: stack.broker.status()["counters"].get("handshakes_refused", 0) >= 5, 15,
                   "five refused handshakes")
        time.sleep(1.0)  # as long again for any of them to (fail to) register
        status = stack.broker.status()
        assert list(status["models"]) == ["tiny"]
        assert [w["model"] for w in status["workers"]] == ["tiny"]
        for sock in peers:
            assert not sock.poll(100)  # never answered, never sent a request
    finally:
        ctx.destroy(linger=0)
    assert stack.post()[0] == 200
    log = stack.broker.log_text()
    assert "refused a worker connection" in log and "CURVE key refused" in log
    assert "not a valid ZMTP/CURVE handshake" in log
    refused = status["counters"]["handshakes_refused"]
    record("CURVE backend intruders", f"3 ZeroMQ peers (no CURVE, unauthorised key, wrong server key) and 2 raw "
           f"TCP peers: {refused} handshakes refused and logged, none registered; service continued")


def test_a_killed_broker_is_503_then_a_new_one_is_found_without_restarting_anything(curve_stack, record):
    stack = curve_stack
    status, _, before = stack.post()
    assert status == 200
    http_pids = [stack.http.process.pid, *descendants(stack.http.process.pid)]
    worker_pid = stack.worker.process.pid
    stack.broker.kill()
    down = []
    for _ in range(3):
        started = time.monotonic()
        status, headers, body = stack.post(timeout=30)
        down.append(time.monotonic() - started)
        assert status == 503 and json.loads(body)["code"] == "broker_unavailable" and headers.get("retry-after")
    assert max(down) < 5
    assert stack.http.get("/readyz")[0] == 503
    restarted = time.monotonic()
    # The new incarnation also supervises a worker of its own (for the shutdown test);
    # the remote worker, loaded long ago, is the one that serves first.
    stack.broker = stack.start_broker(model=["--model", str(stack.model_dir), *MODEL], workers=1)
    answer = wait_until(lambda: (lambda r: r if r[0] == 200 else None)(stack.post(timeout=30)), 60,
                        "the frontend to be served again")
    recovered = time.monotonic() - restarted
    assert answer[2] == before  # the same bytes
    remote_pids = set(descendants(worker_pid))
    wait_until(lambda: remote_pids & {w["pid"] for w in stack.broker.status()["workers"]}, 20,
               "the remote worker to register with the new broker by itself")
    assert [stack.http.process.pid, *descendants(stack.http.process.pid)] == http_pids
    assert stack.worker.process.poll() is None
    assert "reconnecting" in stack.worker.log_text()
    record("broker SIGKILL and restart", f"3 requests while down: 503 broker_unavailable in at most "
           f"{max(down):.2f} s; recovered {recovered:.1f} s after the restart, same frontend and worker "
           "processes, same bytes")


def test_sigterm_answers_every_request_in_flight_and_leaves_no_process(curve_stack, record):
    stack = curve_stack
    stack.broker.wait_ready(workers=2, model="tiny", timeout=90)  # its own worker and the remote one
    assert len(descendants(stack.broker.process.pid)) >= 1
    results: dict[str, tuple] = {}

    def send(name, body):
        results[name] = stack.post(body, timeout=60)

    running = [threading.Thread(target=send, args=(f"running{i}", {"sequence": f"SLOW {i} " + TEXT, "n_steps": 4}))
               for i in range(2)]
    for thread in running:
        thread.start()
    wait_until(lambda: all(w["state"] == "busy" for w in stack.broker.status()["workers"]), 10,
               "both workers to be busy")
    queued = [threading.Thread(target=send, args=(f"queued{i}", GOOD)) for i in range(3)]
    for thread in queued:
        thread.start()
    wait_until(lambda: stack.broker.status()["models"]["tiny"]["queued"] == 3, 10, "three queued requests")
    assert stack.broker.stop() == 0  # SIGTERM; asserts no descendant is left
    for thread in [*running, *queued]:
        thread.join(60)
    for i in range(2):
        status, _, body = results[f"running{i}"]
        assert status == 200 and body[:2] == b"\x1f\x8b"  # finished and delivered before the exit
    for i in range(3):
        status, headers, body = results[f"queued{i}"]
        assert status == 503 and json.loads(body)["code"] == "shutting_down", body
    assert stack.post(timeout=30)[0] == 503  # nobody home now
    assert "shutting down" in stack.broker.log_text()
    record("SIGTERM with requests in flight", "2 running requests answered 200, 3 queued answered 503 "
           "shutting_down, broker exited 0 with no process left")
