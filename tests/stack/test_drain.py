"""Draining with real processes: a broker with two CPU workers of the tiny BERT
model, the real ``intgrads-broker drain`` command, and a worker's SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from intgrads_zmq.payload import AttributionPayload
from intgrads_zmq.service.broker_client import BrokerClient
from intgrads_zmq.testing.stack import PYTHON, REPO, alive, start_broker, wait_until

TEXT = "a great film , not boring !"
# A "SLOW" request holds its worker long enough for the CLI to start and drain it
# (the wait is interruptible, so a cancelled one still stops at once).
SLOW_FAULT = {"INTGRADS_FAULTS": json.dumps({"sleep_on": "SLOW", "sleep_seconds": 10})}
OPTIONS = {"n_steps": 8}


@pytest.fixture
def pool(tiny_bert_dir):
    broker = start_broker(["--model", str(tiny_bert_dir), "--name", "tiny"], workers=2, env=SLOW_FAULT)
    broker.wait_ready()
    yield broker
    broker.stop()


def cli(broker, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "intgrads_zmq.cli", *args, "--frontend", broker.frontend],
                          cwd=REPO, env=broker.env, capture_output=True, text=True, timeout=60)


def workers_by_identity(broker) -> dict[str, dict]:
    return {w["identity"]: w for w in broker.status()["workers"]}


def test_draining_a_busy_worker_loses_nothing_and_it_is_not_restarted(pool):
    with BrokerClient(pool.frontend) as client:
        slow = [client.submit(f"SLOW {TEXT}", model="tiny", options=OPTIONS) for _ in range(2)]
        wait_until(lambda: [w["state"] for w in workers_by_identity(pool).values()] == ["busy", "busy"],
                   60, "both workers busy with a slow request")
        queued = [client.submit(f"{TEXT} {i}", model="tiny", options=OPTIONS) for i in range(4)]
        wait_until(lambda: pool.status()["models"]["tiny"]["queued"] == 4, 30, "four requests queued")
        drained, kept = sorted(workers_by_identity(pool))
        drained_pid = workers_by_identity(pool)[drained]["pid"]

        done = cli(pool, "drain", "--worker", drained)
        assert done.returncode == 0, done.stderr
        assert f"told 1 worker to drain: {drained}" in done.stdout
        states = {identity: w["state"] for identity, w in workers_by_identity(pool).items()}
        assert states[drained] == "draining"  # it still holds its slow request
        assert "draining" in cli(pool, "status").stdout

        outcomes = client.wait(slow + queued, 300)
        assert all(isinstance(outcomes[rid], AttributionPayload) for rid in slow + queued), outcomes

    wait_until(lambda: not alive(drained_pid), 60, "the drained worker process to exit")
    name = drained.rpartition(".")[0]
    wait_until(lambda: f"({name}) drained and exited; not restarted" in pool.log_text(), 30,
               "the supervisor to retire the drained worker (it logs that only for exit code 0)")
    workers = workers_by_identity(pool)
    assert list(workers) == [kept]
    assert workers[kept]["served"] == 5  # its slow request and the whole queue
    time.sleep(2.0)  # four times the supervisor's first restart back-off: a restart would show by now
    assert list(workers_by_identity(pool)) == [kept]
    assert pool.log_text().count("started worker") == 2
    with BrokerClient(pool.frontend) as client:  # the pool keeps serving with one worker
        assert isinstance(client.attribute(TEXT, model="tiny", options=OPTIONS, timeout=120), AttributionPayload)


def test_unknown_names_are_clear_errors_and_sigterm_drains_a_worker_itself(pool):
    unknown_worker = cli(pool, "drain", "--worker", "no-such-worker.1")
    assert unknown_worker.returncode != 0 and "no worker named 'no-such-worker.1'" in unknown_worker.stderr
    assert "404" in unknown_worker.stderr
    unknown_model = cli(pool, "drain", "nope")
    assert unknown_model.returncode != 0 and "no model named 'nope'" in unknown_model.stderr
    assert cli(pool, "drain").returncode != 0  # a model or --worker is required

    with BrokerClient(pool.frontend) as client:
        rid = client.submit(f"SLOW {TEXT}", model="tiny", options=OPTIONS)
        busy = wait_until(lambda: [w for w in workers_by_identity(pool).values() if w["state"] == "busy"],
                          60, "a worker busy with the slow request")[0]
        os.kill(busy["pid"], signal.SIGTERM)
        wait_until(lambda: workers_by_identity(pool)[busy["identity"]]["state"] == "draining", 30,
                   "the worker to announce its drain")
        assert isinstance(client.wait([rid], 300)[rid], AttributionPayload)
    wait_until(lambda: not alive(busy["pid"]), 60, "the SIGTERMed worker to exit")
    wait_until(lambda: "drained and exited; not restarted (1 worker slots left)" in pool.log_text(), 30,
               "the supervisor to retire it")
    assert [w["identity"] for w in pool.status()["workers"]] != [busy["identity"]]
    assert pool.status()["models"]["tiny"]["workers"] == 1
