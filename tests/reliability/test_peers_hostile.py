"""Hostile peers on the ZeroMQ side, with raw pyzmq sockets against the real broker.

Clients and "workers" that send garbage, speak another protocol version,
send unknown commands, oversized messages or lying tensor headers, reply for
request ids they were never given, or stop reading: each message is refused
(answered with an error) or ignored, logged in broker.log, and the broker keeps
serving real requests. No frame from a peer is ever unpickled: pickles whose
unpickling would create a marker file are sent in every position.
"""

from __future__ import annotations

import json
import pickle
import struct
import time
import uuid

import pytest
import zmq

from intgrads_zmq.errors import BadRequest, IntgradsError, QueueFull
from intgrads_zmq.service import protocol as p
from intgrads_zmq.service.broker_client import BrokerClient
from intgrads_zmq.testing.reliability import pickle_bomb
from intgrads_zmq.testing.stack import wait_until

TEXT = "a great film with wonderful acting ."
REQ = p.Command.REQUEST.value


@pytest.fixture
def context():
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def raw(ctx, endpoint, identity=None, **options):
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if identity:
        sock.setsockopt(zmq.IDENTITY, identity)
    for name, value in options.items():
        sock.setsockopt(getattr(zmq, name), value)
    sock.connect(endpoint)
    return sock


def recv(sock, timeout=5.0):
    if not sock.poll(int(timeout * 1000)):
        raise TimeoutError("nothing received")
    return sock.recv_multipart()


def assert_serving(stack, text=TEXT):
    with BrokerClient(stack.broker.frontend) as client:
        payload = client.attribute(text, options={"n_steps": 2}, timeout=60)
    assert payload.meta["n_steps"] == 2 and payload.meta["tokens"][0] == "[CLS]"


def counters(stack):
    return stack.broker.status()["counters"]


def test_malformed_client_messages_are_refused_or_ignored_and_logged(main_stack, context, record):
    before = counters(main_stack).get("protocol_errors", 0)
    sock = raw(context, main_stack.broker.frontend)
    ignored = [
        [b"hello"],
        [b""],
        [b"IGC2", REQ, b"id1", p.dumps({"sequence": "a"})],  # a future protocol version
        [b"IGW1", REQ, b"id2", p.dumps({"sequence": "a"})],  # the worker header on the client socket
        [p.CLIENT, b"\x99", b"id3"],  # unknown command
        [p.CLIENT, b"\x01\x01", b"id3"],  # a two-byte command
        [p.CLIENT, REQ],  # no request id
        [p.CLIENT, REQ, b"x" * 65, b"{}"],  # id too long
        [p.CLIENT, REQ, b"\xff\xfe", b"{}"],  # id not ASCII
        [p.CLIENT, REQ, b"id4"],  # no body
        [p.CLIENT, p.Command.REPLY.value, b"id5", b"{}"],  # a command clients may not send
        [p.CLIENT, p.Command.HEARTBEAT.value],
        [p.CLIENT] + [b""] * 10_000,  # 10 000 frames
    ]
    for frames in ignored:
        sock.send_multipart(frames)
    refused = {  # well-formed envelopes with bad bodies: answered BadRequest
        "not-json": b"not json",
        "array": b"[1, 2]",
        "deep": b'{"sequence": "a", "options": {"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}",
        "digits": b'{"sequence": "a", "timeout": 1' + b"0" * 5000 + b"}",
        "nan": b'{"sequence": "a", "options": {"seed": NaN}}',
        "inf": b'{"sequence": "a", "timeout": 1e999}',
        "nested": b'{"sequence": "a", "options": {"fields": [["x"]]}}',
        "longmodel": p.dumps({"sequence": "a", "model": "m" * 1000}),
        "nosequence": b'{"options": {}}',
        "optionslist": b'{"sequence": "a", "options": []}',
        "negtimeout": b'{"sequence": "a", "timeout": -1}',
        "strtimeout": b'{"sequence": "a", "timeout": "10"}',
        "badutf8": b'{"sequence": "\xff"}',
        "pickle": pickle.dumps({"sequence": "a"}),
    }
    for rid, body in refused.items():
        sock.send_multipart([p.CLIENT, REQ, rid.encode(), body])
    answers = {}
    while len(answers) < len(refused):
        message = p.parse(recv(sock), p.CLIENT)
        answers[message.request_id] = message
    for rid, message in answers.items():
        assert message.command == p.Command.ERROR, rid
        error = p.parse_error(message.body)
        assert isinstance(error, BadRequest) and "malformed request" in error.description, (rid, error)
    assert not sock.poll(300)  # nothing was answered for the ignored messages
    assert_serving(main_stack)
    assert main_stack.broker.process.poll() is None
    dropped = counters(main_stack).get("protocol_errors", 0) - before
    assert dropped >= len(ignored) + len(refused)
    log = main_stack.broker.log_text()
    for reason in ("unexpected protocol header", "unknown command", "without a request id", "bad request id",
                   "request id is not ASCII", "missing frames", "client sent REPLY", "refused a malformed request",
                   "NaN is not allowed in JSON", "maximum recursion depth", "4300 digits", "out of range"):
        assert reason in log, reason
    record("hostile clients", f"{len(ignored)} malformed envelopes ignored, {len(refused)} malformed requests "
           "answered bad_request, all logged; broker kept serving")


def test_an_oversized_client_message_drops_only_that_connection(main_stack, context):
    sock = raw(context, main_stack.broker.frontend)
    accepted = counters(main_stack).get("requests_accepted", 0)
    closed = counters(main_stack).get("client_disconnections", 0)
    body = p.dumps({"sequence": "a " * (5 << 20)})  # 10 MiB > MAXMSGSIZE (8 MiB)
    sock.send_multipart([p.CLIENT, REQ, b"big", body])
    wait_until(lambda: counters(main_stack).get("client_disconnections", 0) > closed, 10,
               "the broker to drop the connection")
    assert counters(main_stack).get("requests_accepted", 0) == accepted
    assert not sock.poll(300)
    sock.send_multipart(p.envelope(p.CLIENT, p.Command.STATUS, "after"))  # the DEALER reconnects
    assert p.parse(recv(sock, 10), p.CLIENT).command == p.Command.STATUS_REPLY
    assert "client connection closed" in main_stack.broker.log_text()
    assert_serving(main_stack)


def test_a_client_that_stops_reading_does_not_stall_the_broker(main_stack, context):
    """With ROUTER_MANDATORY a blocking send to a peer at its high-water mark
    would stall the broker's single loop; its sends are non-blocking."""
    flood = raw(context, main_stack.broker.frontend, RCVHWM=10, RCVBUF=4096)
    undeliverable = counters(main_stack).get("undeliverable", 0)
    sent, started = 0, time.monotonic()
    while time.monotonic() - started < 3:
        try:
            flood.send_multipart(p.envelope(p.CLIENT, p.Command.STATUS, f"s{sent}"), zmq.NOBLOCK)
            sent += 1
        except zmq.Again:
            time.sleep(0.005)
    began = time.monotonic()
    assert_serving(main_stack)
    assert time.monotonic() - began < 5
    assert sent > 2000 and counters(main_stack).get("undeliverable", 0) > undeliverable  # its queue filled up
    assert "could not answer client" in main_stack.broker.log_text()


def _fake_worker(ctx, stack, model="fake"):
    identity = f"fake-{uuid.uuid4().hex[:6]}".encode()
    sock = raw(ctx, stack.broker.backend, identity)
    sock.send_multipart(p.envelope(p.WORKER, p.Command.READY) + [p.dumps({"model": model, "labels": ["x"]})])
    wait_until(lambda: any(w["identity"] == identity.decode() for w in stack.broker.status()["workers"]), 10,
               "the fake worker to register")
    return sock, identity


def beat(sock):
    """A registered worker must be heard from within 1.5 s (3 x 0.5 s heartbeats)."""
    sock.send_multipart(p.envelope(p.WORKER, p.Command.HEARTBEAT))


def _next_request(sock, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        beat(sock)
        if not sock.poll(200):
            continue
        message = p.parse(sock.recv_multipart(), p.WORKER)
        if message.command == p.Command.REQUEST:
            return message
    raise TimeoutError("the fake worker was given no request")


def _head(tensors, meta=None):
    return p.dumps({"meta": meta if meta is not None else {"tokens": ["a"]}, "tensors": tensors})


def test_malformed_worker_messages_and_a_lying_fake_worker(main_stack, context, record):
    stack = main_stack
    # The log is shared with the package's other tests (a worker fault logs its traceback there).
    log_before = len(stack.broker.log_text())
    # Before registering: garbage, other versions, unknown commands, bad READYs.
    loose = raw(context, stack.broker.backend, b"loose-peer")
    unregistered = [
        [b"garbage"],
        [b"IGW2", p.Command.READY.value, p.dumps({"model": "v2"})],
        [p.WORKER, b"\x42"],
        [p.WORKER, p.Command.READY.value, b"not json"],
        [p.WORKER, p.Command.READY.value, b"[1]"],
        [p.WORKER, p.Command.READY.value, b'{"labels": []}'],
        [p.WORKER, p.Command.READY.value, p.dumps({"model": "m" * 1000})],
        [p.WORKER, p.Command.READY.value, b'{"model": NaN}'],
        [p.WORKER, p.Command.REPLY.value, b"never-given", _head([])],
    ]
    for frames in unregistered:
        loose.send_multipart(frames)
    # A READY whose extras lie about their types must not break the broker.
    odd = raw(context, stack.broker.backend, b"odd-peer")
    odd.send_multipart(p.envelope(p.WORKER, p.Command.READY) + [p.dumps(
        {"model": "odd", "load_seconds": "abc", "device": ["x"] * 100, "placement": {"a": 1}})])
    wait_until(lambda: "odd" in stack.broker.status()["models"], 10, "the odd worker to register")
    odd.send_multipart(p.envelope(p.WORKER, p.Command.DISCONNECT))
    assert_serving(stack)

    late = counters(stack).get("late_replies_dropped", 0)
    sock, identity = _fake_worker(context, stack)
    sock.send_multipart(p.envelope(p.WORKER, p.Command.REPLY, "never-given") + [_head([])])

    # Replies to requests it was given, each a different lie.
    good_tensor = struct.pack("<4f", 1, 2, 3, 4)
    lies = {
        "shape larger than its frame": [_head([{"name": "x", "dtype": "float32", "shape": [1000]}]), good_tensor],
        "unknown dtype": [_head([{"name": "x", "dtype": "object", "shape": [1]}]), good_tensor],
        "negative shape": [_head([{"name": "x", "dtype": "float32", "shape": [-4]}]), good_tensor],
        "more frames than described": [_head([]), good_tensor],
        "fewer frames than described": [_head([{"name": "x", "dtype": "float32", "shape": [4]}])],
        "shape of floats": [_head([{"name": "x", "dtype": "float32", "shape": [4.0]}]), good_tensor],
        "header not JSON": [b"\x00\x01", good_tensor],
        "meta not an object": [_head([], meta=[1, 2])],
        "NaN in the header": [b'{"meta": {"x": NaN}, "tensors": []}'],
        "huge shape": [_head([{"name": "x", "dtype": "float32", "shape": [10**30, 10**30]}]), good_tensor],
        "a pickle as header": [pickle.dumps({"meta": {}, "tensors": []})],
    }
    with BrokerClient(stack.broker.frontend) as client:
        for what, frames in lies.items():
            rid = client.submit(TEXT, model="fake", timeout=30)
            given = _next_request(sock)
            assert given.request_id == rid
            sock.send_multipart(p.envelope(p.WORKER, p.Command.REPLY, rid) + frames)
            outcome = client.wait([rid], 30)[rid]
            assert isinstance(outcome, IntgradsError) and "malformed reply" in outcome.description, (what, outcome)
        # Errors: garbage is replaced, an absurd retry_after dropped.
        rid = client.submit(TEXT, model="fake", timeout=30)
        _next_request(sock)
        sock.send_multipart(p.envelope(p.WORKER, p.Command.ERROR, rid) + [b"\xff garbage"])
        outcome = client.wait([rid], 30)[rid]
        assert type(outcome) is IntgradsError and "malformed error" in outcome.description
        rid = client.submit(TEXT, model="fake", timeout=30)
        _next_request(sock)
        sock.send_multipart(p.envelope(p.WORKER, p.Command.ERROR, rid)
                            + [b'{"code": "overloaded", "description": "x", "retry_after": 1' + b"0" * 400 + b"}"])
        outcome = client.wait([rid], 30)[rid]
        assert isinstance(outcome, QueueFull) and outcome.retry_after is None
        # At HTTP level the same lie is a 500 with a JSON body.
        import threading

        answer = {}
        thread = threading.Thread(target=lambda: answer.update(r=stack.http.post(
            "/model/fake/", {"sequence": TEXT}, headers={"Content-Type": "application/json"})))
        thread.start()
        given = _next_request(sock)
        sock.send_multipart(p.envelope(p.WORKER, p.Command.REPLY, given.request_id) + lies["unknown dtype"])
        thread.join(30)
        status, _, body = answer["r"]
        assert status == 500 and "malformed reply" in json.loads(body)["description"]

        # A reply spoofing the id of a request that runs on a real worker is dropped;
        # the real answer reaches its client.
        real = client.submit("SLOW " + TEXT, model="tiny", options={"n_steps": 2}, timeout=60)
        stack.broker.busy_worker_pid(model="tiny")
        beat(sock)
        sock.send_multipart(p.envelope(p.WORKER, p.Command.REPLY, real) + [_head([], meta={"tokens": ["forged"]})])
        outcome = client.wait([real], 60)[real]
        assert not isinstance(outcome, IntgradsError)
        assert outcome.meta["tokens"][:3] == ["[CLS]", "[UNK]", "a"]  # the real answer ("slow" is not in the vocab)
    assert counters(stack).get("late_replies_dropped", 0) >= late + 2  # "never-given" and the spoofed id

    sock.send_multipart(p.envelope(p.WORKER, p.Command.DISCONNECT))
    wait_until(lambda: identity.decode() not in [w["identity"] for w in stack.broker.status()["workers"]], 10,
               "the fake worker to be removed")
    assert_serving(stack)
    log = stack.broker.log_text()
    for reason in ("dropped a malformed message from worker", "unexpected protocol header", "unknown command",
                   "refused worker", "READY needs a model name", "from unregistered worker",
                   "not its current request", "sent a malformed reply", "sent a malformed error",
                   "tensor data is 16 bytes", "unsupported dtype", "describes 0 tensors but has 1 frames"):
        assert reason in log, reason
    assert "Traceback" not in log[log_before:]
    record("hostile workers", f"{len(unregistered)} malformed messages before registering, {len(lies)} lying "
           "replies, 2 bad errors, 2 replies for ids never given: each ignored or turned into an error "
           "for its client, all logged; broker kept serving")


def test_no_message_from_a_peer_is_ever_unpickled(main_stack, context, tmp_path):
    marker = tmp_path / "unpickled"
    proof = tmp_path / "proof"
    pickle.loads(pickle_bomb(proof))
    assert proof.exists()
    bomb = pickle_bomb(marker)
    client = raw(context, main_stack.broker.frontend)
    client.send_multipart([p.CLIENT, REQ, b"pk1", bomb])
    client.send_multipart([p.CLIENT, bomb])
    client.send_multipart([p.CLIENT, p.Command.STATUS.value, b"pk2", bomb])
    client.send_multipart([bomb, bomb, bomb])
    sock, identity = _fake_worker(context, main_stack)
    sock.send_multipart([p.WORKER, p.Command.READY.value, bomb])
    sock.send_multipart([p.WORKER, p.Command.HEARTBEAT.value, bomb])
    with BrokerClient(main_stack.broker.frontend) as bc:
        for frames in ([bomb], [_head([{"name": "x", "dtype": "uint8", "shape": [len(bomb)]}]), bomb]):
            rid = bc.submit(TEXT, model="fake", timeout=30)
            _next_request(sock)
            sock.send_multipart(p.envelope(p.WORKER, p.Command.REPLY, rid) + frames)
            outcome = bc.wait([rid], 30)[rid]
            if frames[0] is bomb:
                assert isinstance(outcome, IntgradsError)
            else:  # raw bytes travel as bytes: the client gets them, unread
                assert bytes(outcome.tensors["x"].data) == bomb
        rid = bc.submit(TEXT, model="fake", timeout=30)
        _next_request(sock)
        sock.send_multipart(p.envelope(p.WORKER, p.Command.ERROR, rid) + [bomb])
        assert isinstance(bc.wait([rid], 30)[rid], IntgradsError)
    status, _, body = main_stack.http.post("/model/", bomb, headers={"Content-Type": "application/python-pickle"})
    assert status == 400
    sock.send_multipart(p.envelope(p.WORKER, p.Command.DISCONNECT))
    time.sleep(0.5)
    assert_serving(main_stack)
    assert not marker.exists()
