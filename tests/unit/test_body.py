"""frontend/body.py: the body read bounded in size and time, strict chunk framing.

The gunicorn cases use gunicorn's own body readers (Body, LengthReader,
ChunkedReader, SocketUnreader) over a real socket pair, the client end held
open as a stalled client would hold it: a read that waited for more bytes
would end in a BodyTimeout instead of the answer each test expects.
"""

from __future__ import annotations

import json
import socket
import threading
from types import SimpleNamespace

import falcon
import pytest
from falcon.testing import create_environ
from gunicorn.http.body import Body, ChunkedReader, LengthReader
from gunicorn.http.unreader import SocketUnreader

from frontend.body import BodyTimeout, read_json_body, strict_chunks
from intgrads_zmq.errors import BadRequest, PayloadTooLarge

LIMIT = 1000
PATIENT = 30.0  # a deadline no test here should reach unless the code waits wrongly


@pytest.fixture
def pair():
    server, client = socket.socketpair()
    yield server, client
    server.close()
    client.close()


def _gunicorn_request(server: socket.socket, *, length: int | None) -> tuple[falcon.Request, SocketUnreader]:
    unreader = SocketUnreader(server)
    if length is None:
        reader = ChunkedReader(SimpleNamespace(unreader=unreader), unreader)
        env = create_environ(method="POST", path="/model/", headers={"Transfer-Encoding": "chunked"})
        env.pop("CONTENT_LENGTH", None)
    else:
        reader = LengthReader(unreader, length)
        env = create_environ(method="POST", path="/model/", headers={"Content-Length": str(length)})
    env["wsgi.input"] = Body(reader)
    env["wsgi.input_terminated"] = True
    env["gunicorn.socket"] = server
    return falcon.Request(env), unreader


def _plain_request(body: bytes) -> falcon.Request:
    return falcon.Request(create_environ(method="POST", path="/model/", body=body))


def test_a_json_body_is_parsed_whatever_the_content_type():
    req = _plain_request(b'{"sequence": "a fine film"}')
    assert read_json_body(req, LIMIT, timeout=PATIENT) == {"sequence": "a fine film"}


@pytest.mark.parametrize("body, words", [(b"", "empty"), (b"  \n", "empty"), (b"{nope", "not valid JSON"),
                                         (b'{"a": NaN}', "not valid JSON"), (b"\xff\xfe{}", "UTF-8")])
def test_bad_bodies_are_400(body, words):
    with pytest.raises(BadRequest, match=words):
        read_json_body(_plain_request(body), LIMIT)


def test_a_declared_length_over_the_limit_is_413_after_draining_it():
    req = _plain_request(b"x" * (LIMIT + 1))
    with pytest.raises(PayloadTooLarge, match=f"{LIMIT + 1} bytes"):
        read_json_body(req, LIMIT)
    assert req.bounded_stream.read() == b""  # drained, so the client could finish sending


def test_a_content_length_body_from_gunicorn_is_read_and_the_socket_left_as_found(pair):
    server, client = pair
    body = json.dumps({"sequence": "ok"}).encode()
    client.sendall(body)
    req, unreader = _gunicorn_request(server, length=len(body))
    assert read_json_body(req, LIMIT, timeout=PATIENT) == {"sequence": "ok"}
    assert unreader.sock is server and server.gettimeout() is None


def _trickle(client: socket.socket, data: bytes, every: float, stop: threading.Event) -> threading.Thread:
    def send() -> None:
        for byte in data:
            if stop.wait(every):
                return
            try:
                client.sendall(bytes([byte]))
            except OSError:
                return
    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("chunked", [False, True])
def test_a_body_trickling_in_gets_408_at_the_deadline_not_per_byte(pair, chunked):
    """One byte every 50 ms would never trip a per-recv timeout of 0.3 s;
    the deadline covers the whole body."""
    server, client = pair
    body = b'{"sequence": "' + b"a" * 200 + b'"}'
    raw = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if chunked else body
    stop = threading.Event()
    sender = _trickle(client, raw, 0.05, stop)
    req, unreader = _gunicorn_request(server, length=None if chunked else len(body))
    try:
        with pytest.raises(BodyTimeout, match="0.3 s") as caught:
            read_json_body(req, LIMIT, timeout=0.3)
    finally:
        stop.set()
        sender.join()
    assert caught.value.status == 408 and caught.value.code == "body_timeout"
    assert unreader.sock is server and server.gettimeout() is None
    assert req.env["wsgi.input"].failed  # gunicorn will close this connection, not reuse it


def test_a_chunked_body_is_read_and_what_follows_it_goes_back_to_gunicorn(pair):
    server, client = pair
    client.sendall(b'4;ext=1\r\n{"a"\r\n6 ; q="a \\" b"\r\n: [1]}\r\n0\r\nX-Trailer: yes\r\n\r\nGET /next HTTP/1.1\r\n')
    req, unreader = _gunicorn_request(server, length=None)
    assert read_json_body(req, LIMIT, timeout=PATIENT) == {"a": [1]}
    assert unreader.read() == b"GET /next HTTP/1.1\r\n"


def test_a_huge_chunk_size_is_413_as_soon_as_it_is_parsed(pair):
    server, client = pair
    client.sendall(b"FFFFFFFFFFFFFFFFFFFFFFFF\r\nabc")  # and then nothing: the client waits
    req, _ = _gunicorn_request(server, length=None)
    with pytest.raises(PayloadTooLarge, match="chunk of 79228162514264337593543950335 bytes"):
        read_json_body(req, LIMIT, timeout=PATIENT)


def test_chunks_adding_up_past_the_limit_are_413_at_the_first_one_that_does(pair):
    server, client = pair
    client.sendall(b"%x\r\n%s\r\n%x\r\n" % (LIMIT - 10, b" " * (LIMIT - 10), 11))
    req, _ = _gunicorn_request(server, length=None)
    with pytest.raises(PayloadTooLarge, match="chunk of 11 bytes"):
        read_json_body(req, LIMIT, timeout=PATIENT)


@pytest.mark.parametrize("raw, words", [
    (b'2\n{}\n0\n\n', "bare LF"),
    (b'2\r\n{}\n0\r\n\r\n', "bare LF"),
    (b'2\r\n{}\r\n0\r\n\n', "bare LF"),
    (b'2\r\r\n{}\r\n0\r\n\r\n', "bare CR"),
    (b'2\rx', "bare CR"),
    (b'zz\r\n', "invalid chunk size"),
    (b'\r\n', "invalid chunk size"),
    (b' 2\r\n', "invalid chunk size"),
    (b'2;=x\r\n', "invalid chunk extension"),
    (b'2;a="open\r\n', "invalid chunk extension"),
    (b'2;a b\r\n', "invalid chunk extension"),
    (b'2\r\n{}}\r\n', "longer than its size"),
    (b'1' * 5000, "over 4096 bytes"),
])
def test_malformed_chunk_framing_is_400_without_waiting_for_more(pair, raw, words):
    server, client = pair
    client.sendall(raw)
    req, _ = _gunicorn_request(server, length=None)
    with pytest.raises(BadRequest, match=words):
        read_json_body(req, LIMIT, timeout=PATIENT)


def test_a_chunked_body_cut_short_is_400(pair):
    server, client = pair
    client.sendall(b"10\r\n{}")
    client.shutdown(socket.SHUT_WR)
    req, _ = _gunicorn_request(server, length=None)
    with pytest.raises(BadRequest, match="ended before its last chunk"):
        read_json_body(req, LIMIT, timeout=PATIENT)


def test_strict_chunks_yields_the_data_as_it_arrives(pair):
    """The parser hands over bytes as they come (no waiting for a whole chunk)."""
    server, client = pair
    client.sendall(b"8\r\nabcd")
    chunks = strict_chunks(SocketUnreader(server), LIMIT)
    assert next(chunks) == b"abcd"
    client.sendall(b"efgh\r\n0\r\n\r\n")
    assert b"".join(chunks) == b"efgh"


def test_no_deadline_means_the_socket_is_left_alone(pair):
    server, client = pair
    client.sendall(b"{}")
    req, unreader = _gunicorn_request(server, length=2)
    assert read_json_body(req, LIMIT) == {}
    assert unreader.sock is server and server.gettimeout() is None
