"""The service across hosts made of network namespaces, with real processes and
requests in flight: placement, a partition, a broker restart, refused peers,
and a slow link. Figures are printed (run with -s to see them)."""

from __future__ import annotations

import json
import re
import statistics
import time

from intgrads_zmq.testing.stack import PYTHON, wait_until
from tests.multihost.cluster import (
    BACKEND_PORT,
    FRONTEND_PORT,
    HTTP_PORT,
    MODEL,
    lines_with,
    log_time,
)
from tests.multihost.conftest import N_STEPS, SLOW_TEXT, TEXTS, make_keys

REQUESTS = 40
CLIENTS = 8
PROXY_PORT = BACKEND_PORT + 10
LINK_DELAY = 0.05  # seconds added each way by the delay proxy (a 100 ms round trip)


def figure(text: str) -> None:
    print(f"\n[multihost] {text}")


def post_all(cluster, texts: list[str], clients: int, model: str = MODEL, fmt: str | None = None,
             models: list[str] | None = None) -> list[tuple[int, bytes, float]]:
    """POST every text (to ``model``, or to ``models[i]``) from ``clients`` threads inside the front
    host; (status, body, seconds) each."""
    def one(text: str, name: str) -> tuple[int, bytes, float]:
        start = time.monotonic()
        code, body = cluster.post(text, n_steps=N_STEPS, model=name, fmt=fmt)
        return code, body, time.monotonic() - start

    names = models or [model] * len(texts)
    with cluster.lab.executor(cluster.lab.front, clients) as pool:
        return list(pool.map(one, texts, names))


def served(cluster, model: str = MODEL) -> dict[str, int]:
    return {host: w["served"] for host, w in cluster.registered(model).items()}


def test_requests_from_many_clients_are_spread_over_both_hosts_with_the_local_answers(cluster, reference_bodies):
    before = served(cluster)
    texts = [TEXTS[i % len(TEXTS)] for i in range(REQUESTS)]
    start = time.monotonic()
    results = post_all(cluster, texts, CLIENTS)
    seconds = time.monotonic() - start
    after = served(cluster)
    per_host = {host: after[host] - before.get(host, 0) for host in after}
    failures = [(code, body[:200]) for code, body, _ in results if code != 200]
    figure(f"placement: {REQUESTS} requests from {CLIENTS} clients in {seconds:.1f} s, {len(failures)} failed; "
           f"served per gpu host {sorted(per_host.values())}")
    assert not failures
    assert sum(per_host.values()) == REQUESTS
    assert len(per_host) == 2 and all(n > 0 for n in per_host.values()), per_host
    mismatched = [text for text, (_, body, _) in zip(texts, results, strict=True) if body != reference_bodies[text]]
    assert not mismatched, f"{len(mismatched)} answers differ from a local worker's, e.g. {mismatched[0]!r}"


def test_a_partitioned_host_is_dropped_its_request_answered_once_elsewhere_and_it_rejoins(cluster,
                                                                                       reference_bodies):
    lab = cluster.lab
    hosts = {h.name: h for h in lab.gpus}
    counters = cluster.counters()
    with lab.executor(lab.front, 1) as pool:
        answer = pool.submit(cluster.post, SLOW_TEXT)
        busy = wait_until(lambda: [(h, w) for h, w in cluster.registered().items() if w["state"] == "busy"], 20,
                          "a worker to take the slow request")
        victim, record = busy[0]
        survivor = next(name for name in hosts if name != victim)
        cut = time.time()
        lab.link_down(hosts[victim])
        try:
            code, body = answer.result(timeout=60)
            answered = time.time()
            removed = wait_until(lambda: lines_with(cluster.broker_log(), f"worker {record['identity']} removed"),
                                 30, "the broker to drop the silent worker")
            left = cluster.registered()
        finally:
            back = time.time()
            lab.link_up(hosts[victim])
    rejoined = cluster.wait_registered([victim], timeout=60)
    rejoin_seconds = time.time() - back
    after = cluster.counters()

    def delta(name: str) -> int:
        return after.get(name, 0) - counters.get(name, 0)

    detect = log_time(removed[0]) - cut
    figure(f"partition of {victim} (link down {back - cut:.1f} s, heartbeat 0.5 s x 3): dropped {detect:.2f} s "
           f"after the cut; its request answered {answered - cut:.1f} s after the cut by {survivor}; "
           f"rejoined {rejoin_seconds:.1f} s after the link came back; re-dispatched {delta('requests_redispatched')}, "
           f"answered {delta('answered_ok')}, late replies dropped {delta('late_replies_dropped')}, "
           f"messages from unregistered workers ignored {delta('unregistered_messages')}")
    assert code == 200 and body == reference_bodies[SLOW_TEXT]
    assert "missed heartbeats" in removed[0]
    assert victim not in left and survivor in left
    assert delta("requests_redispatched") == 1
    assert delta("answered_ok") == 1  # the victim's late reply, if it came, reached no one
    assert rejoined[victim]["identity"] != record["identity"]  # a new connection of the same process
    assert cluster.host_of(rejoined[victim]["pid"]) == victim
    before = served(cluster)
    results = post_all(cluster, TEXTS, CLIENTS)
    assert all(code == 200 for code, _, _ in results)
    assert served(cluster)[victim] > before.get(victim, 0), "the rejoined worker served nothing"


def test_a_restarted_broker_is_rejoined_by_the_remote_workers_without_restarting_them(cluster, reference_bodies):
    before = cluster.registered()
    pids = {host: w["pid"] for host, w in before.items()}
    cluster.kill_broker()
    killed = time.time()
    cluster.start_broker()
    after = cluster.wait_registered(list(pids), timeout=90)
    rejoined = time.time() - killed
    assert {host: w["pid"] for host, w in after.items() if host in pids} == pids  # the same processes
    assert all(process.poll() is None for process in cluster.workers.values())
    assert len(lines_with(cluster.broker_log(), " ready: model")) >= len(pids)  # registered with the new one
    wait_until(cluster.ready, 30, "gunicorn's /readyz after the restart")
    results = post_all(cluster, TEXTS, CLIENTS)
    figure(f"broker restart: both remote workers registered with the new broker {rejoined:.1f} s after the kill "
           f"(includes its start); {sum(code == 200 for code, _, _ in results)}/{len(TEXTS)} requests answered")
    assert all(code == 200 for code, _, _ in results)
    assert all(body == reference_bodies[text] for text, (_, body, _) in zip(TEXTS, results, strict=True))


PLAIN_TCP = """
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as s:
    s.settimeout(5)
    s.sendall(b"GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n" * 4)
    try:
        print("received", len(s.recv(4096)), "bytes then", "closed" if not s.recv(4096) else "more")
    except OSError as exc:
        print("reset:", exc)
"""

PLAIN_ZMQ = """
import sys, zmq
sock = zmq.Context.instance().socket(zmq.DEALER)
sock.linger = 0
sock.connect(sys.argv[1])
sock.send_multipart([b"IGW1", b"\\x01"])  # shaped like a worker's message, without CURVE
print("answered" if sock.poll(3000) else "no answer")
"""

CONNECT = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close()
    print("connected")
except OSError as exc:
    print("refused:", exc)
"""


def test_peers_without_the_right_keys_are_refused_and_logged_and_the_frontend_port_stays_private(cluster,
                                                                                               tmp_path):
    lab = cluster.lab
    gpu1, gpu2 = lab.gpus
    rogue = tmp_path / "rogue"
    make_keys(rogue, 1)

    def refusals() -> list[str]:
        return lines_with(cluster.broker_log(), "refused a worker connection")

    def refused_while(host, command: list[str], what: str) -> list[str]:
        """Run a rogue worker until the broker logs a refusal, then stop it; the new refusal lines."""
        seen = len(refusals())
        process = lab.popen(host, command, log=tmp_path / f"{what}.log")
        try:
            wait_until(lambda: refusals()[seen:], 60, f"the {what} to be refused")
        finally:
            process.terminate()
            process.wait(timeout=30)
        return refusals()[seen:]

    intruder = refused_while(gpu1, cluster.worker_command(
        gpu1, secret=rogue / "worker0.key_secret", server_key=cluster.keys / "broker.key", name="intruder"),
        "unauthorised worker")
    impostor = refused_while(gpu2, cluster.worker_command(
        gpu2, secret=cluster.keys / "worker2.key_secret", server_key=rogue / "broker.key", name="impostor"),
        "worker with another broker's key")
    models = cluster.status()["models"]
    seen = len(refusals())
    plain_zmq = lab.run(gpu2, [PYTHON, "-c", PLAIN_ZMQ, f"tcp://{gpu2.front_address}:{BACKEND_PORT}"], timeout=30)
    plain_zmq_refusals = wait_until(lambda: refusals()[seen:], 30, "the ZeroMQ peer without CURVE to be refused")
    seen = len(refusals())
    plain = lab.run(gpu1, [PYTHON, "-c", PLAIN_TCP, gpu1.front_address, str(BACKEND_PORT)], timeout=30)
    # libzmq drops a peer whose first bytes are not a ZMTP greeting with no handshake event; the broker
    # sees a connection that closed before its handshake finished and counts it as refused
    plain_closed = wait_until(lambda: refusals()[seen:], 30, "the plain TCP peer to be refused")
    private = {port: lab.run(gpu, [PYTHON, "-c", CONNECT, gpu.front_address, str(port)], timeout=30).stdout.strip()
               for gpu in (gpu1, gpu2) for port in (FRONTEND_PORT, HTTP_PORT)}
    figure(f"security: unauthorised key -> {intruder[0].split(': ', 1)[-1]!r}; another broker's key -> "
           f"{impostor[0].split(': ', 1)[-1]!r}; ZeroMQ without CURVE -> {plain_zmq_refusals[0].split(': ', 1)[-1]!r} "
           f"({plain_zmq.stdout.strip()}); plain TCP -> {plain_closed[0].split(': ', 1)[-1]!r} "
           f"(client saw {plain.stdout.strip()!r}); from the gpu hosts: {private}")
    assert all("CURVE key refused" in line for line in intruder)
    # It cannot decrypt the broker's greeting: libzmq reports that as a cryptographic error, or, when
    # the peer gives up first, as a handshake failure without detail. Either way it is refused.
    assert all(re.search(r"zmtp_cryptographic|handshake failed", line) for line in impostor)
    assert "intruder" not in models and "impostor" not in models
    assert [name for name in models] == [MODEL]
    # libzmq names the mismatch, or (when the peer's greeting is cut short) no detail
    assert all(re.search(r"zmtp_mechanism_mismatch|handshake failed", line) for line in plain_zmq_refusals)
    assert plain_zmq.stdout.strip() == "no answer"
    assert plain.stdout.startswith("reset") or "received 0 bytes" in plain.stdout, plain.stdout  # never answered
    assert f"tcp://{gpu1.front_address}:{BACKEND_PORT}" in plain_closed[0]
    assert "closed before the ZMTP handshake finished" in plain_closed[0]
    assert all(outcome.startswith("refused") for outcome in private.values()), private


def test_a_slow_link_keeps_throughput_and_heartbeats(cluster, tmp_path):
    lab = cluster.lab
    gpu1 = lab.gpus[0]
    far = "tiny-far"
    proxy = lab.popen(lab.front, [PYTHON, "-m", "intgrads_zmq.testing.delay_proxy", "--listen",
                                  f"0.0.0.0:{PROXY_PORT}", "--target", f"127.0.0.1:{BACKEND_PORT}",
                                  "--delay", str(LINK_DELAY)], log=tmp_path / "proxy.log")
    worker = lab.popen(gpu1, cluster.worker_command(gpu1, secret=cluster.keys / "worker2.key_secret",
                                                    server_key=cluster.keys / "broker.key", name=far,
                                                    port=PROXY_PORT), log=tmp_path / "far.log")
    try:
        first = wait_until(lambda: cluster.registered(far), 90, "the worker behind the slow link to register")
        identity = next(iter(first.values()))["identity"]
        texts = [TEXTS[i % len(TEXTS)] for i in range(16)]
        # A worker's first request of each length is slower (allocations, kernels): warm both paths.
        warm = post_all(cluster, TEXTS, 1, model=far) + post_all(cluster, TEXTS * 4, CLIENTS)
        # One client, alternating between the links so that the machine's other load hits both alike.
        alternating = post_all(cluster, [t for t in TEXTS * 2 for _ in (far, MODEL)], 1, fmt="json",
                               models=[far, MODEL] * len(TEXTS) * 2)
        far_one, near_one = alternating[0::2], alternating[1::2]
        start = time.monotonic()
        slow = post_all(cluster, texts, 4, model=far, fmt="json")  # four clients: throughput
        slow_seconds = time.monotonic() - start
        time.sleep(3 * 0.5 * 2)  # two heartbeat-expiry windows with the worker idle behind the delay
        still = cluster.registered(far)
        removals = lines_with(cluster.broker_log(), f"worker {identity} removed")
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        proxy.terminate()
        proxy.wait(timeout=10)
    def median_ms(results: list[tuple[int, bytes, float]]) -> float:
        return statistics.median(seconds for _, _, seconds in results) * 1000

    figure(f"slow link ({LINK_DELAY * 1000:.0f} ms each way, {2 * LINK_DELAY * 1000:.0f} ms round trip, by "
           f"intgrads_zmq.testing.delay_proxy): one client, median {median_ms(far_one):.0f} ms per request vs "
           f"{median_ms(near_one):.0f} ms over a direct link; {len(texts)} requests from 4 clients in "
           f"{slow_seconds:.1f} s ({len(texts) / slow_seconds:.1f}/s) through one worker; "
           f"worker removed by heartbeats: {len(removals)} times")
    assert all(code == 200 for code, _, _ in warm + slow + far_one + near_one)
    assert all(json.loads(body)["model"] == far for _, body, _ in slow + far_one)
    # the same numbers whichever link carried them
    assert [json.loads(b)["attributions"] for _, b, _ in far_one] == [json.loads(b)["attributions"]
                                                                      for _, b, _ in near_one]
    assert [json.loads(b)["model"] for _, b, _ in near_one] == [MODEL] * len(near_one)
    assert not removals, removals
    assert [w["identity"] for w in still.values()] == [identity]
