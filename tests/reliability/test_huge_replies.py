"""Huge replies with real processes (issue 16.1): bounded, streamed, never freezing the frontend.

Reported: one legal JSON request (512 tokens, 300 steps, all four fields) made
gunicorn turn ~118 M floats into JSON while holding the GIL: /healthz did not
answer for minutes and gunicorn grew by gigabytes; a 473 MB torch reply raised
broker RSS by 460 MB and gunicorn's by 820 MB.

Scaled down here: a BERT with hidden size 32 and 512 positions, a 512-token
text, INTGRADS_MAX_REPLY=64MiB and the default 16 MiB JSON tensor bound. For
each format the largest reply the bounds allow is produced while /healthz is
sampled; the peak RSS of gunicorn and of the broker must stay near one copy
of the reply (two or more before); requests over a bound get 413 before
anything is computed when their size is certain from the request, and after
the computation otherwise (the broker does not relay the reply).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from intgrads_zmq.encoding.reply_size import tensor_bytes_for
from intgrads_zmq.options import TENSOR_FIELDS
from intgrads_zmq.testing.stack import descendants, start_broker, start_frontend, wait_until
from intgrads_zmq.testing.tiny_models import WORDS, make_tiny_bert

HIDDEN = 32
TOKENS = 512
MAX_REPLY = 64 << 20
MAX_JSON = 16 << 20  # the default
TEXT = " ".join((WORDS * 20)[: TOKENS - 2])  # 510 words of the vocabulary: 512 tokens with [CLS] and [SEP]
ALL = list(TENSOR_FIELDS)
# The most steps each bound admits for TEXT with all four fields.
STEPS = {"torch": 500, "safetensors": 500, "json": 120}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    folder = tmp_path_factory.mktemp("huge")
    model = make_tiny_bert(folder / "long-bert", hidden=HIDDEN, layers=1, positions=TOKENS)
    broker = start_broker(["--model", str(model), "--name", "long", "--max-steps", "1000", "--max-length",
                           str(TOKENS)], workers=1, folder=folder)
    frontend = None
    try:
        broker.wait_ready(timeout=120)
        frontend = start_frontend(broker.frontend, folder=folder, env={
            "INTGRADS_MAX_REPLY": "64MiB", "INTGRADS_MAX_STEPS": "1000", "INTGRADS_MAX_LENGTH": str(TOKENS)})
        yield broker, frontend
    finally:
        if frontend is not None:
            frontend.stop()
        broker.stop()


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux)


def peak_growth_mb(pid: int, before_kib: int) -> float:
    return (_status_kib(pid, "VmHWM") - before_kib) / 1024


def work_done(broker) -> tuple[int, int]:
    status = broker.status()
    return status["counters"].get("requests_accepted", 0), sum(w["served"] for w in status["workers"])


def post(url: str, fmt: str, body: dict) -> tuple[int, dict[str, str], int, bytes]:
    """POST and read the reply in pieces: (status, headers, body length, first bytes)."""
    request = urllib.request.Request(f"{url}/model/?format={fmt}", data=json.dumps(body).encode(), method="POST")
    try:
        response = urllib.request.urlopen(request, timeout=600)
    except urllib.error.HTTPError as err:
        data = err.read()
        return err.code, {k.lower(): v for k, v in err.headers.items()}, len(data), data
    with response:
        head, length = b"", 0
        while chunk := response.read(1 << 20):
            head = head or chunk[:4096]
            length += len(chunk)
        return response.status, {k.lower(): v for k, v in response.headers.items()}, length, head


def sample_healthz_during(frontend, request: threading.Thread) -> tuple[list[float], list[int]]:
    """Run ``request``; meanwhile GET /healthz every 50 ms: (latencies, statuses other than 200)."""
    request.start()
    latencies, failures = [], []
    while request.is_alive():
        started = time.monotonic()
        status, _, _ = frontend.get("/healthz", timeout=30)
        latencies.append(time.monotonic() - started)
        if status != 200:
            failures.append(status)
        time.sleep(0.05)
    request.join()
    return sorted(latencies), failures


@pytest.mark.parametrize("fmt", ["torch", "safetensors", "json"])
def test_the_largest_allowed_reply_streams_while_healthz_answers(stack, record, fmt):
    broker, frontend = stack
    gunicorn = descendants(frontend.process.pid)[0]
    steps = STEPS[fmt]
    tensors = tensor_bytes_for(TOKENS, steps, HIDDEN, ALL)
    assert tensors <= (MAX_JSON if fmt == "json" else MAX_REPLY)
    wait_until(lambda: broker.status()["workers"][0]["state"] == "idle", 60, "an idle worker")
    before = {pid: _status_kib(pid, "VmRSS") for pid in (gunicorn, broker.process.pid)}
    for pid in before:
        reset_peak(pid)
    answer: dict[str, tuple] = {}
    body = {"sequence": TEXT, "n_steps": steps, "method": "riemann_trapezoid", "fields": ALL}
    request = threading.Thread(target=lambda: answer.update(reply=post(frontend.url, fmt, body)))
    latencies, failures = sample_healthz_during(frontend, request)
    status, headers, length, head = answer["reply"]
    assert status == 200, head
    if fmt == "json":
        assert "content-length" not in headers and head.startswith(b"{")
    else:
        assert int(headers["content-length"]) == length and tensors < length < tensors + (1 << 20)
    grown = {name: peak_growth_mb(pid, before[pid])
             for name, pid in (("gunicorn", gunicorn), ("broker", broker.process.pid))}
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    record(f"largest {fmt} reply", f"{length / 1e6:.1f} MB ({tensors / 1e6:.1f} MB of tensors, {steps} steps x "
           f"{TOKENS} tokens x hidden {HIDDEN}); /healthz {len(latencies)} samples, p99 {p99 * 1000:.0f} ms, "
           f"max {latencies[-1] * 1000:.0f} ms; peak RSS growth gunicorn {grown['gunicorn']:.0f} MB, "
           f"broker {grown['broker']:.0f} MB")
    assert not failures
    # The bound: /healthz within 1 s (99 % of probes; one scheduling blip
    # on a loaded 2-core machine may take longer, never beyond 5 s).
    assert p99 < 1.0, f"/healthz p99 {p99:.2f} s while a {fmt} reply was produced"
    assert latencies[-1] < 5.0, f"/healthz took {latencies[-1]:.2f} s while a {fmt} reply was produced"
    if fmt != "json":
        # One copy of the reply (the frames as received), not a joined copy on top (2x before).
        reply_mb = tensors / (1 << 20)
        assert grown["gunicorn"] < 1.5 * reply_mb, grown
        assert grown["broker"] < 1.5 * reply_mb, grown


@pytest.mark.parametrize("fmt", ["torch", "safetensors", "json"])
def test_a_reply_certainly_over_its_bound_is_413_before_anything_is_computed(stack, fmt):
    broker, frontend = stack
    before = work_done(broker)
    steps = 600 if fmt != "json" else 200
    status, _, _, body = post(frontend.url, fmt, {"sequence": TEXT, "n_steps": steps, "fields": ALL})
    error = json.loads(body)
    assert status == 413 and error["code"] == "payload_too_large", body
    assert "at least" in error["description"]
    if fmt == "json":
        assert error["field"] == "format" and "?format=safetensors" in error["description"]
        assert "INTGRADS_MAX_JSON_TENSORS" in error["description"]
    else:
        assert error["field"] == "fields" and "INTGRADS_MAX_REPLY" in error["description"]
    assert work_done(broker) == before  # refused before the broker or a worker saw it


def test_a_reply_only_the_tokenizer_can_size_is_413_from_the_worker_before_computing(stack):
    """The frontend's lower bound cannot see it; the worker tokenises, sizes the
    reply exactly and refuses it before the path runs. (A reply whose size is
    known only once computed, n_steps "auto", is refused by the broker instead:
    tests/unit/test_broker_logic.py.)"""
    broker, frontend = stack
    # One whitespace word of many tokens: the lower bound (1 token) cannot see the size.
    packed = ",".join(["great", "film"] * 200)  # 799 tokens before truncation at 512
    counters = broker.status()["counters"]
    status, _, _, body = post(frontend.url, "safetensors", {"sequence": packed, "n_steps": 600, "fields": ALL})
    error = json.loads(body)
    assert status == 413 and error["field"] == "fields", body
    assert f"{tensor_bytes_for(TOKENS, 600, HIDDEN, ALL):,} bytes" in error["description"]
    after = broker.status()["counters"]
    assert after.get("replies_too_large", 0) == counters.get("replies_too_large", 0)  # the worker refused it
