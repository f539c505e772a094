"""Has the HTTP client gone away? (checked while its request waits)

gunicorn hands the client's socket to the application in the WSGI environ
(``gunicorn.socket``). While a request waits for the broker nothing is read
from that socket, so it turns readable only when the peer closed it (EOF,
or a reset) or sent more bytes (a pipelined request). A non-blocking peek
tells the two apart without consuming anything. Other servers (and
``falcon.testing``) provide no socket: the client is then never "gone".
"""

from __future__ import annotations

import select
import socket
from collections.abc import Callable
from typing import Any

SOCKET_KEY = "gunicorn.socket"


def client_gone_check(env: dict[str, Any]) -> Callable[[], bool] | None:
    """A cheap callable answering "has this request's client disconnected?",
    or None when the server does not expose the socket."""
    sock = env.get(SOCKET_KEY)
    if not isinstance(sock, socket.socket):
        return None
    return lambda: _closed(sock)


def _closed(sock: socket.socket) -> bool:
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except (OSError, ValueError):  # reset by peer, or already closed on our side
        return True
