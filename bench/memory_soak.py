"""Memory soak: does gunicorn's resident memory level off under a long mixed load?

A report had gunicorn's RSS rise 103 -> 287 MB over 450 mixed requests. This
runs --requests (default 5,000) requests against a real stack (broker, tiny
BERT workers, gunicorn) from a few client threads: JSON, torch and
safetensors replies, short to long texts, every baseline, batches, and a few
bad requests. It samples VmRSS of every gunicorn process (from
/proc/PID/status) after 0, 500, 1000, 2000, ... requests and prints the table
and the ratio last/at-1000 (about 1.0: levelled off).

    python bench/memory_soak.py [--requests 5000] [--clients 8] [--budget 600]
                                [--hidden 32] [--env NAME=VALUE ...]

--hidden sets the tiny BERT's width: replies grow with it (tensor replies are
steps x tokens x hidden floats), 768 gives bert-base-sized replies.
--env adds a variable to gunicorn's environment, e.g. MALLOC_ARENA_MAX=2
(glibc's per-thread heaps: by default up to 8 per core, each keeping what it
once held) or MALLOC_MMAP_THRESHOLD_=1048576 (blocks from 1 MiB up are mapped
and unmapped, not kept in a heap).

--budget stops sending after that many seconds (the table then ends early).
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import threading
import time
from pathlib import Path

from intgrads_zmq.options import BASELINES
from intgrads_zmq.testing.stack import descendants, http, start_broker, start_frontend
from intgrads_zmq.testing.tiny_models import make_tiny_bert

CHECKPOINTS = (0, 500, 1000, 2000, 3000, 4000, 5000)
WORDS = "the film was a quiet wonder and the acting moved me although the middle drags".split()
FORMATS = ("json", "torch", "safetensors")
BAD_BODIES = (b"{not json", b'{"sequence": "x", "n_steps": 0}', b'{"sequences": []}', b"",
              b'{"sequence": "x", "baseline": "nope"}')


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def request_for(index: int) -> tuple[str, bytes]:
    """The index-th request of the mix: (path with query, body). One in 25 is bad."""
    if index % 25 == 24:
        return "/model/", BAD_BODIES[(index // 25) % len(BAD_BODIES)]
    length = (3, 12, 40, 120)[index % 4]
    text = " ".join(itertools.islice(itertools.cycle(WORDS[index % len(WORDS):] + WORDS), length))
    options = {"n_steps": (2, 8, 32, 64, 4)[index % 5], "baseline": BASELINES[index % len(BASELINES)]}
    body = {"sequences": [text, text[::-1]], **options} if index % 10 == 3 else {"sequence": text, **options}
    return f"/model/?format={FORMATS[index % len(FORMATS)]}", json.dumps(body).encode()


class Load:
    """Client threads sharing one request counter; pauses at each checkpoint
    so RSS is sampled with no request in flight."""

    def __init__(self, url: str, clients: int, total: int, deadline: float) -> None:
        self.url, self.clients, self.total, self.deadline = url, clients, total, deadline
        self.lock = threading.Lock()
        self.next = 0
        self.stop_at = 0
        self.statuses: dict[int, int] = {}

    def _take(self) -> int | None:
        with self.lock:
            if self.next >= self.stop_at or time.monotonic() > self.deadline:
                return None
            self.next += 1
            return self.next - 1

    def _client(self) -> None:
        while (index := self._take()) is not None:
            path, body = request_for(index)
            status, _, _ = http("POST", self.url + path, data=body, timeout=120)
            with self.lock:
                self.statuses[status] = self.statuses.get(status, 0) + 1

    def run_to(self, count: int) -> int:
        """Send requests until ``count`` were sent (or the budget ran out); how many were."""
        self.stop_at = count
        threads = [threading.Thread(target=self._client) for _ in range(self.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return self.next


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--budget", type=float, default=600.0, help="seconds of sending at most")
    parser.add_argument("--hidden", type=int, default=32, help="the tiny BERT's hidden size")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="a variable for gunicorn's environment (repeatable)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="igz-soak-"))
    model = make_tiny_bert(folder / "tiny-bert", hidden=args.hidden, heads=max(2, args.hidden // 64))
    broker = start_broker(["--model", str(model), "--name", "tiny", "--max-length", "128"],
                          workers=args.workers, folder=folder)
    try:
        broker.wait_ready(timeout=120)
        env = {"INTGRADS_MAX_SEQUENCES": "4", "INTGRADS_MAX_STEPS": "64"}
        env.update(item.split("=", 1) for item in args.env)
        frontend = start_frontend(broker.frontend, folder=folder, env=env)
        try:
            soak(frontend, args)
        finally:
            frontend.stop()
    finally:
        broker.stop()


def soak(frontend, args: argparse.Namespace) -> None:
    pids = [frontend.process.pid, *descendants(frontend.process.pid)]
    print(f"gunicorn pids (master first): {pids}; {args.clients} clients, {args.requests} requests, "
          f"hidden {args.hidden}, gunicorn env {args.env or 'as is'}")
    print(f"{'requests':>9} {'seconds':>8} " + " ".join(f"{'RSS MB ' + str(p):>14}" for p in pids))
    result = measure(frontend, requests=args.requests, clients=args.clients, budget=args.budget, pids=pids,
                     on_row=lambda sent, seconds, sizes: print(
                         f"{sent:>9} {seconds:>8.1f} " + " ".join(f"{s:>14.1f}" for s in sizes), flush=True))
    if result.rows[-1][0] < args.requests:
        print(f"(the --budget of {args.budget:g} s ran out after {result.rows[-1][0]} requests)")
    print(f"statuses: {dict(sorted(result.statuses.items()))}")
    ratio = result.ratio_after_1000()
    if ratio is not None:
        last, at_1000 = result.worker_mb(result.rows[-1][0]), result.worker_mb(1000)
        print(f"worker RSS after {result.rows[-1][0]} requests / after 1000: {ratio:.3f} ({last - at_1000:+.1f} MB)")


class SoakResult:
    """RSS of gunicorn's processes (MB, master first) after each checkpoint."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.rows: list[tuple[int, list[float]]] = []  # (requests sent, RSS MB per pid)
        self.statuses: dict[int, int] = {}

    def worker_mb(self, sent: int) -> float:
        """The worker's RSS at the first checkpoint with at least ``sent``
        requests (the last gunicorn process: its only worker by default)."""
        return next(sizes[-1] for done, sizes in self.rows if done >= sent)

    def ratio_after_1000(self) -> float | None:
        """Worker RSS at the end / after 1000 requests (about 1.0: levelled off)."""
        if len(self.rows) < 2 or self.rows[-1][0] < 1000:
            return None
        return self.rows[-1][1][-1] / self.worker_mb(1000)


def measure(frontend, *, requests: int, clients: int, budget: float, pids: list[int] | None = None,
            on_row=None) -> SoakResult:
    """Send the request mix to ``frontend``, sampling RSS at each checkpoint."""
    pids = pids or [frontend.process.pid, *descendants(frontend.process.pid)]
    load = Load(frontend.url, clients, requests, time.monotonic() + budget)
    points = sorted({c for c in CHECKPOINTS if c <= requests} | {requests})
    result, started = SoakResult(pids), time.monotonic()
    for point in points:
        sent = load.run_to(point)
        sizes = [rss_kib(pid) / 1024 for pid in pids]
        result.rows.append((sent, sizes))
        if on_row is not None:
            on_row(sent, time.monotonic() - started, sizes)
        if sent < point:
            break
    result.statuses = dict(load.statuses)
    return result


if __name__ == "__main__":
    main()
