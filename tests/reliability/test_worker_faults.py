"""Worker faults at the HTTP level, each followed by good requests that succeed.

The supervised workers run with INTGRADS_FAULTS (conftest.py): a text with
POISON makes the worker exit, EXPLODE makes the forward pass raise, SLOW adds
2 s; the remote "oomy" worker runs out of memory on any chunk above 2 steps.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest
import torch
from safetensors.torch import load as load_safetensors

from intgrads_zmq.errors import DeadlineExceeded, IntgradsError
from intgrads_zmq.service.broker_client import BrokerClient
from intgrads_zmq.testing.reliability import canonical
from intgrads_zmq.testing.stack import start_frontend, wait_until
from tests.reliability.conftest import FRONTEND_ENV

TEXT = "a great film with wonderful acting ."
SLOW = {"sequence": "SLOW " + TEXT, "n_steps": 8}
JSON = {"Content-Type": "application/json"}


def post(stack_or_frontend, body, path="/model/", timeout=120.0):
    frontend = getattr(stack_or_frontend, "http", stack_or_frontend)
    return frontend.post(path, json.dumps(body).encode(), headers=JSON, timeout=timeout)


def in_thread(func, *args):
    """Run ``func(*args)`` in a thread; returns (thread, result dict)."""
    out: dict = {}

    def run():
        try:
            out["value"] = func(*args)
        except Exception as exc:  # noqa: BLE001 - reported by the test
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


@pytest.fixture(scope="module")
def slow_reference(main_stack):
    """The SLOW request's answer, sent alone (2 s)."""
    status, _, body = post(main_stack, SLOW)
    assert status == 200
    return body


def pids(stack, model="tiny"):
    return {w["pid"] for w in stack.broker.status()["workers"] if w["model"] == model}


def test_kill_9_of_a_worker_holding_an_http_request(main_stack, slow_reference, record):
    thread, out = in_thread(post, main_stack, SLOW)
    victim = main_stack.broker.busy_worker_pid(model="tiny")
    os.kill(victim, signal.SIGKILL)
    thread.join(60)
    status, _, body = out["value"]
    assert status == 200 and body == slow_reference  # re-dispatched, same bytes
    main_stack.wait_healthy()
    assert victim not in pids(main_stack)
    assert post(main_stack, {"sequence": TEXT, "n_steps": 3})[0] == 200
    assert "removed: process exited" in main_stack.broker.log_text()
    record("fault: kill -9 of a busy worker", "request re-dispatched, answered 200 with the same bytes; "
           "worker replaced")


def test_a_poison_request_is_answered_after_one_retry_while_other_clients_are_served(
        main_stack, specs, expected, record):
    torch_specs = [s for s in specs if s.fmt == "torch"][:6]
    stop = threading.Event()
    good: list[tuple[str, int, bool]] = []

    def good_client(offset: int) -> None:
        i = offset
        while not stop.is_set() or i < offset + 3:
            spec = torch_specs[i % len(torch_specs)]
            status, _, body = spec.send(main_stack.http.url)
            good.append((spec.name, status, status == 200 and canonical(body, "torch") == expected[spec.name]))
            i += 1

    clients = [threading.Thread(target=good_client, args=(k,), daemon=True) for k in range(3)]
    for client in clients:
        client.start()
    before = pids(main_stack)
    status, _, body = post(main_stack, {"sequence": "POISON " + TEXT, "n_steps": 4})
    error = json.loads(body)
    assert status == 500 and error["code"] == "worker_died", error
    assert "died" in error["description"] and error["title"]
    main_stack.wait_healthy()
    assert not pids(main_stack) & before  # both workers it landed on died and were replaced
    stop.set()
    for client in clients:
        client.join(120)
    assert len(good) >= 9
    assert all(ok for _, _, ok in good), [g for g in good if not g[2]]
    assert post(main_stack, {"sequence": TEXT, "n_steps": 3})[0] == 200
    record("fault: poison request", f"answered 500 worker_died after 2 attempts; {len(good)} concurrent "
           "good requests all 200 and byte-identical; both workers replaced")


def test_a_raising_forward_pass_is_a_500_naming_it_and_the_worker_lives_on(main_stack, record):
    before = {w["pid"]: w["served"] for w in main_stack.broker.status()["workers"] if w["model"] == "tiny"}
    status, _, body = post(main_stack, {"sequence": "EXPLODE " + TEXT, "n_steps": 4})
    error = json.loads(body)
    assert status == 500 and error["code"] == "compute_failed", error
    assert "InjectedFailure" in error["description"] and "injected failure in the forward pass" in error["description"]
    after = {w["pid"]: w["served"] for w in main_stack.broker.status()["workers"] if w["model"] == "tiny"}
    assert set(after) == set(before)  # same processes
    assert sum(after.values()) == sum(before.values()) + 1  # one of them answered it
    assert post(main_stack, {"sequence": TEXT, "n_steps": 3})[0] == 200
    record("fault: forward pass raises", "HTTP 500 compute_failed naming InjectedFailure; same worker pids")


def test_out_of_memory_chunks_are_retried_smaller_with_the_same_result(main_stack, record):
    body = {"sequence": TEXT, "n_steps": 8}
    status, _, raw = post(main_stack, body, "/model/oomy/?format=json")
    assert status == 200
    timings = json.loads(raw)["timings"]
    assert (timings["chunk_steps"], timings["chunks"]) == (2, 4)  # 8 -> 4 -> 2 steps per chunk
    clean = json.loads(post(main_stack, body, "/model/tiny/?format=json")[2])
    assert clean["timings"]["chunks"] == 1
    faulted = json.loads(raw)
    for key in ("tokens", "target", "labels", "n_steps", "method", "baseline"):
        assert faulted[key] == clean[key]
    tensors = {}
    for name in ("oomy", "tiny"):
        status, _, raw = post(main_stack, body, f"/model/{name}/?format=safetensors")
        assert status == 200
        tensors[name] = load_safetensors(raw)
    worst = 0.0
    for key, reference in tensors["tiny"].items():
        torch.testing.assert_close(tensors["oomy"][key], reference, rtol=1e-5, atol=1e-6)
        worst = max(worst, float((tensors["oomy"][key] - reference).abs().max()))
    assert faulted["probabilities"] == pytest.approx(clean["probabilities"], abs=1e-7)
    assert faulted["attributions"] == pytest.approx(clean["attributions"], rel=1e-5, abs=1e-6)
    record("fault: out of memory in a chunk", f"8-step chunk retried as 4 then 2 (4 chunks); tensors equal to "
           f"the unfaulted worker's within float32 rounding (max |diff| {worst:.1e})")


def test_a_worker_that_stops_heartbeating_is_dropped_and_rejoins_cleanly(
        main_stack, slow_reference, specs, expected, record):
    thread, out = in_thread(post, main_stack, SLOW)
    victim = main_stack.broker.busy_worker_pid(model="tiny")
    os.kill(victim, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        wait_until(lambda: victim not in pids(main_stack), 10, "the stopped worker to be dropped", 0.05)
        dropped_after = time.monotonic() - stopped
        thread.join(60)
        status, _, body = out["value"]
        assert status == 200 and body == slow_reference  # re-dispatched to the other worker
    finally:
        os.kill(victim, signal.SIGCONT)
    continued = time.monotonic()
    assert dropped_after < 5.0  # liveness window: 3 x 0.5 s heartbeats
    # its late reply (it resumes inside the 2 s sleep, then computes) must reach nobody:
    torch_specs = [s for s in specs if s.fmt == "torch"]
    while time.monotonic() - continued < 4.0:
        for spec in torch_specs[:3]:
            status, _, body = spec.send(main_stack.http.url)
            assert status == 200 and canonical(body, "torch") == expected[spec.name]
    wait_until(lambda: victim in pids(main_stack), 20, "the resumed worker to register again")
    log = main_stack.broker.log_text()
    assert "removed: missed heartbeats" in log
    assert "from unregistered worker" in log or "not its current request" in log
    results = [spec.send(main_stack.http.url) for spec in torch_specs * 2]
    assert all(r[0] == 200 and canonical(r[2], "torch") == expected[s.name]
               for r, s in zip(results, torch_specs * 2, strict=True))
    record("fault: SIGSTOP (no heartbeats)", f"dropped after {dropped_after:.1f} s (liveness 1.5 s), request "
           "re-dispatched and answered with the same bytes; after SIGCONT its late reply was ignored "
           "and it registered again")


def test_a_reply_after_its_deadline_never_reaches_the_next_request(main_stack, specs, expected, record):
    torch_specs = [s for s in specs if s.fmt == "torch"]
    frontend = start_frontend(main_stack.broker.frontend, folder=main_stack.folder,
                              env={**FRONTEND_ENV, "INTGRADS_TIMEOUT": "1.5", "INTGRADS_HTTP_THREADS": "1"})
    try:
        late_before = main_stack.broker.status()["counters"].get("late_replies_dropped", 0)
        started = time.monotonic()
        status, _, body = post(frontend, SLOW)
        assert status == 504 and json.loads(body)["code"] == "deadline_exceeded"
        assert time.monotonic() - started < 5
        answered = 0
        for spec in torch_specs[:4]:  # the same gunicorn thread, hence the same DEALER
            status, _, body = spec.send(frontend.url)
            assert status == 200 and canonical(body, "torch") == expected[spec.name]
            answered += 1
        wait_until(lambda: main_stack.broker.status()["counters"].get("late_replies_dropped", 0) > late_before,
                   10, "the late reply to reach the broker")
        for spec in torch_specs[4:8]:
            status, _, body = spec.send(frontend.url)
            assert status == 200 and canonical(body, "torch") == expected[spec.name]
            answered += 1
    finally:
        frontend.stop()

    # The client side: a DEALER that gave up on a request before the broker
    # answered receives that answer later, and must drop it.
    with BrokerClient(main_stack.broker.frontend) as client:
        rid = client.submit(SLOW["sequence"], options={"n_steps": 8}, timeout=30)
        assert isinstance(client.wait([rid], 0.3, margin=0)[rid], DeadlineExceeded)
        time.sleep(2.5)  # the stale answer is now waiting in the socket
        fresh = client.attribute("a terrible boring film", options={"n_steps": 3})
        assert client.dropped == 1
        assert fresh.meta["tokens"] == ["[CLS]", "a", "terrible", "boring", "film", "[SEP]"]
        assert fresh.meta["n_steps"] == 3
        outcome = client.attribute(TEXT, options={"n_steps": 2})
        assert not isinstance(outcome, IntgradsError) and outcome.meta["n_steps"] == 2
    record("late replies", f"a 504 then {answered} requests on the same gunicorn thread, each its own "
           "answer; broker dropped the late reply; a client-side stale answer was dropped by the DEALER")
