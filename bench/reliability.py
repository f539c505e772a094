"""Reliability figures from the real stack, bigger than the test suite runs them.

Starts gunicorn + broker + tiny-BERT workers on loopback (as tests/reliability/
does), then prints, for each phase, what was sent, answered and lost:

1. load with a generous queue bound: every request must succeed, byte-identical
   to the same request sent alone;
2. the same load with ``--queue-bound 6``: deliberate 503s (retried), nothing else;
3. load under chaos: kill -9 of a busy worker every few seconds; nothing lost;
4. the malformed-HTTP corpus (4xx each) and a schemathesis run (no 5xx, no hang);
5. huge replies: the largest reply each format allows (a 512-token text, all
   four fields; torch and safetensors up to INTGRADS_MAX_REPLY, JSON up to
   INTGRADS_MAX_JSON_TENSORS) while /healthz is sampled every 0.1 s, with the
   peak RSS growth of gunicorn, the broker and the worker; then the reported
   JSON request (300 steps, all four fields), which must be refused at once;
6. memory soak: gunicorn's RSS after 1,000 and 5,000 mixed requests
   (bench/memory_soak.py's mix).

    python bench/reliability.py [--clients 32] [--per-client 40] [--fuzz-examples 400]
                                [--chaos-every 4] [--workers 2]
                                [--skip load,overload,chaos,bad,fuzz,huge,soak] [--only huge,soak]
                                [--huge-hidden 768] [--huge-layers 1] [--huge-steps 300]
                                [--soak-requests 5000]

The huge-reply phase uses a BERT with bert-base's hidden size (768) and 512
positions but one layer: the replies are bert-base's size (945 MB for 300
steps), the computation a twelfth of it.

Exit status 1 if a request was lost, a success differed, a server error
appeared, /healthz missed a second, or a reply over its bound was computed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import memory_soak  # bench/ is the script's folder, so on sys.path

from intgrads_zmq.encoding.reply_size import (
    DEFAULT_MAX_JSON_TENSORS,
    DEFAULT_MAX_REPLY,
    tensor_bytes_for,
)
from intgrads_zmq.options import TENSOR_FIELDS
from intgrads_zmq.testing.reliability import (
    bad_requests,
    check_bad_answer,
    load_specs,
    references,
    run_load,
    run_schemathesis,
)
from intgrads_zmq.testing.stack import descendants, http, raw_http, start_broker, start_frontend
from intgrads_zmq.testing.tiny_models import WORDS, make_tiny_bert

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


# -- huge replies ------------------------------------------------------------------
TOKENS = 512
ALL_FIELDS = list(TENSOR_FIELDS)
HUGE_TEXT = " ".join((WORDS * 20)[: TOKENS - 2])  # 510 words of the vocabulary: 512 tokens


def rss_mb(pid: int, key: str = "VmRSS") -> float:
    for row in Path(f"/proc/{pid}/status").read_text().splitlines():
        if row.startswith(key + ":"):
            return int(row.split()[1]) / 1024
    return 0.0


def largest_steps(fmt: str, hidden: int, cap: int) -> int:
    """The most steps (up to ``cap``) whose all-field reply the default bounds admit
    (1 MiB left for the encoding's own bytes)."""
    bound = DEFAULT_MAX_JSON_TENSORS if fmt == "json" else DEFAULT_MAX_REPLY - (1 << 20)
    steps = cap
    while steps > 1 and tensor_bytes_for(TOKENS, steps, hidden, ALL_FIELDS) > bound:
        steps -= 1
    return steps


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def one_huge_reply(url: str, pids: dict[str, int], fmt: str, steps: int) -> tuple[bool, str]:
    """Produce one reply while sampling /healthz and peak RSS; (ok, report line)."""
    before = {name: rss_mb(pid) for name, pid in pids.items()}
    for pid in pids.values():
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
    body = json.dumps({"sequence": HUGE_TEXT, "n_steps": steps, "method": "riemann_trapezoid",
                       "fields": ALL_FIELDS}).encode()
    answer: dict[str, Any] = {}

    def send() -> None:
        started = time.monotonic()
        request = urllib.request.Request(f"{url}/model/?format={fmt}", data=body, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=3600) as response:
                answer["status"], size = response.status, 0
                while chunk := response.read(1 << 20):
                    size += len(chunk)
        except urllib.error.HTTPError as err:
            answer["status"], size = err.code, len(err.read())
        answer["bytes"], answer["seconds"] = size, time.monotonic() - started

    thread = threading.Thread(target=send)
    thread.start()
    latencies: list[float] = []
    while thread.is_alive():
        started = time.monotonic()
        status, _, _ = http("GET", url + "/healthz", timeout=60)
        latencies.append(time.monotonic() - started if status == 200 else float("inf"))
        time.sleep(0.1)
    thread.join()
    peak = {name: rss_mb(pid, "VmHWM") for name, pid in pids.items()}
    worst = max(latencies)
    text = (f"{answer['bytes'] / 1e6:.1f} MB in {answer['seconds']:.0f} s (status {answer['status']}, {steps} steps); "
            f"/healthz {len(latencies)} samples p50 {percentile(latencies, 0.5) * 1000:.0f} ms, "
            f"p99 {percentile(latencies, 0.99) * 1000:.0f} ms, max {worst * 1000:.0f} ms; RSS before -> peak (MB): "
            + ", ".join(f"{name} {before[name]:.0f} -> {peak[name]:.0f} ({peak[name] - before[name]:+.0f})"
                        for name in pids))
    return answer["status"] == 200 and worst < 1.0, text


def huge_phase(args: argparse.Namespace, folder: Path) -> bool:
    model = make_tiny_bert(folder / "long-bert", hidden=args.huge_hidden, layers=args.huge_layers,
                           heads=max(2, args.huge_hidden // 64), positions=TOKENS)
    steps_cap = max(300, args.huge_steps)
    # The production heartbeat (1 s, dead after 3 s): the test stacks' 0.5 s counts a worker dead while
    # a 945 MB reply crosses (1.7 s over ipc here) unless the worker announces it (SENDING).
    broker = start_broker(["--model", str(model), "--name", "long", "--max-steps", str(steps_cap),
                           "--max-length", str(TOKENS)], workers=1, folder=folder,
                          extra_args=["--heartbeat", str(args.huge_heartbeat)])
    ok = True
    try:
        broker.wait_ready(timeout=300)
        frontend = start_frontend(broker.frontend, folder=folder, env={
            "INTGRADS_MAX_STEPS": str(steps_cap), "INTGRADS_MAX_LENGTH": str(TOKENS)})
        try:
            pids = {"gunicorn": descendants(frontend.process.pid)[0], "broker": broker.process.pid,
                    "worker": broker.worker_pids()[0]}
            for fmt in args.huge_formats.split(","):
                steps = largest_steps(fmt, args.huge_hidden, args.huge_steps)
                good, text = one_huge_reply(frontend.url, pids, fmt, steps)
                line(f"largest {fmt} reply", f"hidden {args.huge_hidden}, {TOKENS} tokens, all fields: {text}")
                ok &= good
            accepted = broker.status()["counters"].get("requests_accepted", 0)
            started = time.monotonic()
            status, _, body = http("POST", frontend.url + "/model/?format=json", data=json.dumps(
                {"sequence": HUGE_TEXT, "n_steps": 300, "fields": ALL_FIELDS}).encode(), timeout=600)
            refused_in = time.monotonic() - started
            computed = broker.status()["counters"].get("requests_accepted", 0) - accepted
            line("the reported JSON request", f"300 steps, all four fields: {status} in {refused_in * 1000:.0f} ms, "
                 f"{computed} requests reached the broker; {json.loads(body).get('description', '')[:160]}")
            ok &= status == 413 and computed == 0
        finally:
            frontend.stop()
    finally:
        broker.stop()
    return ok


def soak_phase(stack: Stack, args: argparse.Namespace) -> bool:
    result = memory_soak.measure(stack.http, requests=args.soak_requests, clients=8, budget=3600)
    table = ", ".join(f"{sent}: {sizes[-1]:.1f} MB" for sent, sizes in result.rows)
    ratio = result.ratio_after_1000()
    line("gunicorn RSS under load", f"worker RSS after requests {table}; statuses {dict(sorted(result.statuses.items()))}"
         + (f"; last / after 1000: {ratio:.3f}" if ratio is not None else ""))
    return not any(status >= 500 for status in result.statuses)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--per-client", type=int, default=40)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--fuzz-examples", type=int, default=400)
    parser.add_argument("--chaos-every", type=float, default=4.0, help="seconds between kill -9s")
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--skip", default="", help="comma-separated phases to skip")
    parser.add_argument("--only", default="", help="comma-separated phases to run (all others skipped)")
    parser.add_argument("--huge-hidden", type=int, default=768, help="hidden size of the huge-reply model")
    parser.add_argument("--huge-layers", type=int, default=1)
    parser.add_argument("--huge-steps", type=int, default=300, help="most steps of a huge reply")
    parser.add_argument("--huge-formats", default="torch,safetensors,json")
    parser.add_argument("--huge-heartbeat", type=float, default=1.0, help="broker and worker heartbeat (s)")
    parser.add_argument("--soak-requests", type=int, default=5000)
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    if args.only:
        skip = {"load", "overload", "chaos", "bad", "fuzz", "huge", "soak"} - set(args.only.split(","))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    folder = Path(tempfile.mkdtemp(prefix="igz-reliability-"))
    model_dir = make_tiny_bert(folder / "tiny-bert")
    print(f"{args.clients} clients x {args.per_client} requests, {args.workers} workers, tiny BERT, "
          f"work in {folder}", flush=True)
    ok = True
    started = time.perf_counter()
    needs_main_stack = {"load", "bad", "fuzz", "soak", "chaos"} - skip
    stack = Stack(model_dir, folder, args.workers, queue_bound=100_000) if needs_main_stack else None
    try:
        if "load" not in skip:
            ok &= load_phase(stack, args, "load (queue bound 100000)", seed=1)
        if "bad" not in skip:
            ok &= bad_phase(stack, folder)
        if "fuzz" not in skip:
            ok &= fuzz_phase(stack, args, folder)
        if "soak" not in skip:
            ok &= soak_phase(stack, args)
        if "chaos" not in skip:
            ok &= chaos_phase(stack, args)
    finally:
        if stack is not None:
            stack.close()
    if "huge" not in skip:
        ok &= huge_phase(args, folder)
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
