"""The worker's two threads at their edges: what the compute thread refuses
before computing, and how the link thread hands answers to a broker that may
not be there.

Real pyzmq sockets (ipc), the real tiny BERT; no broker process: a bare ROUTER
stands in for it where one is needed.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import zmq

from intgrads_zmq.encoding.reply_size import tensor_bytes_for
from intgrads_zmq.errors import IntgradsError, PayloadTooLarge
from intgrads_zmq.payload import AttributionPayload, RawTensor
from intgrads_zmq.service import protocol as p
from intgrads_zmq.service.security import CurveClient
from intgrads_zmq.service.worker import BIG_REPLY_BYTES, BrokerLink, Computer, Job, WorkerConfig

TEXT = "a great film with a terrible ending"


def handle(computer: Computer, options: dict[str, Any], max_reply: int | None
           ) -> tuple[AttributionPayload | IntgradsError, list[Any]]:
    """The answer, and every PROGRESS the computation sent on the way."""
    sent: list[Any] = []
    job = Job("r-1", p.RequestBody(None, TEXT, options, 60.0, max_reply=max_reply), time.monotonic() + 60)
    message = p.parse(computer.handle(job, sent.append), p.WORKER)
    if message.command == p.Command.ERROR:
        return p.parse_error(message.body), sent
    return p.parse_reply(message.body), sent


def test_a_reply_over_the_clients_bound_is_refused_before_the_path_runs(tiny_bert):
    computer = Computer(tiny_bert, WorkerConfig(connect="inproc://unused"))
    tokens = tiny_bert.encode(TEXT, 512).length
    fields = ["integrated_gradients", "intermediate_gradients", "step_sizes", "intermediates"]
    size = tensor_bytes_for(tokens, 8, tiny_bert.size_hints()["hidden"], fields)
    refused, progress = handle(computer, {"n_steps": 8, "fields": fields}, max_reply=size - 1)
    assert isinstance(refused, PayloadTooLarge) and refused.status == 413 and refused.field == "fields"
    assert f"{size:,} bytes" in refused.description
    assert progress == []  # not one chunk ran
    served, progress = handle(computer, {"n_steps": 8, "fields": fields}, max_reply=size)  # at the bound
    assert isinstance(served, AttributionPayload) and progress
    assert sum(len(t.data) for t in served.tensors.values()) == size


def test_every_class_multiplies_only_the_per_class_tensors(tiny_bert):
    computer = Computer(tiny_bert, WorkerConfig(connect="inproc://unused", limits={"max_target_classes": 2}))
    fields = ["integrated_gradients", "step_sizes"]
    served, _ = handle(computer, {"n_steps": 4, "fields": fields, "target": "all"}, max_reply=1 << 30)
    assert isinstance(served, AttributionPayload)
    exact = sum(len(t.data) for t in served.tensors.values())
    refused, progress = handle(computer, {"n_steps": 4, "fields": fields, "target": "all"}, max_reply=exact - 1)
    assert isinstance(refused, PayloadTooLarge) and f"{exact:,} bytes" in refused.description and not progress


def reply_frames(request_id: str, size: int) -> list[Any]:
    tensor = RawTensor("float32", (size // 4,), bytes(size))
    return p.reply_frames(p.WORKER, request_id, {"tokens": ["a"]}, {"x": tensor})


class Link:
    """A BrokerLink with the compute side's PUSH socket, as run_worker wires them."""

    def __init__(self, connect: str, context: zmq.Context, curve: CurveClient | None = None) -> None:
        info = p.WorkerInfo("m", description={}, labels=["neg", "pos"], defaults={}, limits={},
                            dtype="float32", pid=1)
        endpoint = f"inproc://replies-{id(self)}"
        self.link = BrokerLink(WorkerConfig(connect=connect, heartbeat_interval=0.2, curve=curve), info, context, endpoint)
        self.push = context.socket(zmq.PUSH)
        self.push.connect(endpoint)
        self.link.start()

    def stop(self) -> float:
        started = time.monotonic()
        self.link.stopping.set()
        self.link.join(15)
        self.push.close(linger=0)
        return time.monotonic() - started


def refusing_broker(context: zmq.Context, endpoint: str, keys: Path) -> tuple[zmq.Socket, Any]:
    """A CURVE ROUTER whose ZAP handler admits no key: a broker that refuses
    this worker. libzmq then drops the worker's pipe, so a blocking send waits
    for ever (what the link thread used to do with its answers)."""
    from zmq.auth.thread import ThreadAuthenticator

    broker_public, broker_secret = zmq.auth.create_certificates(str(keys), "broker")
    zmq.auth.create_certificates(str(keys), "worker")
    auth = ThreadAuthenticator(context)
    auth.start()
    auth.configure_curve(domain="*", location=str(keys / "nobody"))  # an empty list of keys
    router = context.socket(zmq.ROUTER)
    router.curve_secretkey, router.curve_publickey = zmq.auth.load_certificate(broker_secret)[::-1]
    router.curve_server = True
    router.bind(endpoint)
    return router, auth


def test_a_refusing_broker_never_blocks_the_link_holding_an_answer(tmp_path):
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "nobody").mkdir()
    context = zmq.Context()
    endpoint = f"ipc://{tmp_path}/backend"
    router, auth = refusing_broker(context, endpoint, keys)
    curve = CurveClient(keys / "worker.key_secret", keys / "broker.key")
    link = Link(endpoint, context, curve)
    try:
        time.sleep(0.5)  # the handshake is refused
        link.push.send_multipart(reply_frames("r-1", 16))
        link.push.send_multipart(reply_frames("r-2", 16))
        time.sleep(1.0)  # several turns of the loop with an answer it cannot send
        assert link.link.is_alive()
        assert link.stop() < 10  # the stop is heard, and the flush gives up in time
        assert not link.link.is_alive()
    finally:
        router.close(linger=0)
        auth.stop()
        context.destroy(linger=0)


def test_stopping_with_an_answer_nobody_takes_ends_within_the_flush_wait(tmp_path):
    context = zmq.Context()
    link = Link(f"ipc://{tmp_path}/nobody", context)
    try:
        link.push.send_multipart(reply_frames("r-1", 16))
        time.sleep(0.3)
        assert link.stop() < 10
        assert not link.link.is_alive()
    finally:
        context.destroy(linger=0)


def test_a_big_reply_is_announced_before_it_goes(tmp_path):
    context = zmq.Context()
    endpoint = f"ipc://{tmp_path}/backend"
    router = context.socket(zmq.ROUTER)
    router.bind(endpoint)
    link = Link(endpoint, context)
    try:
        link.push.send_multipart(reply_frames("small", 16))
        link.push.send_multipart(reply_frames("big", BIG_REPLY_BYTES))
        seen: list[tuple[p.Command, str | None]] = []
        deadline = time.monotonic() + 15
        while (p.Command.REPLY, "big") not in seen and time.monotonic() < deadline:
            if router.poll(200):
                message = p.parse(router.recv_multipart(copy=False)[1:], p.WORKER)
                if message.command in (p.Command.REPLY, p.Command.SENDING):
                    seen.append((message.command, message.request_id))
                if message.command == p.Command.SENDING:
                    assert p.Sending.from_json(message.body[0]).bytes > BIG_REPLY_BYTES
        assert seen == [(p.Command.REPLY, "small"), (p.Command.SENDING, "big"), (p.Command.REPLY, "big")]
    finally:
        link.stop()
        router.close(linger=0)
        context.destroy(linger=0)
