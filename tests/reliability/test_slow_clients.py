"""Slow clients: nginx in front absorbs them; gunicorn alone frees its threads in time.

Behind nginx (deploy/nginx/intgrads.conf, run with deploy/nginx/nginx.conf):
40 connections sending their headers and 40 sending their body one byte every
2-5 s for about 20 s, against a gunicorn with only 8 threads. /healthz through
nginx is sampled every 0.2 s throughout and a real POST goes through: nginx
holds the slow connections itself and passes on only complete requests.

gunicorn alone (4 threads, INTGRADS_BODY_TIMEOUT=2): 8 slow body senders get
408 at the deadline and /healthz answers afterwards; a chunk size of
FFFFFFFFFFFFFFFFFFFFFFFF gets 413 and bare-LF chunk framing 400 at once,
from connections held open (a read that waited would answer 408 instead).
"""

from __future__ import annotations

import http.client
import json
import random
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from intgrads_zmq.testing.stack import (
    REPO,
    free_port,
    raw_http,
    read_response,
    start_broker,
    start_frontend,
    stop_process,
    wait_until,
)

NGINX_CONF = REPO / "deploy" / "nginx"
ATTACKERS = 40  # of each kind
ATTACK_SECONDS = 20.0
GOOD = json.dumps({"sequence": "a great film", "n_steps": 2}).encode()


def _nginx() -> str:
    found = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)
    if not found:
        print("nginx not found: install it (apt-get install nginx) to run the proxy tests")
        pytest.skip("nginx not found (apt-get install nginx)")
    return found


@pytest.fixture(scope="module")
def broker(tiny_bert_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("slow-clients")
    broker = start_broker(["--model", str(tiny_bert_dir), "--name", "tiny", "--max-length", "64"], folder=folder)
    try:
        broker.wait_ready(timeout=120)
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="module")
def lone_gunicorn(broker):
    """gunicorn with no proxy: 4 threads, a 2 s body deadline."""
    frontend = start_frontend(broker.frontend, env={"INTGRADS_HTTP_THREADS": "4", "INTGRADS_BODY_TIMEOUT": "2"})
    yield frontend
    frontend.stop()


@pytest.fixture(scope="module")
def behind_nginx(broker, tmp_path_factory):
    """(nginx's port, gunicorn) with gunicorn on 8 threads behind the shipped nginx configuration."""
    nginx = _nginx()
    frontend = start_frontend(broker.frontend, env={"INTGRADS_HTTP_THREADS": "8"})
    folder = tmp_path_factory.mktemp("nginx")
    (folder / "tmp").mkdir()
    port = free_port()
    site = (NGINX_CONF / "intgrads.conf").read_text()
    assert "listen 80;" in site and "server 127.0.0.1:8888;" in site
    site = site.replace("listen 80;", f"listen 127.0.0.1:{port};")
    site = site.replace("server 127.0.0.1:8888;", f"server {frontend.url.removeprefix('http://')};")
    (folder / "intgrads.conf").write_text(site)
    shutil.copy(NGINX_CONF / "nginx.conf", folder / "nginx.conf")
    log = (folder / "stdout.log").open("wb")
    process = subprocess.Popen([nginx, "-p", str(folder), "-c", str(folder / "nginx.conf")],
                               stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: process.poll() is not None or _get(port, "/healthz")[0] == 200, 20, "nginx to serve")
        assert process.poll() is None, (folder / "error.log").read_text()
        yield port, frontend
    finally:
        stop_process(process, 10)
        frontend.stop()


def _get(port: int, path: str, timeout: float = 10.0) -> tuple[int | None, float]:
    """(status or None, seconds) of one GET on a fresh connection."""
    started = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status, time.monotonic() - started
    except OSError:
        return None, time.monotonic() - started
    finally:
        connection.close()


def _post(port: int, body: bytes, timeout: float = 60.0) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("POST", "/model/", body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


class Trickler(threading.Thread):
    """One slow client: sends ``head`` and then one byte of ``rest`` every 2-5 s until stopped."""

    def __init__(self, port: int, head: bytes, rest: bytes, stop: threading.Event, seed: int) -> None:
        super().__init__(daemon=True)
        self.port, self.head, self.rest, self.stop = port, head, rest, stop
        self.random = random.Random(seed)
        self.sent = 0
        self.cut_off = False  # the server closed the connection on it

    def run(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            try:
                sock.sendall(self.head)
                for byte in self.rest:
                    if self.stop.wait(self.random.uniform(2, 5)):
                        return
                    sock.sendall(bytes([byte]))
                    self.sent += 1
            except OSError:
                self.cut_off = True


def _attack(port: int, stop: threading.Event) -> list[Trickler]:
    slow_head = (b"GET /healthz HTTP/1.1\r\nHost: x\r\n", b"X-Slow: " + b"a" * 100 + b"\r\n\r\n")
    slow_body = (b"POST /model/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n",
                 b" " * 100)
    clients = [Trickler(port, *kind, stop, seed) for seed in range(ATTACKERS) for kind in (slow_head, slow_body)]
    for client in clients:
        client.start()
    return clients


def test_behind_nginx_slow_headers_and_bodies_do_not_hold_gunicorn(behind_nginx, record):
    port, frontend = behind_nginx
    stop = threading.Event()
    clients = _attack(port, stop)
    latencies, failures, posted = [], [], []
    try:
        end = time.monotonic() + ATTACK_SECONDS
        while time.monotonic() < end:
            status, seconds = _get(port, "/healthz")
            latencies.append(seconds)
            if status != 200:
                failures.append(status)
            if not posted and time.monotonic() > end - ATTACK_SECONDS / 2:
                posted.append(_post(port, GOOD))
            time.sleep(0.2)
        trickling = sum(1 for c in clients if c.is_alive() and c.sent > 0)
    finally:
        stop.set()
        for client in clients:
            client.join(15)
    worst = max(latencies)
    print(f"/healthz through nginx under {2 * ATTACKERS} slow clients: {len(latencies)} samples, "
          f"max {worst:.3f} s, median {sorted(latencies)[len(latencies) // 2]:.3f} s; "
          f"{trickling} slow clients still connected at the end")
    record("slow clients behind nginx", f"{ATTACKERS} slow-header + {ATTACKERS} slow-body connections against "
           f"8 gunicorn threads for {ATTACK_SECONDS:g} s: /healthz max {worst:.3f} s over {len(latencies)} "
           f"samples, a POST answered {posted}")
    assert not failures, f"/healthz failed through nginx during the attack: {failures}"
    assert posted == [200]
    assert trickling > 0  # the attack was real: connections were still open and sending when it ended
    p99 = sorted(latencies)[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    assert p99 < 1.0, f"/healthz p99 {p99:.2f} s through nginx during the attack"  # the 1 s
    assert worst < 5.0, f"/healthz took {worst:.2f} s through nginx during the attack"
    assert frontend.process.poll() is None


def test_behind_nginx_a_body_over_the_limit_is_refused_by_nginx_as_json(behind_nginx):
    """client_max_body_size = INTGRADS_MAX_BODY: nginx answers before gunicorn sees a byte, in the app's shape."""
    port, _ = behind_nginx
    head = b"POST /model/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
    status, _, body = raw_http(port, head % ((1 << 20) + 1), timeout=10)
    assert status == 413 and json.loads(body)["code"] == "payload_too_large"
    assert raw_http(port, head % 2 + b"{}", timeout=60)[0] == 400  # a body within it reaches the app (no sequence: 400)


def _slow_body_answer(port: int, deadline: float) -> tuple[int | None, dict, bytes]:
    """Send a POST's headers, then a byte every 0.5 s until the server answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
        sock.sendall(b"POST /model/ HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
        while time.monotonic() < deadline:
            try:
                if sock.recv(1, socket.MSG_PEEK):
                    sock.settimeout(10)
                    return read_response(sock)
                return None, {}, b""
            except TimeoutError:
                pass
            try:
                sock.sendall(b" ")
            except OSError:
                pass
    return None, {}, b"no answer before the test's deadline"


def test_alone_slow_bodies_get_408_at_the_deadline_and_free_their_threads(lone_gunicorn, record):
    port = int(lone_gunicorn.url.rsplit(":", 1)[1])
    answers: list[tuple[int | None, dict, bytes]] = []
    started = time.monotonic()
    threads = [threading.Thread(target=lambda: answers.append(_slow_body_answer(port, started + 60)))
               for _ in range(8)]  # twice the 4 threads
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    slowest = time.monotonic() - started
    status, seconds = _get(port, "/healthz", timeout=30)
    record("slow bodies, gunicorn alone", f"8 slow-body clients, 4 threads, INTGRADS_BODY_TIMEOUT=2: all "
           f"answered {sorted({a[0] for a in answers})} within {slowest:.1f} s; /healthz then {seconds:.3f} s")
    assert [a[0] for a in answers] == [408] * 8, answers
    assert all(json.loads(a[2])["code"] == "body_timeout" for a in answers)
    assert status == 200


@pytest.mark.parametrize("framing, expected", [
    (b"FFFFFFFFFFFFFFFFFFFFFFFF\r\n" + b"x" * 1000, 413),
    (b'5\n{"a":\n2\n1}\n0\n\n', 400),
])
def test_alone_bad_chunk_framing_is_answered_at_once_from_an_open_connection(lone_gunicorn, framing, expected):
    """Four at once (every thread): each answered, then /healthz still is. With
    no answer until the deadline, each would be 408 instead."""
    port = int(lone_gunicorn.url.rsplit(":", 1)[1])
    raw = b"POST /model/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + framing
    answers: list[int | None] = []
    threads = [threading.Thread(target=lambda: answers.append(raw_http(port, raw, timeout=30)[0]))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert answers == [expected] * 4
    assert _get(port, "/healthz", timeout=30)[0] == 200
