"""A broker that answers and then exits: its last answers must be readable.

Regression (CI, SIGTERM with requests in flight): the broker sent the last
reply and closed its sockets at once. A DEALER connected with ZMQ_IMMEDIATE
discards the messages it has not read yet when its connection goes away, so
a frontend thread that was a little slow to read turned a finished request
into 503. The broker now stays open ``ANSWER_GRACE`` after its last answer.
Real pyzmq sockets on ipc endpoints, the real broker loop in a thread.
"""

from __future__ import annotations

import threading
import time
import uuid

import zmq

from intgrads_zmq.payload import AttributionPayload
from intgrads_zmq.service.broker import ANSWER_GRACE, Broker, BrokerSettings
from intgrads_zmq.service.broker_client import BrokerClient

from .test_broker_logic import FakeWorker, wait_until


def test_libzmq_drops_unread_answers_when_the_connection_goes(tmp_path):
    """Why the broker must not close at once: the premise, checked on libzmq itself."""
    context = zmq.Context()
    try:
        router = context.socket(zmq.ROUTER)
        router.bind(f"ipc://{tmp_path}/r")
        client = BrokerClient(f"ipc://{tmp_path}/r", context=context)
        client.socket.send(b"hello")
        assert router.poll(5000)
        peer, _ = router.recv_multipart()
        router.send_multipart([peer, b"answer"])
        assert client.socket.poll(5000)  # the answer has arrived, unread
        router.close(linger=2000)
        assert client.monitor.poll(5000)  # the disconnect
        time.sleep(0.2)
        assert not client.socket.poll(0)  # ... and the unread answer is gone
        client.close()
    finally:
        context.destroy(linger=0)


def test_an_answer_given_while_stopping_is_still_readable_a_moment_later(tmp_path):
    context = zmq.Context()
    tag = uuid.uuid4().hex[:6]
    settings = BrokerSettings(frontend=f"ipc://{tmp_path}/f{tag}", backend=f"ipc://{tmp_path}/b{tag}",
                              shutdown_grace=10.0)
    broker = Broker(settings, context)
    broker.bind()
    thread = threading.Thread(target=broker.run, daemon=True)
    thread.start()
    worker = FakeWorker(context, settings.backend, "m", "m-w0")
    client = BrokerClient(settings.frontend, context=context)
    try:
        worker.ready()
        wait_until(lambda: client.status()["workers"])
        request_id = client.submit("text")
        assert worker.next_request().request_id == request_id
        broker.request_stop()  # SIGTERM: the running request is waited for
        wait_until(lambda: broker.stopping)
        worker.reply(request_id)
        assert client.socket.poll(5000)  # the answer is here, and the frontend is busy elsewhere...
        time.sleep(ANSWER_GRACE / 2)
        outcome = client.wait([request_id], timeout=2, margin=0.0)[request_id]
        assert isinstance(outcome, AttributionPayload), outcome
        thread.join(10)
        assert not thread.is_alive()
    finally:
        worker.close()
        client.close()
        context.destroy(linger=0)
