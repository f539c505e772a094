"""Clients that give up: how much worker time is wasted, and what it costs the others.

Real gunicorn, broker and one worker (tiny model, a small memory budget so a
request is many short chunks). ``--clients`` threads each send requests one
after another over raw HTTP. Three runs with the same requests:

* abandonment: each request is, with probability ``--fraction``, a long one
  (10x the steps: the kind a user gives up on) that is abandoned (socket
  closed) after a random 20-60 % of the long request's compute time (measured
  first), while queued or running;
* reference: the same requests, every one waited for (the long ones run to
  their end);
* floor: only the short requests (the long ones never sent).

Reports, for the abandonment run, the worker time spent on each abandoned
request after its cancel reached the worker (from the worker's
"stopped ... after its cancel" log lines; the frontend notices a closed
socket within ``broker_client.CHECK_EVERY`` = 0.1 s on top) against the time
of one chunk (target: under one chunk each), and the p50 / p99 latency of
the short requests (whose clients waited), against the reference run
(target: within 20 %), with the floor for scale.

    python bench/abandonment.py [--clients 4] [--requests 10] [--fraction 0.3]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

from intgrads_zmq.testing.stack import read_response, start_broker, start_frontend
from intgrads_zmq.testing.tiny_models import make_tiny_bert

TEXT = " ".join(["a great film with wonderful acting"] * 6)
BODY = {"sequence": TEXT, "n_steps": 120, "method": "riemann_trapezoid", "fields": []}
LONG_BODY = {**BODY, "n_steps": 1200}  # what an abandoning client asked for: it would run 10x longer
STOPPED = re.compile(r"stopped ([0-9.]+) s after its cancel, after (\d+) of (\d+) steps")


def send(port: int, body: dict) -> socket.socket:
    data = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=300)
    sock.sendall(b"POST /model/?format=json HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: " + str(len(data)).encode() + b"\r\nConnection: close\r\n\r\n" + data)
    return sock


Plan = list[tuple[bool, float | None]]  # per request: long?, seconds after which to give up (None: wait)


def client_loop(port: int, plan: Plan, latencies: list[float], failures: list[int]) -> None:
    """Send ``plan``'s requests in turn; record the latency of the short ones waited for."""
    for long, abandon_after in plan:
        started = time.perf_counter()
        sock = send(port, LONG_BODY if long else BODY)
        if abandon_after is not None:
            time.sleep(abandon_after)
            sock.close()
            continue
        with sock:
            status, _, _ = read_response(sock)
        if status != 200:
            failures.append(status or 0)
        if not long:
            latencies.append(time.perf_counter() - started)


def run(port: int, plans: list[Plan]) -> tuple[list[float], list[int], float]:
    latencies: list[float] = []
    failures: list[int] = []
    threads = [threading.Thread(target=client_loop, args=(port, plan, latencies, failures)) for plan in plans]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, failures, time.perf_counter() - started


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def chunk_seconds(port: int) -> tuple[float, int]:
    with send(port, BODY) as sock:
        status, _, raw = read_response(sock)
    assert status == 200, raw[:300]
    timings = json.loads(raw)["timings"]
    return timings["compute_seconds"] / max(1, timings["chunks"]), timings["chunks"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=10, help="per client")
    parser.add_argument("--fraction", type=float, default=0.3, help="of requests abandoned")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="igz-abandon-"))
    model = make_tiny_bert(folder / "tiny")
    broker = start_broker(["--model", str(model), "--name", "tiny", "--memory-budget", "4MiB", "--max-steps", "2000"],
                          folder=folder)
    frontend = None
    try:
        broker.wait_ready()
        frontend = start_frontend(broker.frontend, folder=folder)
        port = int(frontend.url.rsplit(":", 1)[1])
        for _ in range(3):
            chunk, chunks = chunk_seconds(port)  # warm up; keep the last
        rng = random.Random(args.seed)
        long_seconds = 10 * chunk * chunks
        abandon: list[Plan] = [[(True, long_seconds * rng.uniform(0.2, 0.6)) if rng.random() < args.fraction
                                 else (False, None)
                                 for _ in range(args.requests)] for _ in range(args.clients)]
        # Reference: the same requests, every one waited for (nobody abandons).
        reference: list[Plan] = [[(long, None) for long, _ in plan] for plan in abandon]
        # Floor: the short requests only (as if the abandoned ones were never sent).
        floor: list[Plan] = [[item for item in plan if not item[0]] for plan in abandon]
        ref_latencies, ref_failures, ref_wall = run(port, reference)
        floor_latencies, _, floor_wall = run(port, floor)
        log_before = len(broker.log_text())
        latencies, failures, wall = run(port, abandon)
        time.sleep(1.0)  # the last cancels reach the log
        stops = [(float(m[1]), int(m[2]), int(m[3])) for m in STOPPED.finditer(broker.log_text()[log_before:])]
        counters = broker.status()["counters"]
    finally:
        if frontend:
            frontend.stop()
        broker.stop()

    abandoned = sum(long for plan in abandon for long, _ in plan)
    print(f"short request: {chunks} chunks of {chunk * 1000:.1f} ms ({chunks * chunk:.2f} s of compute); "
          f"long (abandoned) ones: 10x that; latencies below are the short requests'")
    print(f"reference (nobody abandons): {ref_wall:.1f} s wall, {len(ref_latencies)} short requests: "
          f"p50 {percentile(ref_latencies, 0.5):.2f} s, p99 {percentile(ref_latencies, 0.99):.2f} s, "
          f"failures {ref_failures}")
    print(f"floor (long requests never sent): {floor_wall:.1f} s wall, p50 {percentile(floor_latencies, 0.5):.2f} s, "
          f"p99 {percentile(floor_latencies, 0.99):.2f} s")
    print(f"abandonment: {abandoned} long requests abandoned, {wall:.1f} s wall, {len(latencies)} short: "
          f"p50 {percentile(latencies, 0.5):.2f} s, p99 {percentile(latencies, 0.99):.2f} s, failures {failures}")
    print(f"  broker: {counters.get('requests_cancelled', 0)} requests cancelled "
          f"({counters.get('cancels_sent', 0)} running ones stopped by a CANCEL to the worker; "
          "the rest left the queue)")
    if stops:
        waits = [s[0] for s in stops]
        print(f"  worker time after its cancel, per stopped request: median {statistics.median(waits) * 1000:.1f} ms, "
              f"max {max(waits) * 1000:.1f} ms = {max(waits) / chunk:.2f} chunks (target < 1 chunk); "
              f"steps done when stopped: {sorted(s[1] for s in stops)} of {stops[0][2]}")
    ratio50 = percentile(latencies, 0.5) / percentile(ref_latencies, 0.5)
    ratio99 = percentile(latencies, 0.99) / percentile(ref_latencies, 0.99)
    print(f"waiting clients vs reference: p50 x{ratio50:.2f}, p99 x{ratio99:.2f} (target: within 1.20)")


if __name__ == "__main__":
    main()
