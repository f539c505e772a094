"""frontend/host_check.py: RFC 9112 §3.2 Host rule, through a real Falcon app."""

from __future__ import annotations

import json

import falcon
import pytest
from falcon.testing import StartResponseMock, create_environ

from frontend.host_check import RequireHost, host_problem


class Hello:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"ok": True}


@pytest.fixture(scope="module")
def app():
    app = falcon.App(middleware=[RequireHost()])
    app.add_route("/healthz", Hello())
    return app


def _call(app, *, host: str | None, version: str = "1.1") -> tuple[int, dict]:
    env = create_environ(path="/healthz", http_version=version)
    env.pop("HTTP_HOST", None)
    if host is not None:
        env["HTTP_HOST"] = host
    start = StartResponseMock()
    body = b"".join(app(env, start))
    return int(start.status.split()[0]), json.loads(body)


@pytest.mark.parametrize("host", ["example.org", "example.org:8888", "127.0.0.1:80", "[::1]:8888", "[::1]",
                                  "localhost", "xn--bcher-kva.example", "a_b.internal", "[fe80::1%25eth0]:80"])
def test_a_single_valid_host_passes(app, host):
    assert _call(app, host=host) == (200, {"ok": True})


def test_http_1_1_without_host_is_400_with_the_reason(app):
    status, body = _call(app, host=None)
    assert status == 400
    assert "Host header" in body["description"] and body["title"] == "Bad request"


def test_http_1_0_may_omit_host(app):
    assert _call(app, host=None, version="1.0") == (200, {"ok": True})


@pytest.mark.parametrize("host, words", [("a.example, b.example", "not several"), ("a.example,a.example", "not several"),
                                         ("a b", "not a host"), ("a/b", "not a host"), ("user@a", "not a host"),
                                         ("a:80x", "not a host"), ("[::1", "not a host"), ("\x00", "not a host")])
def test_several_or_malformed_hosts_are_400(app, host, words):
    status, body = _call(app, host=host)
    assert status == 400 and words in body["description"]
    assert _call(app, host=host, version="1.0")[0] == 400  # a Host that is sent must be valid on 1.0 too


def test_the_rule_itself():
    assert host_problem("HTTP/1.1", None) is not None
    assert host_problem("HTTP/1.0", None) is None
    assert host_problem("HTTP/1.1", "example.org") is None
