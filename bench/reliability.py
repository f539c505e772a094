"""Reliability figures from the real stack, bigger than the test suite runs them.

Starts gunicorn + broker + tiny-BERT workers on loopback (as tests/reliability/
does), then prints, for each phase, what was sent, answered and lost:

1. load with a generous queue bound: every request must succeed, byte-identical
   to the same request sent alone;
2. the same load with ``--queue-bound 6``: deliberate 503s (retried), nothing else;
3. load under chaos: kill -9 of a busy worker every few seconds; nothing lost;
4. the malformed-HTTP corpus (4xx each) and a schemathesis run (no 5xx, no hang).

    python bench/reliability.py [--clients 32] [--per-client 40] [--fuzz-examples 400]
                                [--chaos-every 4] [--workers 2] [--skip load,overload,chaos,bad,fuzz]

Exit status 1 if a request was lost, a success differed, or a server error appeared.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from intgrads_zmq.testing.reliability import (
    bad_requests,
    check_bad_answer,
    load_specs,
    references,
    run_load,
    run_schemathesis,
)
from intgrads_zmq.testing.stack import raw_http, start_broker, start_frontend
from intgrads_zmq.testing.tiny_models import make_tiny_bert

FRONTEND_ENV = {"INTGRADS_MAX_STEPS": "64", "INTGRADS_MAX_SEQUENCES": "4", "INTGRADS_MAX_LENGTH": "128"}
MODEL_ARGS = ["--n-steps", "16", "--max-length", "128"]


class Stack:
    def __init__(self, model_dir: Path, folder: Path, workers: int, queue_bound: int) -> None:
        self.broker = start_broker(["--model", str(model_dir), "--name", "tiny", *MODEL_ARGS], workers=workers,
                                   extra_args=["--queue-bound", str(queue_bound)], folder=folder)
        self.http = None
        self.http = start_frontend(self.broker.frontend, env=FRONTEND_ENV, folder=folder)
        self.broker.wait_ready(timeout=180)

    def close(self) -> None:
        if self.http is not None:
            self.http.stop()
        self.broker.stop()


def line(title: str, text: str) -> None:
    print(f"{title:<28} {text}", flush=True)


def load_phase(stack: Stack, args: argparse.Namespace, title: str, seed: int, overload: bool = False) -> bool:
    """``overload``: 503s are expected (deliberate); a request may even stay
    503 after every retry. Anything else than 200 or 503 overloaded fails."""
    specs = load_specs()
    expected = references(stack.http.url, specs)
    result = run_load(stack.http.url, specs, expected, clients=args.clients, per_client=args.per_client, seed=seed)
    line(title, result.summary())
    for problem in (result.lost + result.errors + result.mismatched)[:5]:
        line("", f"  {problem}")
    return not (result.lost or result.errors or result.mismatched or (result.gave_up_503 and not overload))


def chaos_phase(stack: Stack, args: argparse.Namespace) -> bool:
    specs = load_specs()
    expected = references(stack.http.url, specs)
    kills: list[int] = []
    done = threading.Event()

    def killer() -> None:
        while not done.wait(args.chaos_every):
            busy = [w["pid"] for w in stack.broker.status()["workers"] if w["state"] == "busy"]
            if busy:
                os.kill(busy[0], signal.SIGKILL)
                kills.append(busy[0])

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        result = run_load(stack.http.url, specs, expected, clients=args.clients, per_client=args.per_client,
                          seed=7)
    finally:
        done.set()
        thread.join()
    died = [e for e in result.errors if "worker_died" in e]
    other = [e for e in result.errors if "worker_died" not in e]
    line("load under kill -9 chaos", f"{len(kills)} busy workers killed; {result.summary()}")
    line("", f"  answered 500 worker_died (the request was on two killed workers): {len(died)}; "
         f"other errors: {len(other)}")
    stack.broker.wait_ready(timeout=180)
    return not (result.lost or other or result.mismatched)


def bad_phase(stack: Stack, folder: Path) -> bool:
    port = int(stack.http.url.rsplit(":", 1)[1])
    marker = folder / "unpickled"
    corpus = bad_requests(marker)
    problems, statuses = [], {}
    for bad in corpus:
        status, headers, body = raw_http(port, bad.raw, timeout=30, half_close=bad.half_close)
        statuses[status] = statuses.get(status, 0) + 1
        problem = check_bad_answer(bad, status, headers, body)
        if problem:
            problems.append(f"{bad.name}: {problem}")
    line("malformed HTTP", f"{len(corpus)} tried, {len(corpus) - len(problems)} handled as specified "
         f"(statuses {dict(sorted(statuses.items(), key=str))}); marker unpickled: {marker.exists()}")
    for problem in problems[:5]:
        line("", f"  {problem}")
    return not problems and not marker.exists()


def fuzz_phase(stack: Stack, args: argparse.Namespace, folder: Path) -> bool:
    result = run_schemathesis(stack.http.url, examples=args.fuzz_examples, seed=args.seed, folder=folder,
                              timeout=3600)
    line("schemathesis", f"{result.examples} requests in {result.seconds:.0f} s (examples, coverage and "
         f"fuzzing phases, positive and negative), statuses {dict(sorted(result.statuses.items()))}, "
         f"5xx: {len(result.server_errors)}, exit {result.returncode}")
    if result.returncode:
        print(result.output[-3000:])
    return result.returncode == 0 and not result.server_errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--per-client", type=int, default=40)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--fuzz-examples", type=int, default=400)
    parser.add_argument("--chaos-every", type=float, default=4.0, help="seconds between kill -9s")
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--skip", default="", help="comma-separated phases to skip")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    folder = Path(tempfile.mkdtemp(prefix="igz-reliability-"))
    model_dir = make_tiny_bert(folder / "tiny-bert")
    print(f"{args.clients} clients x {args.per_client} requests, {args.workers} workers, tiny BERT, "
          f"work in {folder}", flush=True)
    ok = True
    started = time.perf_counter()
    stack = Stack(model_dir, folder, args.workers, queue_bound=100_000)
    try:
        if "load" not in skip:
            ok &= load_phase(stack, args, "load (queue bound 100000)", seed=1)
        if "bad" not in skip:
            ok &= bad_phase(stack, folder)
        if "fuzz" not in skip:
            ok &= fuzz_phase(stack, args, folder)
        if "chaos" not in skip:
            ok &= chaos_phase(stack, args)
    finally:
        stack.close()
    if "overload" not in skip:
        stack = Stack(model_dir, folder, args.workers, queue_bound=6)
        try:
            ok &= load_phase(stack, args, "load (queue bound 6)", seed=2, overload=True)
        finally:
            stack.close()
    line("total", f"{time.perf_counter() - started:.0f} s; {'all figures as required' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
