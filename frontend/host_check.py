"""Refuse an HTTP/1.1 request without exactly one valid Host header (RFC 9112 §3.2).

The RFC makes this a 400 for every server; gunicorn does not check (it passes
the request on with no HTTP_HOST, and joins repeated Host lines with ", "
into one value), so the application does. HTTP/1.0 requests may omit Host.
The check is lenient about what a name may be and strict about what makes
the value ambiguous: a comma (two Host lines), whitespace inside, or
characters no host or port can contain.
"""

from __future__ import annotations

import re

import falcon

# uri-host [ ":" port ]: a reg-name or IPv4 address (unreserved, pct-encoded,
# sub-delims but the comma), or an IP literal in brackets.
_HOST = re.compile(r"(?:[A-Za-z0-9\-._~%!$&'()*+;=]*|\[[0-9A-Fa-f:.vV]+(?:%25[A-Za-z0-9\-._~%]+)?\])(?::[0-9]*)?")


def host_problem(protocol: str, host: str | None) -> str | None:
    """Why this request's Host is refused, or None when it is acceptable."""
    if host is None:
        return "an HTTP/1.1 request must carry a Host header" if protocol == "HTTP/1.1" else None
    if "," in host:
        return "a request must carry one Host header, not several"
    if not _HOST.fullmatch(host):
        return f"the Host header {host[:100]!r} is not a host name or address with an optional port"
    return None


class RequireHost:
    """Falcon middleware: 400 for a request whose Host RFC 9112 §3.2 refuses."""

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        problem = host_problem(req.env.get("SERVER_PROTOCOL", ""), req.env.get("HTTP_HOST"))
        if problem:
            raise falcon.HTTPBadRequest(title="Bad request", description=problem)
