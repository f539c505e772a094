"""ZeroMQ endpoint helpers: defaults, and whether an endpoint leaves the host."""

from __future__ import annotations

import ipaddress
import os

LOOPBACK_NAMES = {"localhost", "ip6-localhost"}
BROKER_ENV = "INTGRADS_BROKER"
DEFAULT_CLIENT_ENDPOINT = "tcp://127.0.0.1:5555"  # where frontends reach the broker (its frontend)
DEFAULT_WORKER_ENDPOINT = "tcp://127.0.0.1:5556"  # where local workers reach the broker (its backend)


def is_local_endpoint(endpoint: str) -> bool:
    """True for ipc://, inproc:// and tcp:// on a loopback address."""
    scheme, _, rest = endpoint.partition("://")
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp":
        return False
    host = rest.rsplit(":", 1)[0].strip("[]")
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # '*', an interface name or a host name: assume reachable


def broker_endpoint() -> str:
    """Where frontends find the broker: $INTGRADS_BROKER or the loopback default."""
    return os.environ.get(BROKER_ENV, DEFAULT_CLIENT_ENDPOINT)
