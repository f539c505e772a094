"""The broker and worker pool as real processes over real ZeroMQ."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time

import pytest
import torch

from intgrads_zmq.errors import (
    BrokerUnavailable,
    DeadlineExceeded,
    IntgradsError,
    NoWorkers,
    QueueFull,
    UnknownModel,
    WorkerDied,
)
from intgrads_zmq.service.broker_client import BrokerClient
from intgrads_zmq.service.processes import EXIT_LOAD_FAILED
from intgrads_zmq.testing.stack import (
    PYTHON,
    REPO,
    base_env,
    descendants,
    free_port,
    start_broker,
    wait_until,
)

TEXT = "a great film , not boring !"
SLOW_FAULT = {"INTGRADS_FAULTS": json.dumps({"sleep_on": "SLOW", "sleep_seconds": 3})}


@pytest.fixture(scope="module")
def pool(tiny_bert_dir):
    broker = start_broker(["--model", str(tiny_bert_dir), "--name", "tiny"], workers=2, env=SLOW_FAULT)
    broker.wait_ready()
    yield broker
    broker.stop()


def client_for(broker, **kwargs):
    return BrokerClient(broker.frontend, **kwargs)


def test_replies_equal_the_engine_called_directly(pool, tiny_bert):
    from intgrads_zmq.engine import attribute
    from intgrads_zmq.options import AttributionOptions

    options = {"n_steps": 12, "baseline": "rand-norm", "seed": 4, "target": 1}
    with client_for(pool) as client:
        payload = client.attribute(TEXT, model="tiny", options=options)
    direct = attribute(tiny_bert, TEXT, AttributionOptions(**options))
    assert payload.meta["tokens"] == direct.meta["tokens"]
    for name, tensor in direct.tensors.items():
        remote = torch.frombuffer(bytearray(payload.tensors[name].data), dtype=torch.float32)
        torch.testing.assert_close(remote.view(tensor.shape), tensor, rtol=1e-6, atol=1e-7)


def test_requests_spread_over_both_workers(pool):
    with client_for(pool) as client:
        ids = [client.submit(TEXT, options={"n_steps": 4}) for _ in range(8)]
        outcomes = client.wait(ids, 30)
    assert all(not isinstance(o, IntgradsError) for o in outcomes.values())
    served = [w["served"] for w in pool.status()["workers"]]
    assert len(served) == 2 and min(served) >= 1


def test_unknown_model_and_status(pool):
    with client_for(pool) as client:
        with pytest.raises(UnknownModel):
            client.attribute(TEXT, model="nope")
        status = client.status()
    assert status["default_model"] == "tiny"
    assert status["models"]["tiny"]["labels"] == ["negative", "positive"]
    assert {w["state"] for w in status["workers"]} <= {"idle", "busy"}


def test_a_queued_request_past_its_deadline_is_answered(pool):
    with client_for(pool) as client:
        busy = [client.submit("SLOW " + TEXT, options={"n_steps": 2}) for _ in range(2)]
        started = time.monotonic()
        late = client.submit(TEXT, options={"n_steps": 2}, timeout=1.0)
        outcome = client.wait([late], 1.0)[late]
        waited = time.monotonic() - started
        assert isinstance(outcome, DeadlineExceeded), outcome
        assert waited < 2.5
        rest = client.wait(busy, 30)
    assert all(not isinstance(o, IntgradsError) for o in rest.values())


def test_a_running_request_past_its_deadline_is_answered_and_its_reply_dropped(pool):
    with client_for(pool) as client:
        rid = client.submit("SLOW " + TEXT, options={"n_steps": 2}, timeout=1.0)
        assert isinstance(client.wait([rid], 1.0)[rid], DeadlineExceeded)
        time.sleep(2.5)  # the worker finishes and its late reply reaches the broker
        fresh = client.attribute(TEXT, options={"n_steps": 3})
    assert fresh.meta["n_steps"] == 3
    assert pool.status()["counters"].get("late_replies_dropped", 0) >= 1


def test_kill_9_of_a_busy_worker_redispatches_and_replaces_it(pool):
    kill_the_busy_worker(pool)
    with client_for(pool) as client:
        assert client.attribute(TEXT, options={"n_steps": 3}).meta["tokens"]


def kill_the_busy_worker(broker, model=None):
    """kill -9 the worker holding a request: the request is still answered, the
    worker replaced. Returns the status once it is."""
    with client_for(broker) as client:
        rid = client.submit("SLOW kill " + TEXT, model=model, options={"n_steps": 3}, timeout=60)
        victim = broker.busy_worker_pid()
        os.kill(victim, signal.SIGKILL)
        outcome = client.wait([rid], 60)[rid]
    assert not isinstance(outcome, IntgradsError), outcome
    status = broker.wait_ready(workers=2)
    assert victim not in [w["pid"] for w in status["workers"]]
    return status


def test_two_workers_compute_in_parallel(tiny_bert_dir):
    """Two requests run at the same moment on two worker processes: the broker's
    status shows both workers busy at once, and both answers arrive. (Proved by
    state, not by timing: speed ratios belong in bench/broker_overhead.py.)"""
    broker = start_broker(["--model", str(tiny_bert_dir), "--name", "tiny"], workers=2, env=SLOW_FAULT)
    try:
        broker.wait_ready()
        with client_for(broker) as client:
            ids = [client.submit("SLOW " + TEXT, options={"n_steps": 4}) for _ in range(2)]

            def both_busy():
                model = client.status()["models"]["tiny"]
                return model["workers"] == 2 and model["idle"] == 0 and model["queued"] == 0

            wait_until(both_busy, 30, "both workers busy at once")
            outcomes = client.wait(ids, 120)
        assert all(not isinstance(o, IntgradsError) for o in outcomes.values())
    finally:
        broker.stop()


def test_overload_is_answered_at_once_and_nothing_else_is_lost(tiny_bert_dir):
    broker = start_broker(["--model", str(tiny_bert_dir), "--name", "tiny"], workers=1,
                          extra_args=["--queue-bound", "2"], env=SLOW_FAULT)
    try:
        broker.wait_ready()
        with client_for(broker) as client:
            first = client.submit("SLOW " + TEXT, options={"n_steps": 2})
            broker.busy_worker_pid()
            queued = [client.submit(TEXT, options={"n_steps": 2}) for _ in range(2)]
            started = time.monotonic()
            extra = [client.submit(TEXT, options={"n_steps": 2}) for _ in range(3)]
            rejected = client.wait(extra, 5)
            assert time.monotonic() - started < 1.0
            assert all(isinstance(o, QueueFull) and o.retry_after for o in rejected.values())
            done = client.wait([first, *queued], 30)
        assert all(not isinstance(o, IntgradsError) for o in done.values())
    finally:
        broker.stop()


def test_a_poison_request_gets_an_error_after_one_retry_and_the_pool_recovers(tiny_bert_dir):
    env = {"INTGRADS_FAULTS": json.dumps({"exit_on": "POISON"})}
    broker = start_broker(["--model", str(tiny_bert_dir), "--name", "tiny"], workers=2, env=env)
    try:
        broker.wait_ready()
        with client_for(broker) as client:
            with pytest.raises(WorkerDied, match="died"):
                client.attribute("POISON " + TEXT, options={"n_steps": 2}, timeout=60)
            broker.wait_ready(workers=2, timeout=60)
            assert client.attribute(TEXT, options={"n_steps": 2}).meta["tokens"]
    finally:
        broker.stop()


def test_broker_down_is_refused_quickly():
    with BrokerClient("tcp://127.0.0.1:1", connect_wait=0.3) as client:
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable):
            client.attribute(TEXT)
        assert time.monotonic() - started < 2


def test_sigterm_stops_everything_and_exits_zero(tiny_bert_dir):
    broker = start_broker(["--model", str(tiny_bert_dir)], workers=2)
    broker.wait_ready()
    children = descendants(broker.process.pid)
    assert len(children) >= 2
    assert broker.stop() == 0  # stop() also asserts no process is left


def test_curve_authenticated_remote_worker_serves_and_a_wrong_key_never_does(tmp_path, tiny_bert_dir):
    keys = tmp_path / "keys"
    subprocess.run([PYTHON, "-m", "intgrads_zmq.cli", "keys", "--dir", str(keys), "--workers", "1"],
                   cwd=REPO, env=base_env(), check=True, capture_output=True)
    rogue = tmp_path / "rogue"
    subprocess.run([PYTHON, "-m", "intgrads_zmq.cli", "keys", "--dir", str(rogue), "--workers", "1"],
                   cwd=REPO, env=base_env(), check=True, capture_output=True)
    port = free_port()
    broker = start_broker([], workers=0, extra_args=["--keys", str(keys)],
                          backend=f"tcp://0.0.0.0:{port}", folder=tmp_path)
    remote = []

    def join(name, secret, server):
        command = [PYTHON, "-m", "intgrads_zmq.cli", "worker", "--connect", f"tcp://127.0.0.1:{port}",
                   "--model", str(tiny_bert_dir), "--name", name, "--cpu", "--heartbeat", "0.5",
                   "--server-key", str(server), "--client-key", str(secret)]
        remote.append(subprocess.Popen(command, cwd=REPO, env=base_env(), stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL))

    try:
        join("trusted", keys / "worker0.key_secret", keys / "broker.key")
        join("intruder", rogue / "worker0.key_secret", keys / "broker.key")
        broker.wait_ready(workers=1, model="trusted", timeout=90)
        time.sleep(3)  # the intruder had as long to register: it cannot
        status = broker.status()
        assert "intruder" not in status["models"]
        assert [w["model"] for w in status["workers"]] == ["trusted"]
        with client_for(broker) as client:
            assert client.attribute(TEXT, model="trusted", options={"n_steps": 2}).meta["tokens"]
            with pytest.raises(UnknownModel):
                client.attribute(TEXT, model="intruder")
    finally:
        for process in remote:
            process.terminate()
            process.wait(timeout=20)
        broker.stop()


def test_a_model_with_no_live_worker_is_no_workers(tmp_path):
    broker = start_broker([], workers=0, folder=tmp_path)
    try:
        threading.Event().wait(1.0)
        with client_for(broker) as client:
            with pytest.raises(NoWorkers):
                client.attribute(TEXT)
    finally:
        broker.stop()


def test_kill_9_of_a_worker_with_a_non_ascii_name_is_noticed_through_its_supervisor(tiny_bert_dir):
    # Heartbeats 15 s apart in effect: only the supervisor can notice the death in time.
    broker = start_broker(["--model", str(tiny_bert_dir), "--name", "modèle-é"], workers=2, env=SLOW_FAULT,
                          extra_args=["--heartbeat", "5"])
    try:
        broker.wait_ready()
        status = kill_the_busy_worker(broker, model="modèle-é")
        assert all(w["identity"].startswith("modèle-é-w") for w in status["workers"])
        log = broker.log_text()
        assert "removed: process exited with code -9" in log
        assert "missed heartbeats" not in log
    finally:
        broker.stop()


def test_a_model_that_fails_to_load_is_refused_at_once_with_the_reason(tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    broker = start_broker(["--model", str(broken), "--name", "broken"], workers=1, folder=tmp_path)
    try:
        with client_for(broker) as client:
            wait_until(lambda: "failed to load" in (broker.status()["models"]["broken"]["load_error"] or ""),
                       60, "the load failure to be reported")
            status = broker.status()["models"]["broken"]
            assert status["expected"] and status["workers"] == 0
            assert "config.json" in status["load_error"]  # the worker's own words, sent before it exited
            with pytest.raises(NoWorkers, match="config.json") as caught:
                client.attribute(TEXT, timeout=600)
            assert caught.value.retry_after
        wait_until(lambda: f"exited with code {EXIT_LOAD_FAILED}" in broker.log_text(), 30, "the worker's exit")
        out = subprocess.run([PYTHON, "-m", "intgrads_zmq.cli", "status", "--frontend", broker.frontend],
                             cwd=REPO, env=base_env(), capture_output=True, text=True, check=True, timeout=30).stdout
        assert "model broken: 0 workers" in out and "not loaded: worker broken-w0-" in out
    finally:
        broker.stop()
