"""Is the HTTP port reachable from other machines? Then say what that means.

gunicorn reads request headers and bodies itself, one thread per connection:
a few dozen clients sending one byte every few seconds hold every thread. On
the loopback interface only local programs can do that; on any other address
the documentation's answer is a buffering proxy (nginx) in front, which
``intgrads -h 0.0.0.0`` points to with this warning. Pure, no I/O: a host
name other than ``localhost`` is not resolved, it is taken as reachable.
"""

from __future__ import annotations

import ipaddress

README_SECTION = "Behind a proxy"


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 (with or without brackets, or IPv4-mapped) and localhost."""
    name = host.strip().strip("[]").lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(name.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def public_bind_warning(host: str) -> str | None:
    """The warning to print when gunicorn binds ``host``, or None for loopback."""
    if is_loopback(host):
        return None
    where = "every interface" if host.strip("[]") in ("0.0.0.0", "::", "") else host
    return (f"HTTP is bound to {where}, reachable from other machines. gunicorn reads requests itself, one "
            f"thread per connection, so a few dozen slow clients can hold every thread "
            f"(INTGRADS_HTTP_THREADS). Put a buffering proxy such as nginx in front and bind gunicorn to "
            f"127.0.0.1: see the README section \"{README_SECTION}\" (deploy/nginx/intgrads.conf).")
