"""CURVE on both broker ports, with keys checked per port; refused handshakes counted.

The real Broker loop in a thread, bound on loopback TCP with keys from
``make_keys`` and CURVE required there too (what ``--curve-on-loopback``
does), and real pyzmq peers: a frontend key opens the frontend port and
nothing else, a worker key the backend port and nothing else; plain peers
and unknown keys get nowhere. Plain TCP bytes sent to a CURVE port are
counted and logged as a refused handshake (libzmq only reports them as a
closed connection).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import zmq

from intgrads_zmq.errors import BrokerUnavailable
from intgrads_zmq.service import protocol as p
from intgrads_zmq.service.broker import Broker, BrokerSettings
from intgrads_zmq.service.broker_client import BrokerClient
from intgrads_zmq.service.security import CurveClient, CurveServer, make_keys
from intgrads_zmq.testing.stack import wait_until


@dataclass
class CurveBroker:
    broker: Broker
    thread: threading.Thread
    keys: Path
    frontend: str
    backend: str
    peers: zmq.Context  # the peers' own context (the broker's holds its ZAP handler)
    status_key: str | None  # what this test's own status requests present

    def client(self, secret: str | None, server: str = "broker.key") -> BrokerClient:
        curve = CurveClient(self.keys / secret, self.keys / server) if secret else None
        return BrokerClient(self.frontend, context=self.peers, connect_wait=1.0, curve=curve)

    def status(self) -> dict:
        with self.client(self.status_key) as client:
            return client.status(timeout=2.0)

    def worker(self, name: str, secret: str | None) -> zmq.Socket:
        sock = self.peers.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IDENTITY, p.worker_identity(name, 1))
        if secret:
            CurveClient(self.keys / secret, self.keys / "broker.key").apply(sock)
        sock.connect(self.backend)
        return sock


def start(keys: Path, *, everywhere: bool) -> CurveBroker:
    context = zmq.Context()
    broker = Broker(BrokerSettings(frontend="tcp://127.0.0.1:*", backend="tcp://127.0.0.1:*", heartbeat_interval=0.2,
                                   shutdown_grace=0.2, curve=CurveServer.from_dir(keys, everywhere=everywhere)),
                    context)
    broker.bind()
    endpoints = [s.getsockopt(zmq.LAST_ENDPOINT).decode() for s in (broker.frontend, broker.backend)]
    thread = threading.Thread(target=broker.run, daemon=True)
    thread.start()
    return CurveBroker(broker, thread, keys, *endpoints, zmq.Context(), "frontend0.key_secret" if everywhere else None)


def stop(running: CurveBroker) -> None:
    running.broker.request_stop()
    running.thread.join(timeout=10)
    running.peers.destroy(linger=0)
    running.broker.context.destroy(linger=0)


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("keys")
    make_keys(folder, workers=1, frontends=1)
    return folder


@pytest.fixture
def everywhere(keys) -> Iterator[CurveBroker]:
    running = start(keys, everywhere=True)
    yield running
    stop(running)


def ready(sock: zmq.Socket, model: str) -> None:
    try:
        sock.send_multipart(p.envelope(p.WORKER, p.Command.READY) + [p.WorkerInfo(model).to_json()], zmq.NOBLOCK)
    except zmq.Again:
        pass  # no handshake, no pipe: refused before anything could be queued


def test_the_frontend_port_takes_frontend_keys_and_the_brokers_own(everywhere):
    with everywhere.client("frontend0.key_secret") as client:
        assert client.status(timeout=2.0)["models"] == {}
    with everywhere.client("broker.key_secret") as client:  # `intgrads-broker status` on the broker's host
        assert "counters" in client.status(timeout=2.0)


@pytest.mark.parametrize("secret", [None, "worker0.key_secret", "stranger"])
def test_the_frontend_port_refuses_plain_peers_worker_keys_and_strangers(everywhere, secret, tmp_path):
    if secret == "stranger":
        make_keys(tmp_path, workers=0, frontends=1)  # a pair nobody authorised (with its own broker key)
        client = BrokerClient(everywhere.frontend, context=everywhere.peers, connect_wait=1.0,
                              curve=CurveClient(tmp_path / "frontend0.key_secret", everywhere.keys / "broker.key"))
    else:
        client = everywhere.client(secret)
    before = everywhere.status()["counters"].get("handshakes_refused", 0)
    with client, pytest.raises(BrokerUnavailable):
        client.status(timeout=1.0)
    wait_until(lambda: everywhere.status()["counters"].get("handshakes_refused", 0) > before, 5,
               "the refusal to be counted")


def test_the_backend_takes_worker_keys_only(everywhere):
    good = everywhere.worker("good", "worker0.key_secret")
    plain = everywhere.worker("plain", None)
    frontend_key = everywhere.worker("confused", "frontend0.key_secret")
    for sock, model in ((good, "m"), (plain, "intruder"), (frontend_key, "intruder2")):
        ready(sock, model)
    wait_until(lambda: "m" in everywhere.status()["models"], 5, "the authorised worker to register")
    wait_until(lambda: everywhere.status()["counters"].get("handshakes_refused", 0) >= 2, 5, "two refusals")
    time.sleep(0.5)  # as long again for the others to (fail to) register
    status = everywhere.status()
    assert list(status["models"]) == ["m"] and [w["model"] for w in status["workers"]] == ["m"]


def test_without_everywhere_loopback_frontends_need_no_key_but_workers_still_do(keys):
    running = start(keys, everywhere=False)
    try:
        with running.client(None) as client:
            assert client.status(timeout=2.0)["models"] == {}
        plain = running.worker("plain", None)
        ready(plain, "intruder")
        wait_until(lambda: running.status()["counters"].get("handshakes_refused", 0) >= 1, 5, "the refusal")
        assert running.status()["workers"] == []
    finally:
        stop(running)


def test_plain_tcp_bytes_on_a_curve_port_count_as_a_refused_handshake(everywhere, caplog):
    """libzmq drops a peer whose first bytes are not a ZMTP 3 greeting (HTTP,
    say) with nothing but DISCONNECTED: it was counted as a closed connection."""
    worker = everywhere.worker("good", "worker0.key_secret")  # a peer that completes its handshake
    ready(worker, "m")
    wait_until(lambda: "m" in everywhere.status()["models"], 5, "the worker to register")
    counters = everywhere.status()["counters"]
    refused = counters.get("handshakes_refused", 0)
    host, port = everywhere.backend.removeprefix("tcp://").rsplit(":", 1)
    with caplog.at_level(logging.WARNING, logger="intgrads.broker"):
        for payload in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"hello"):
            with socket.create_connection((host, int(port)), timeout=5) as raw:
                raw.sendall(payload)
                try:
                    raw.recv(64)
                except OSError:
                    pass
            wait_until(lambda before=refused: everywhere.status()["counters"].get("handshakes_refused", 0) > before,
                       5, f"{payload[:8]!r} to be counted as refused")
            refused = everywhere.status()["counters"]["handshakes_refused"]
        worker.close(linger=0)  # a completed handshake that ends is no refusal
        wait_until(lambda: everywhere.status()["counters"].get("worker_disconnections", 0)
                   > counters.get("worker_disconnections", 0) + 2, 5, "the worker's disconnection")
    assert everywhere.status()["counters"]["handshakes_refused"] == refused
    assert "closed before the ZMTP handshake finished" in caplog.text
