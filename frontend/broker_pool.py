"""One broker connection per thread, created after gunicorn forks.

ZeroMQ sockets must not cross threads, and a context must not cross a fork.
Each thread lazily gets its own :class:`BrokerClient` on a context owned by the
current process (re-created if the pid changes, i.e. after a fork).
"""

from __future__ import annotations

import os
import threading
from typing import Any

import zmq

from intgrads_zmq.service.broker_client import BrokerClient
from intgrads_zmq.service.security import CurveClient, client_curve_from_env

FROM_ENV: Any = object()  # BrokerPool's default key pair: the one the environment names


class BrokerPool:
    """Hands each thread its own client to the broker.

    ``curve``: the frontend's key pair for a broker whose frontend port uses
    CURVE; by default the one $INTGRADS_SERVER_KEY / $INTGRADS_CLIENT_KEY name
    (as FrontendSettings reads them), so a pool made from the settings' broker
    endpoint alone still authenticates."""

    def __init__(self, endpoint: str, connect_wait: float, curve: CurveClient | None = FROM_ENV) -> None:
        self.endpoint = endpoint
        self.connect_wait = connect_wait
        self.curve = client_curve_from_env() if curve is FROM_ENV else curve
        self._local = threading.local()
        self._lock = threading.Lock()
        self._context: zmq.Context | None = None
        self._pid = -1

    def _process_context(self) -> zmq.Context:
        with self._lock:
            if self._context is None or self._pid != os.getpid():
                self._context = zmq.Context()
                self._pid = os.getpid()
            return self._context

    def client(self) -> BrokerClient:
        client = getattr(self._local, "client", None)
        if client is None or getattr(self._local, "pid", None) != os.getpid():
            client = BrokerClient(self.endpoint, context=self._process_context(),
                                  connect_wait=self.connect_wait, curve=self.curve)
            self._local.client, self._local.pid = client, os.getpid()
        return client
