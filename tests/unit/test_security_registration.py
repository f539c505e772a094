"""A worker may not rewrite the description of a model others already serve.

The issue: a local process registered as a worker for ``demo`` with other
metadata and replaced the model's labels, limits and defaults in /models for
every client. Now, while a model has workers, a READY that describes it
differently is refused, logged and answered with DRAIN (the worker stops),
and the model, its workers and its status are left as they were. Real Broker
loop on inproc://, fake workers speaking the real protocol.
"""

from __future__ import annotations

import logging

import pytest

from intgrads_zmq.service import protocol as p
from tests.unit.test_broker_logic import DEFAULTS, LIMITS, FakeWorker, InProcessBroker, wait_until


def info(**changes) -> p.WorkerInfo:
    """What FakeWorker.ready() announces, with ``changes``."""
    fields = dict(model="m", description={"architecture": "Fake"}, labels=["neg", "pos"], defaults=DEFAULTS,
                  limits=LIMITS, dtype="float32", pid=1234)
    return p.WorkerInfo(**{**fields, **changes})


@pytest.fixture
def broker():
    running = InProcessBroker()
    yield running
    running.close()


def announce(broker: InProcessBroker, name: str, announced: p.WorkerInfo) -> FakeWorker:
    worker = broker.worker(announced.model, name, ready=False)
    worker.send(p.Command.READY, announced.to_json())
    return worker


CHANGES = {
    "labels": {"labels": ["negative", "positive", "neutral"]},
    "limits": {"limits": {**LIMITS, "max_length": 100_000}},
    "defaults": {"defaults": {**DEFAULTS, "n_steps": 1}},
    "dtype": {"dtype": "bf16"},
    "description": {"description": {"architecture": "Impostor"}},
}


@pytest.mark.parametrize("field", list(CHANGES))
def test_a_worker_describing_a_served_model_differently_is_refused_and_told_to_stop(broker, field, caplog):
    broker.worker("m", "first")
    broker.worker("m", "second")  # the same description: joins
    before = broker.status()
    assert before["models"]["m"]["workers"] == 2
    with caplog.at_level(logging.ERROR, logger="intgrads.broker"):
        rogue = announce(broker, "rogue", info(**CHANGES[field]))
        rogue.next_message(p.Command.DRAIN)  # told to stop
    after = broker.status()
    assert after["models"] == before["models"]  # what /models shows is unchanged
    assert sorted(w["identity"] for w in after["workers"]) == sorted(w["identity"] for w in before["workers"])
    assert after["counters"]["workers_refused"] == 1
    assert "refused worker rogue.1 for model m" in caplog.text and field in caplog.text
    # and the model's own workers still serve
    request_id = broker.client.submit("a text", model="m")
    worker = next(w for w in broker.workers if w.name == "first")
    message = worker.next_request()
    worker.reply(message.request_id)
    assert broker.outcome(request_id).meta["tokens"] == ["a"]


def test_where_a_worker_runs_may_differ(broker):
    broker.worker("m", "first")
    announce(broker, "elsewhere", info(device="cuda:0", placement="GPUs [0]", host="gpu-box", pid=99,
                                       load_seconds=12.5))
    wait_until(lambda: broker.status()["models"]["m"]["workers"] == 2)


def test_once_a_models_workers_are_gone_a_new_description_may_take_its_place(broker):
    first = broker.worker("m", "first")
    first.send(p.Command.DISCONNECT)
    wait_until(lambda: broker.status()["models"]["m"]["workers"] == 0)
    announce(broker, "new", info(labels=["a", "b", "c"]))
    wait_until(lambda: broker.status()["models"]["m"]["workers"] == 1)
    assert broker.status()["models"]["m"]["labels"] == ["a", "b", "c"]


def test_a_refused_worker_never_gets_a_request(broker):
    first = broker.worker("m", "first")
    rogue = announce(broker, "rogue", info(labels=["x", "y"]))
    rogue.next_message(p.Command.DRAIN)
    ids = [broker.client.submit(f"text {i}", model="m") for i in range(3)]
    for _ in ids:  # all three go to the one registered worker, one after the other
        first.reply(first.next_request().request_id)
    outcomes = broker.client.wait(ids, 5.0, margin=0.0)
    assert all(outcomes[i].meta["tokens"] == ["a"] for i in ids)
    received = []
    while rogue.sock.poll(100):
        received.append(p.parse(rogue.sock.recv_multipart(), p.WORKER).command)
    assert p.Command.REQUEST not in received  # (DISCONNECTs answer its heartbeats: it is not registered)


def test_a_newer_worker_announcing_an_extra_limit_still_joins(broker):
    """A rolling upgrade: the new package version reports a limit the old one
    does not know. Only values both sides have are compared, so it joins."""
    broker.worker("m", "old")
    announce(broker, "new", info(limits={**LIMITS, "max_new_thing": 7}))
    wait_until(lambda: broker.status()["models"]["m"]["workers"] == 2)
    assert broker.status()["counters"].get("workers_refused", 0) == 0
