"""Load: 16 concurrent HTTP clients, 416 requests of mixed lengths and options.

The broker's queue bound is 6 here, so some requests are answered 503
"overloaded" (with Retry-After) on purpose; clients retry those. Every request
must end answered (no connection error, no timeout), every success must equal,
byte for byte, the answer to the same request sent alone (same seed), and no
status other than 200 and the deliberate 503 may appear.
"""

from __future__ import annotations

from intgrads_zmq.testing.reliability import run_load

CLIENTS = 16
PER_CLIENT = 26


def test_concurrent_mixed_load_is_all_answered_and_byte_identical(main_stack, specs, expected, record):
    accepted_before = main_stack.broker.status()["counters"].get("requests_accepted", 0)
    result = run_load(main_stack.http.url, specs, expected, clients=CLIENTS, per_client=PER_CLIENT, seed=1)
    record("load (test)", result.summary())
    assert result.requests == CLIENTS * PER_CLIENT >= 400
    assert not result.lost, result.lost[:5]
    assert not result.errors, result.errors[:5]
    assert not result.mismatched, result.mismatched[:5]
    assert result.gave_up_503 == 0
    assert result.ok == result.identical == result.requests
    assert result.rejected_503 > 0, "the queue bound of 6 was never reached: no deliberate 503 was seen"
    assert set(result.statuses) == {200, 503}
    status = main_stack.broker.status()
    assert status["models"]["tiny"]["queued"] == 0
    assert all(w["state"] == "idle" for w in status["workers"])
    accepted = status["counters"]["requests_accepted"] - accepted_before
    assert accepted >= result.requests  # batch requests count one per text


def test_the_load_mix_covers_every_option(specs):
    """The mix is what the module docstring claims: every method, baseline and
    format, random baselines with seeds, batches, several text lengths."""
    from intgrads_zmq.options import BASELINES, METHODS

    bodies = [s.body for s in specs]
    assert {b.get("method", "gausslegendre") for b in bodies} == set(METHODS)
    assert {b.get("baseline", "pad") for b in bodies} == set(BASELINES)
    assert {s.fmt for s in specs} == {"torch", "safetensors", "json"}
    assert any("seed" in b and b.get("baseline", "").startswith("rand-") for b in bodies)
    assert any("sequences" in b for b in bodies)
    lengths = {len(text) for b in bodies for text in ([b["sequence"]] if "sequence" in b else b["sequences"])}
    assert min(lengths) < 20 and max(lengths) > 400
