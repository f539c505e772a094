"""The decoding rules that keep one peer's message from stopping the broker.

Each of these inputs once escaped protocol.loads / RequestBody.from_json as an
exception other than ProtocolError (RecursionError, a plain ValueError,
OverflowError) or decoded into a value that re-encoding refused later, and
the broker's loop died of it (found by test_peers_hostile.py). Pure functions:
no processes here.
"""

from __future__ import annotations

import pytest

from intgrads_zmq.errors import QueueFull
from intgrads_zmq.service import protocol as p


@pytest.mark.parametrize(
    "data",
    [
        b"[" * 100_000 + b"]" * 100_000,  # RecursionError inside json
        b"1" + b"0" * 5000,  # ValueError: more than 4300 digits
        b'{"x": NaN}',
        b'{"x": Infinity}',
        b'{"x": -Infinity}',
        b'{"x": 1e400}',  # parses as inf, which dumps(allow_nan=False) refuses
        b"\xff\xfe\x00",
    ],
)
def test_loads_refuses_what_would_break_later(data):
    with pytest.raises(p.ProtocolError):
        p.loads(data)


def test_finite_json_still_round_trips():
    value = {"a": 1.5, "b": [1e300, -2.5e-300, 0.0], "c": 10**40}
    assert p.loads(p.dumps(value)) == value


def test_a_huge_integer_timeout_is_clamped_not_an_overflow():
    body = p.RequestBody.from_json(b'{"sequence": "a", "timeout": 1' + b"0" * 400 + b"}")
    assert body.timeout == p.MAX_TIMEOUT_SECONDS


@pytest.mark.parametrize("options", [b'{"fields": [["x"]]}', b'{"n_steps": {"a": 1}}', b'{"seed": [{}]}'])
def test_nested_options_are_refused(options):
    with pytest.raises(p.ProtocolError, match="scalars"):
        p.RequestBody.from_json(b'{"sequence": "a", "options": ' + options + b"}")


def test_every_accepted_request_can_be_re_encoded_for_a_worker():
    body = p.RequestBody.from_json(b'{"sequence": "a", "options": {"fields": ["step_sizes"], "seed": 3, "x": null}}')
    frames = p.request_frames(p.WORKER, "id", body)
    assert p.RequestBody.from_json(frames[-1]).options == body.options


@pytest.mark.parametrize("retry", [b"-1", b"1" + b"0" * 400, b"1e300", b'"soon"', b"true"])
def test_an_absurd_retry_after_from_a_peer_is_dropped(retry):
    error = p.parse_error([b'{"code": "overloaded", "description": "busy", "retry_after": ' + retry + b"}"])
    assert isinstance(error, QueueFull) and error.retry_after is None


def test_a_sane_retry_after_is_kept_and_garbage_errors_are_still_errors():
    assert p.parse_error([b'{"code": "overloaded", "description": "x", "retry_after": 2}']).retry_after == 2
    with pytest.raises(p.ProtocolError):
        p.parse_error_strict([b"\xff"])
    assert p.parse_error([b"\xff"]).description == "malformed error reply"


def test_a_result_the_wire_refuses_becomes_an_error_not_a_dead_worker(tiny_bert, monkeypatch):
    """A model that diverges (NaN logits) yields metadata dumps() refuses; the
    worker used to raise out of its loop and exit, so such an input killed two
    workers like a poison request. Now it is answered compute_failed."""
    import intgrads_zmq.engine as engine
    from intgrads_zmq.service.worker import Computer, Job, WorkerConfig

    real = engine.attribute

    def diverging(*args, **kwargs):
        result = real(*args, **kwargs)
        result.meta["f_input"] = float("nan")
        return result

    monkeypatch.setattr(engine, "attribute", diverging)
    computer = Computer(tiny_bert, WorkerConfig(connect="inproc://unused"))
    body = p.RequestBody(model=None, sequence="a great film", options={"n_steps": 2}, timeout=30.0)
    frames = computer.handle(Job("r1", body, deadline=float("inf")))
    message = p.parse(frames, p.WORKER)
    assert message.command == p.Command.ERROR
    assert p.parse_error(message.body).code == "compute_failed"
