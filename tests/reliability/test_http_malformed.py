"""Malformed HTTP: a corpus of bad requests, stalled clients, and a schemathesis fuzz run.

Each bad request gets a 4xx; where the application answers, the body is a JSON
error with a title and a description. Gunicorn's own HTTP parser answers the
requests it cannot parse (bad request lines, headers, framing) before Falcon
runs: those 4xx carry gunicorn's short text body and are accepted as such
(``answered_by="gunicorn"`` in intgrads_zmq/testing/reliability.py). After all of it
the same gunicorn process still serves good requests and logged no traceback.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from intgrads_zmq.testing.reliability import bad_requests, check_bad_answer, run_schemathesis
from intgrads_zmq.testing.stack import descendants, raw_http, read_response

GOOD = b'{"sequence": "a great film", "n_steps": 2}'
FUZZ_EXAMPLES = 100  # per operation; GETs without parameters stop at 1


def _good_request(stack) -> int:
    status, _, _ = stack.http.post("/model/", GOOD, headers={"Content-Type": "application/json"}, timeout=60)
    return status


def test_a_corpus_of_malformed_requests_gets_4xx_json_and_the_server_keeps_serving(main_stack, tmp_path, record):
    marker = tmp_path / "unpickled-by-the-server"
    corpus = bad_requests(marker)
    assert len(corpus) >= 50
    http_pids = descendants(main_stack.http.process.pid)
    problems, by_whom, statuses = [], {"app": 0, "gunicorn": 0, "closed": 0}, {}
    for bad in corpus:
        status, headers, body = raw_http(main_stack.port, bad.raw, timeout=30, half_close=bad.half_close)
        problem = check_bad_answer(bad, status, headers, body)
        if problem:
            problems.append(f"{bad.name}: {problem}")
        json_body = headers.get("content-type", "").startswith("application/json")
        by_whom["closed" if status is None else "app" if json_body else "gunicorn"] += 1
        statuses[status] = statuses.get(status, 0) + 1
    assert not problems, "\n".join(problems)
    assert _good_request(main_stack) == 200
    assert descendants(main_stack.http.process.pid) == http_pids  # no gunicorn worker died
    assert not marker.exists()
    log = main_stack.http.log.read_text(errors="replace")
    assert "Traceback" not in log and "unexpected error" not in log
    record("malformed HTTP requests", f"{len(corpus)} tried: {by_whom['app']} answered 4xx with a JSON error by "
           f"the app, {by_whom['gunicorn']} 4xx by gunicorn's HTTP parser, {by_whom['closed']} connection closed "
           f"unanswered (not HTTP at all: a TLS ClientHello); statuses {statuses}")


def test_a_chunked_upload_is_read(main_stack):
    """Falcon's bounded_stream reads nothing without a Content-Length; the
    frontend reads gunicorn's de-chunked stream instead (a fix: chunked
    uploads used to be answered "the body is empty")."""
    body = b'{"sequence": "a great film", "n_steps": 3}'
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:9], body[9:])) + b"0\r\n\r\n"
    raw = (b"POST /model/?format=json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
           b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked)
    status, _, answer = raw_http(main_stack.port, raw, timeout=60)
    assert status == 200 and json.loads(answer)["n_steps"] == 3


def test_stalled_and_truncated_bodies_do_not_block_other_clients(main_stack, record):
    """Slowloris-ish: clients that announce a body and send part of it hold a
    gunicorn thread each (gthread reads a body with a blocking socket), but the
    other threads keep serving; when such a client gives up (EOF), its request
    is answered 400 with JSON at once."""
    stalled = []
    head = b"POST /model/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    for _ in range(6):
        sock = socket.create_connection(("127.0.0.1", main_stack.port), timeout=2)
        sock.sendall(head + b'{"sequence": "a gr')
        stalled.append(sock)
    headers_only = socket.create_connection(("127.0.0.1", main_stack.port), timeout=2)
    headers_only.sendall(b"POST /model/ HTTP/1.1\r\nHost: x\r\nContent-Le")  # stalls inside the headers
    try:
        started = time.monotonic()
        assert _good_request(main_stack) == 200
        assert time.monotonic() - started < 10
        answers = []
        for sock in stalled:
            sock.settimeout(0.5)
            with pytest.raises(socket.timeout):  # nothing is answered while the body may still come
                sock.recv(1)
            sock.settimeout(10)
            sock.shutdown(socket.SHUT_WR)
            answers.append(read_response(sock))
        for status, _, body in answers:
            assert status == 400, body[:200]
            assert json.loads(body)["description"]
    finally:
        for sock in [*stalled, headers_only]:
            sock.close()
    # the truncated-header connection was simply dropped; service goes on
    assert _good_request(main_stack) == 200
    record("stalled clients", "6 partial bodies + 1 partial header held open while a good request "
           "was served; each partial body answered 400 JSON on EOF")


def test_parallel_partial_bodies_with_a_short_client_timeout(main_stack):
    """The same from many threads at once, each client giving up after 1 s."""
    results = []

    def stall() -> None:
        raw = (b"POST /model/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Content-Length: 50\r\nConnection: close\r\n\r\n{\"sequence\"")
        results.append(raw_http(main_stack.port, raw, timeout=5, pause=1.0, half_close=True))

    threads = [threading.Thread(target=stall) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(results) == 8
    for status, _, body in results:
        assert status == 400 and json.loads(body)["title"]
    assert _good_request(main_stack) == 200


def test_schemathesis_finds_no_server_error_and_no_hang(main_stack, tmp_path, record):
    """Property-based fuzzing from GET /openapi.json: positive and negative
    cases for every operation, with the not_a_server_error check and a 30 s
    per-request timeout."""
    result = run_schemathesis(main_stack.http.url, examples=FUZZ_EXAMPLES, seed=1234, folder=tmp_path,
                              timeout=240, phases="fuzzing")
    assert result.returncode == 0, result.output[-4000:]
    assert not result.server_errors, result.server_errors[:3]
    assert result.examples >= 2 * FUZZ_EXAMPLES, result.output[-2000:]  # both POST operations
    assert _good_request(main_stack) == 200
    record("schemathesis", f"{result.examples} requests in {result.seconds:.0f} s, statuses "
           f"{dict(sorted(result.statuses.items()))}, no 5xx, no hang")
